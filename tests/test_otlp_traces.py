"""Traces: requests made by the OpenTelemetry Python SDK and its OTLP encoder,
converted in Rust and compared column for column with the pure-Python
reference (test_otlp_reference.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode

from signaldb import otlp
from test_otlp_reference import check_against_reference, plain_rows

EVERY_ATTRIBUTE_TYPE = {
    "str": 'text ünïcode "quoted"\n',
    "empty": "",
    "bool": True,
    "int": -42,
    "big": 2**63 - 1,
    "float": 3.25,
    "tiny": 1e-300,
    "str_list": ["a", "b"],
    "bool_list": [True, False],
    "int_list": [1, 2, 3],
    "float_list": [0.5, 1e16],
}


def sdk_request() -> bytes:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout", "host.cores": 8}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop.lib", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0")
    other = provider.get_tracer("other.lib")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=EVERY_ATTRIBUTE_TYPE) as root:
        root.add_event("started", {"step": 1, "ok": True})
        root.add_event("no attributes")
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_status(StatusCode.ERROR, "boom")
        link = Link(root.get_span_context(), {"why": "retry", "n": 2})
        with other.start_as_current_span("linked", links=[link], kind=SpanKind.CONSUMER) as s:
            s.set_status(StatusCode.OK)
    provider.shutdown()
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    return encode_spans(spans).SerializeToString()


def test_sdk_spans_round_trip() -> None:
    result = check_against_reference("traces", sdk_request())
    batch = result.tables["traces"]
    assert batch.num_rows == 3
    rows = {r["name"]: r for r in plain_rows(batch)}
    root, child, linked = rows["root"], rows["child"], rows["linked"]
    assert len(root["trace_id"]) == 32 and len(root["span_id"]) == 16
    assert root["trace_id"] == root["trace_id"].lower()
    assert root["parent_span_id"] is None and child["parent_span_id"] == root["span_id"]
    assert (root["kind"], child["kind"], linked["kind"]) == (2, 3, 5)
    assert (child["status_code"], child["status_message"], linked["status_code"]) == (2, "boom", 1)
    attrs = dict(root["span_attributes"])
    assert attrs["str"] == EVERY_ATTRIBUTE_TYPE["str"]
    assert attrs["bool"] == "true" and attrs["int"] == "-42" and attrs["big"] == str(2**63 - 1)
    assert attrs["float"] == "3.25" and attrs["tiny"] == "1e-300"
    assert attrs["str_list"] == '["a","b"]' and attrs["bool_list"] == "[true,false]"
    assert attrs["int_list"] == "[1,2,3]" and attrs["float_list"] == "[0.5,1e+16]"
    assert [e["name"] for e in root["events"]] == ["started", "no attributes"]
    assert dict(root["events"][0]["attributes"]) == {"step": "1", "ok": "true"}
    assert linked["links"][0]["span_id"] == root["span_id"]
    assert dict(linked["links"][0]["attributes"]) == {"why": "retry", "n": "2"}
    assert root["service_name"] == "checkout"
    assert dict(root["resource_attributes"])["host.cores"] == "8"
    assert (root["scope_name"], root["scope_version"]) == ("shop.lib", "1.2.3")
    assert root["scope_schema_url"] == "https://opentelemetry.io/schemas/1.21.0"
    assert linked["scope_name"] == "other.lib"
    assert batch.schema.field("start_time").type == pa.timestamp("ns", tz="UTC")
    assert all(r["duration_ns"] >= 0 for r in rows.values())


def kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))  # type: ignore[arg-type]


def every_any_value() -> list[KeyValue]:
    nested = KeyValueList(values=[kv("x", int_value=1), kv("y", array_value=ArrayValue(values=[AnyValue()]))])
    return [
        kv("s", string_value="v"),
        kv("b", bool_value=False),
        kv("i", int_value=-(2**63)),
        kv("d", double_value=float("nan")),
        kv("inf", double_value=float("-inf")),
        kv("neg0", double_value=-0.0),
        kv("hard", double_value=-3.713417603521818e187),  # needs exact float parsing in JSON
        kv("bytes", bytes_value=b"\x00\x01\xfe\xff"),
        kv("arr", array_value=ArrayValue(values=[AnyValue(string_value='q"'), AnyValue(int_value=7)])),
        kv("kv", kvlist_value=nested),
        KeyValue(key="unset"),
        kv("dup", string_value="first"),
        kv("dup", string_value="second"),
    ]


def handmade_request() -> ExportTraceServiceRequest:
    span = Span(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        parent_span_id=b"\xff" * 8,
        trace_state="k=v",
        flags=0x301,
        name="handmade",
        kind=Span.SPAN_KIND_PRODUCER,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_123_456_789,
        attributes=every_any_value(),
        dropped_attributes_count=3,
        events=[Span.Event(time_unix_nano=5, name="e", attributes=every_any_value(), dropped_attributes_count=1)],
        dropped_events_count=4,
        links=[
            Span.Link(
                trace_id=b"\xab" * 16,
                span_id=b"\xcd" * 8,
                trace_state="a=b",
                attributes=[kv("l", bool_value=True)],
                dropped_attributes_count=2,
                flags=1,
            )
        ],
        dropped_links_count=5,
        status=Status(code=Status.STATUS_CODE_ERROR, message="bad"),
    )
    empty_scope = ScopeSpans(spans=[Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="bare")])
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(scope_spans=[ScopeSpans(spans=[span]), empty_scope], schema_url="res-schema"),
            ResourceSpans(),
        ]
    )


def test_every_any_value_type_and_field() -> None:
    result = check_against_reference("traces", handmade_request().SerializeToString())
    row = plain_rows(result.tables["traces"])[0]
    attrs = row["span_attributes"]
    assert attrs[:4] == [("s", "v"), ("b", "false"), ("i", str(-(2**63))), ("d", '"NaN"')]
    assert dict(attrs)["bytes"] == '"AAH+/w=="'
    assert dict(attrs)["arr"] == '["q\\"",7]'
    assert dict(attrs)["kv"] == '{"x":1,"y":[null]}'
    assert dict(attrs)["unset"] is None
    assert [v for k, v in attrs if k == "dup"] == ["first", "second"]  # order and duplicates kept
    assert row["trace_id"] == "0102030405060708090a0b0c0d0e0f10"
    assert row["parent_span_id"] == "ffffffffffffffff"
    assert (row["flags"], row["duration_ns"], row["trace_state"]) == (0x301, 123_456_789, "k=v")
    assert (row["dropped_attributes_count"], row["dropped_events_count"], row["dropped_links_count"]) == (3, 4, 5)
    assert row["links"][0]["trace_id"] == "ab" * 16 and row["links"][0]["flags"] == 1
    assert row["service_name"] is None and row["resource_schema_url"] == "res-schema"


def test_empty_request_gives_empty_table() -> None:
    result = otlp.convert("traces", b"")
    assert result.tables["traces"].num_rows == 0 and result.items == 0
    assert otlp.count_items("traces", b"") == (0, {})


@pytest.mark.parametrize("spans", [1, 512])
def test_many_spans(spans: int) -> None:
    base = handmade_request()
    req = ExportTraceServiceRequest(resource_spans=[base.resource_spans[0]])
    s = req.resource_spans[0].scope_spans[0]
    template = s.spans[0]
    del s.spans[:]
    for i in range(spans):
        sp = s.spans.add()
        sp.CopyFrom(template)
        sp.span_id = (i + 1).to_bytes(8, "big")
    result = check_against_reference("traces", req.SerializeToString())
    assert result.items == spans + 1
