"""Malformed, truncated or invalid input: a clear OtlpDecodeError naming the
field, never a crash and never a partial batch."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from signaldb import otlp
from test_otlp_logs import sdk_request as logs_request
from test_otlp_traces import handmade_request

GOOD = handmade_request().SerializeToString()


def outcome(kind: str, body: bytes) -> tuple[str, object]:
    """('ok', items) or ('error', message); convert and count_items must agree."""
    try:
        result = otlp.convert(kind, body)
    except otlp.OtlpDecodeError as e:
        with pytest.raises(otlp.OtlpDecodeError) as again:
            otlp.count_items(kind, body)
        assert str(again.value) == str(e)
        return "error", str(e)
    assert otlp.count_items(kind, body) == (result.items, result.rejected)
    assert result.items == sum(b.num_rows for b in result.tables.values())
    return "ok", result.items


def test_every_truncation_is_an_error_or_a_shorter_valid_request() -> None:
    errors = 0
    for n in range(len(GOOD)):
        status, _ = outcome("traces", GOOD[:n])
        errors += status == "error"
    assert errors > len(GOOD) // 2


def span_request(**fields: object) -> bytes:
    base = {"trace_id": b"\x01" * 16, "span_id": b"\x02" * 8, "name": "s"}
    base.update(fields)
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(**base)  # type: ignore[arg-type]
    return req.SerializeToString()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (GOOD[:-1], "truncated"),
        (b"\x0a\xff\xff\xff\xff\x0f", "truncated: field needs 4294967295 bytes, 0 left (field 1)"),
        (b"\x0f", "invalid wire type 7"),
        (b"\x08\x01", "resource_spans[0]: wrong wire type: expected length-delimited, got varint"),
        (span_request(trace_id=b"\x01" * 15), "spans[0].trace_id: trace id must be 16 bytes, got 15"),
        (span_request(trace_id=b"\x00" * 16), "trace_id: trace id is all zeroes"),
        (span_request(span_id=b""), "spans[0].span_id: span id must be 8 bytes, got 0"),
        (span_request(parent_span_id=b"\x01"), "parent_span_id: span id must be 8 bytes or empty"),
        (span_request(start_time_unix_nano=2**64 - 1), "start_time_unix_nano: timestamp"),
    ],
)
def test_errors_name_the_field(body: bytes, message: str) -> None:
    with pytest.raises(otlp.OtlpDecodeError, match=r"^invalid ExportTraceServiceRequest: ") as e:
        otlp.convert("traces", body)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_invalid_utf8_is_rejected() -> None:
    body = span_request(name="ab").replace(b"\x2a\x02ab", b"\x2a\x02a\xff")
    with pytest.raises(otlp.OtlpDecodeError, match=r"spans\[0\]\.name: invalid UTF-8"):
        otlp.convert("traces", body)


def test_bad_arguments() -> None:
    with pytest.raises(otlp.OtlpContentTypeError, match="text/plain"):
        otlp.convert("traces", b"", "text/plain")
    with pytest.raises(ValueError, match="unknown OTLP kind"):
        otlp.convert("profiles", b"")
    assert otlp.convert("traces", bytearray(GOOD)).items == 2  # bytearray works too


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["traces", "logs", "metrics"]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_requests_never_crash(kind: str, edits: list[tuple[int, int]]) -> None:
    body = bytearray(GOOD if kind != "logs" else LOGS)
    for pos, byte in edits:
        body[pos % len(body)] = byte
    outcome(kind, bytes(body))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["traces", "logs", "metrics"]), body=st.binary(max_size=200))
def test_random_bytes_never_crash(kind: str, body: bytes) -> None:
    outcome(kind, body)


LOGS = logs_request()
