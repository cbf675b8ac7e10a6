"""Pieces every SignalDB service shares: structured logging, Prometheus metrics,
the health/metrics HTTP endpoints, TLS/auth helpers and the process lifecycle."""
