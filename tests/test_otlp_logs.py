"""Logs: records made by the OpenTelemetry Python SDK (bodies of every
AnyValue type) compared with the pure-Python reference."""

from __future__ import annotations

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from test_otlp_reference import check_against_reference, plain_rows

BODIES = [
    "plain text",
    42,
    -1.5,
    True,
    b"\x00raw\xff",
    ["a", 1, 2.5, False, None],
    {"user": {"id": 7, "tags": ["x", "y"]}, "ok": True},
    None,
]


def sdk_request() -> bytes:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "billing"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("app.logs", "0.9")
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("op"):
        for i, body in enumerate(BODIES):
            logger.emit(
                timestamp=1_700_000_000_000_000_000 + i,
                severity_number=SeverityNumber.WARN,
                severity_text="WARN",
                body=body,
                attributes={"i": i, "kind": type(body).__name__, "list": [1, 2]},
            )
    logger.emit(body="outside a span", event_name="app.event", severity_number=SeverityNumber.FATAL4)
    provider.shutdown()
    records = exporter.get_finished_logs()
    assert len(records) == len(BODIES) + 1
    return encode_logs(records).SerializeToString()


def test_sdk_logs_round_trip() -> None:
    result = check_against_reference("logs", sdk_request())
    rows = plain_rows(result.tables["logs"])
    bodies = [r["body"] for r in rows]
    assert bodies[:8] == [
        "plain text",
        "42",
        "-1.5",
        "true",
        '"AHJhd/8="',
        '["a",1,2.5,false,null]',
        '{"user":{"id":7,"tags":["x","y"]},"ok":true}',
        None,
    ]
    first = rows[0]
    assert first["severity_number"] == 13 and first["severity_text"] == "WARN"
    assert first["time"] == 1_700_000_000_000_000_000 and first["observed_time"] > 0
    assert len(first["trace_id"]) == 32 and len(first["span_id"]) == 16
    assert dict(first["log_attributes"]) == {"i": "0", "kind": "str", "list": "[1,2]"}
    assert first["service_name"] == "billing" and first["scope_name"] == "app.logs"
    last = rows[-1]
    assert last["trace_id"] is None and last["span_id"] is None
    assert (last["event_name"], last["severity_number"]) == ("app.event", 24)
