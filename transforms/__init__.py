"""transforms layer of the dCMMS telemetry pipeline."""
