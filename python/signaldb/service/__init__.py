"""Pieces every SignalDB service shares: structured logging, Prometheus metrics,
the health/metrics HTTP endpoints, TLS/auth helpers, the process lifecycle and the
dead-letter format (``dead_letters``)."""
