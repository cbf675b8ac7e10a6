"""OTLP/JSON gives exactly the batches protobuf gives for the same data.

The JSON is produced from the SDK's protobuf messages the way the OTLP spec
says (protobuf's JSON mapping, then hex ids and integer enums), and then
varied: int64 as numbers instead of strings, snake_case keys, unknown fields.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from google.protobuf import json_format

from signaldb import otlp
from test_otlp_logs import sdk_request as logs_request
from test_otlp_metrics import sdk_request as metrics_request
from test_otlp_reference import REQUESTS, assert_batches_equal
from test_otlp_traces import handmade_request
from test_otlp_traces import sdk_request as traces_request

ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def otlp_json(kind: str, body: bytes) -> dict[str, Any]:
    """The OTLP/JSON form of a protobuf request: hex ids, integer enums."""
    msg = REQUESTS[kind].FromString(body)
    doc = json_format.MessageToDict(msg, use_integers_for_enums=True)

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: base64.b64decode(v).hex() if k in ID_KEYS else fix(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    return fix(doc)  # type: ignore[no-any-return]


INT64_KEYS = {"intValue", "asInt", "count", "zeroCount", "bucketCounts"}


def numbers_not_strings(node: Any, key: str = "") -> Any:
    """int64 fields written as JSON numbers (the spec allows both)."""
    if isinstance(node, dict):
        return {k: numbers_not_strings(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [numbers_not_strings(v, key) for v in node]
    if isinstance(node, str) and (key in INT64_KEYS or key.endswith("UnixNano")):
        return int(node)
    return node


def snake_and_unknown(node: Any) -> Any:
    """snake_case keys and an unknown field in every object."""
    if isinstance(node, dict):
        out = {"someFutureField": {"nested": [1, "x", None]}}
        for k, v in node.items():
            snake = "".join("_" + c.lower() if c.isupper() else c for c in k)
            out[snake if snake != "some_future_field" else k] = snake_and_unknown(v)
        return out
    if isinstance(node, list):
        return [snake_and_unknown(v) for v in node]
    return node


def summary_request() -> bytes:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        Metric,
        ResourceMetrics,
        ScopeMetrics,
        Summary,
        SummaryDataPoint,
    )

    point = SummaryDataPoint(count=2, sum=1.5, quantile_values=[SummaryDataPoint.ValueAtQuantile(quantile=1, value=2)])
    m = Metric(name="s", summary=Summary(data_points=[point]))
    req = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[m, Metric(name="nodata")])])]
    )
    return req.SerializeToString()


CASES = {
    "traces-sdk": ("traces", traces_request),
    "traces-every-value": ("traces", lambda: handmade_request().SerializeToString()),
    "logs-sdk": ("logs", logs_request),
    "metrics-sdk": ("metrics", metrics_request),
    "metrics-summary": ("metrics", summary_request),
}


@pytest.mark.parametrize("variant", ["spec", "numbers", "snake_unknown"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_json_gives_the_protobuf_batches(case: str, variant: str) -> None:
    kind, make = CASES[case]
    body = make()
    doc = otlp_json(kind, body)
    if variant == "numbers":
        doc = numbers_not_strings(doc)
    elif variant == "snake_unknown":
        doc = snake_and_unknown(doc)
    from_pb = otlp.convert(kind, body)
    from_json = otlp.convert(kind, json.dumps(doc).encode(), "application/json; charset=utf-8")
    assert from_pb.items > 0
    assert from_json.items == from_pb.items and from_json.rejected == from_pb.rejected
    for name, batch in from_pb.tables.items():
        assert_batches_equal(from_json.tables[name], batch)
    assert otlp.count_items(kind, json.dumps(doc).encode(), "application/json") == (from_pb.items, from_pb.rejected)


def test_enum_names_and_uppercase_hex_accepted() -> None:
    span = {
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "name": "x",
        "kind": "SPAN_KIND_SERVER",
        "startTimeUnixNano": "1544712660000000000",
        "endTimeUnixNano": 1544712661000000000,
        "status": {"code": "STATUS_CODE_ERROR"},
        "attributes": [{"key": "d", "value": {"doubleValue": "Infinity"}}],
    }
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    [row] = otlp.convert("traces", body, "application/json").tables["traces"].to_pylist()
    assert row["trace_id"] == "5b8efff798038103d269b633813fc60c" and row["span_id"] == "eee19b7ec3c1b174"
    assert (row["kind"], row["status_code"], row["duration_ns"]) == (2, 2, 1_000_000_000)
    assert row["span_attributes"] == [("d", '"Infinity"')]


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (b"{", "malformed JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"resourceSpans": {}}', "expected a JSON array"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', "traceId"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + b"g" * 32 + b'"}]}]}]}', "not hex"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}', "startTimeUnixNano"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": "SPAN_KIND_NOPE"}]}]}]}', "unknown enum value"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "x"}]}]}]}', "trace id must be 16 bytes"),
    ],
)
def test_bad_json_is_a_clear_error(doc: bytes, needle: str) -> None:
    with pytest.raises(otlp.OtlpDecodeError, match=needle) as e:
        otlp.convert("traces", doc, "application/json")
    assert "ExportTraceServiceRequest" in str(e.value)
    with pytest.raises(otlp.OtlpDecodeError):
        otlp.count_items("traces", doc, "application/json")
