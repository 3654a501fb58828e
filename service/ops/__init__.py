"""Running it: health, readiness and metrics, the request log, and the demo's catch-all outbox."""
