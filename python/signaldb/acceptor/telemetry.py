"""The acceptor's own Prometheus metrics (the WAL's come from ``WalCollector``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# DESIGN.md names: signaldb_receiver_{accepted,refused}_{spans,log_records,metric_points}_total.
ITEM_NAME = {"traces": "spans", "logs": "log_records", "metrics": "metric_points"}


class AcceptorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = {
            kind: Counter(
                f"signaldb_receiver_accepted_{item}",
                f"OTLP {item} acknowledged (durable).",
                ["transport"],
                registry=registry,
            )
            for kind, item in ITEM_NAME.items()
        }
        self.refused = {
            kind: Counter(
                f"signaldb_receiver_refused_{item}",
                f"OTLP {item} refused (backpressure, or rejected inside an accepted request).",
                ["transport", "reason"],
                registry=registry,
            )
            for kind, item in ITEM_NAME.items()
        }
        self.requests = Counter(
            "signaldb_receiver_requests",
            "OTLP export requests by outcome.",
            ["transport", "signal", "outcome"],
            registry=registry,
        )
        # Every whole request refused, wherever it was refused (signaldb.acceptor.refusals.Reason).
        self.refused_requests = Counter(
            "signaldb_receiver_refused_requests",
            "OTLP export requests refused whole, by reason.",
            ["transport", "signal", "reason"],
            registry=registry,
        )
        self.request_bytes = Counter(
            "signaldb_receiver_request_bytes",
            "Decompressed OTLP request bytes accepted.",
            ["signal"],
            registry=registry,
        )
        self.ack_latency = Histogram(
            "signaldb_receiver_ack_duration_seconds",
            "From a decoded request to its durable acknowledgement.",
            ["signal"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        self.forward_latency = Histogram(
            "signaldb_forward_duration_seconds",
            "One forwarding round: convert, do_put, writer acks.",
            ["writer"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30),
        )
        self.forward_errors = Counter(
            "signaldb_forward_errors", "Failed forwarding rounds by cause.", ["writer", "cause"], registry=registry
        )
        self.forwarded_entries = Counter(
            "signaldb_forward_entries", "WAL entries acknowledged by a writer.", ["writer"], registry=registry
        )
        self.forwarded_rows = Counter(
            "signaldb_forward_rows", "Arrow rows acknowledged by a writer.", ["writer", "table"], registry=registry
        )
        self.dead_letters = Counter(
            "signaldb_forward_dead_letter_entries",
            "Entries a writer refused as invalid, moved to the dead-letter directory.",
            registry=registry,
        )
        self.writer_up = Gauge(
            "signaldb_forward_writer_up",
            "1 when the last call to this writer succeeded.",
            ["writer"],
            registry=registry,
        )
        # Writers found by DNS and failover (forwarder, writer_set).
        self.writers = Gauge(
            "signaldb_forwarder_writers",
            "Writers entries are routed over: static endpoints plus resolved dns:// addresses.",
            registry=registry,
        )
        self.dns_failures = Counter(
            "signaldb_forwarder_dns_failures",
            "Failed or empty resolutions of a dns:// writer endpoint (last good kept).",
            ["endpoint"],
            registry=registry,
        )
        self.failovers = Counter(
            "signaldb_forwarder_failovers",
            "Times a writer was failed over (unreachable for acceptor.writer_failover_secs).",
            ["writer"],
            registry=registry,
        )
        self.writers_failed_over = Gauge(
            "signaldb_forwarder_writers_failed_over",
            "Writers currently failed over: their entries go to the next writer.",
            registry=registry,
        )
