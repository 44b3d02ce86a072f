"""schemas layer of the dCMMS telemetry pipeline."""
