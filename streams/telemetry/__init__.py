"""The worker's telemetry: figures recorded as it works, and the probes read at scrape time."""
