"""Metrics, logs and the request id: how the service is watched."""
