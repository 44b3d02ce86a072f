"""Benchmark harness of the dCMMS telemetry pipeline (`make bench`, docs/benchmarks.md)."""
