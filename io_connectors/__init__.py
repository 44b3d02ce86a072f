"""io_connectors layer of the dCMMS telemetry pipeline."""
