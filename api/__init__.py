"""api layer of the dCMMS telemetry pipeline."""
