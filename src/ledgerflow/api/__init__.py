"""The HTTP service: JSON API, health checks, Prometheus metrics, server-sent events."""
