"""runners layer of the dCMMS telemetry pipeline."""
