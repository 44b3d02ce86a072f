"""pipelines layer of the dCMMS telemetry pipeline."""
