"""A pure-Python reference of the OTLP → Arrow conversion (on the upb
protobuf runtime), written from the spec and DESIGN.md independently of the
Rust code. The other test_otlp_* modules compare the Rust batches with it
column for column, and benches/bench_otlp.py times it as the baseline.

It is also imported as a helper: `reference_tables(kind, body)`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

REQUESTS = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}


def json_double(d: float) -> str:
    if d != d:
        return '"NaN"'
    if d in (float("inf"), float("-inf")):
        return '"Infinity"' if d > 0 else '"-Infinity"'
    return json.dumps(d)


def any_json(av: AnyValue) -> str:
    kind = av.WhichOneof("value")
    if kind == "string_value":
        return json.dumps(av.string_value, ensure_ascii=False)
    if kind == "bool_value":
        return "true" if av.bool_value else "false"
    if kind == "int_value":
        return str(av.int_value)
    if kind == "double_value":
        return json_double(av.double_value)
    if kind == "bytes_value":
        return '"' + base64.b64encode(av.bytes_value).decode() + '"'
    if kind == "array_value":
        return "[" + ",".join(any_json(v) for v in av.array_value.values) + "]"
    if kind == "kvlist_value":
        return (
            "{"
            + ",".join(
                json.dumps(kv.key, ensure_ascii=False) + ":" + any_json(kv.value) for kv in av.kvlist_value.values
            )
            + "}"
        )
    return "null"


def any_str(av: AnyValue) -> str | None:
    kind = av.WhichOneof("value")
    if kind == "string_value":
        return av.string_value
    if kind is None or kind == "string_value_strindex":
        return None
    return any_json(av)


def attrs(kvs: Iterable[Any]) -> list[tuple[str, str | None]]:
    return [(kv.key, any_str(kv.value)) for kv in kvs]


def hexid(b: bytes) -> str | None:
    return b.hex() if b else None


RS_COLUMNS = (
    "service_name",
    "resource_attributes",
    "resource_dropped_attributes_count",
    "resource_schema_url",
    "scope_name",
    "scope_version",
    "scope_attributes",
    "scope_dropped_attributes_count",
    "scope_schema_url",
)


def rs_values(rx: Any, sx: Any) -> tuple[Any, ...]:
    res, scope = rx.resource, sx.scope
    service = None
    for kv in res.attributes:
        if kv.key == "service.name":
            service = any_str(kv.value)
    return (
        service,
        attrs(res.attributes),
        res.dropped_attributes_count,
        rx.schema_url,
        scope.name,
        scope.version,
        attrs(scope.attributes),
        scope.dropped_attributes_count,
        sx.schema_url,
    )


def _push(cols: dict[str, list[Any]], names: Iterable[str], values: Iterable[Any]) -> None:
    for n, v in zip(names, values, strict=True):
        cols.setdefault(n, []).append(v)


SPAN_COLUMNS = (
    "trace_id", "span_id", "parent_span_id", "trace_state", "name", "kind", "flags", "start_time",
    "end_time", "duration_ns", "status_code", "status_message", "span_attributes",
    "dropped_attributes_count", "events", "dropped_events_count", "links", "dropped_links_count",
)  # fmt: skip


def traces_columns(req: ExportTraceServiceRequest) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {n: [] for n in SPAN_COLUMNS + RS_COLUMNS}
    for rx in req.resource_spans:
        for sx in rx.scope_spans:
            rs = rs_values(rx, sx)
            for s in sx.spans:
                events = [
                    {
                        "time": e.time_unix_nano,
                        "name": e.name,
                        "attributes": attrs(e.attributes),
                        "dropped_attributes_count": e.dropped_attributes_count,
                    }
                    for e in s.events
                ]
                links = [
                    {
                        "trace_id": link.trace_id.hex(),
                        "span_id": link.span_id.hex(),
                        "trace_state": link.trace_state,
                        "attributes": attrs(link.attributes),
                        "dropped_attributes_count": link.dropped_attributes_count,
                        "flags": link.flags,
                    }
                    for link in s.links
                ]
                row = (
                    s.trace_id.hex(), s.span_id.hex(), hexid(s.parent_span_id), s.trace_state, s.name,
                    s.kind, s.flags, s.start_time_unix_nano, s.end_time_unix_nano,
                    s.end_time_unix_nano - s.start_time_unix_nano, s.status.code, s.status.message,
                    attrs(s.attributes), s.dropped_attributes_count, events, s.dropped_events_count,
                    links, s.dropped_links_count,
                )  # fmt: skip
                _push(cols, SPAN_COLUMNS, row)
                _push(cols, RS_COLUMNS, rs)
    return cols


LOG_COLUMNS = (
    "time", "observed_time", "severity_number", "severity_text", "body", "log_attributes",
    "dropped_attributes_count", "flags", "trace_id", "span_id", "event_name",
)  # fmt: skip


def logs_columns(req: ExportLogsServiceRequest) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {n: [] for n in LOG_COLUMNS + RS_COLUMNS}
    for rx in req.resource_logs:
        for sx in rx.scope_logs:
            rs = rs_values(rx, sx)
            for r in sx.log_records:
                row = (
                    r.time_unix_nano, r.observed_time_unix_nano, r.severity_number, r.severity_text,
                    any_str(r.body) if r.HasField("body") else None, attrs(r.attributes),
                    r.dropped_attributes_count, r.flags, hexid(r.trace_id), hexid(r.span_id), r.event_name,
                )  # fmt: skip
                _push(cols, LOG_COLUMNS, row)
                _push(cols, RS_COLUMNS, rs)
    return cols


POINT_HEAD = ("metric_name", "metric_description", "metric_unit", "attributes", "start_time", "time", "flags")
METRIC_TABLES = {
    "gauge": ("metrics_gauge", ("value", "value_int")),
    "sum": ("metrics_sum", ("value", "value_int", "is_monotonic", "aggregation_temporality")),
    "histogram": (
        "metrics_histogram",
        ("count", "sum", "bucket_counts", "explicit_bounds", "min", "max", "aggregation_temporality"),
    ),
    "exponential_histogram": (
        "metrics_exponential_histogram",
        (
            "count",
            "sum",
            "scale",
            "zero_count",
            "zero_threshold",
            "positive_offset",
            "positive_bucket_counts",
            "negative_offset",
            "negative_bucket_counts",
            "min",
            "max",
            "aggregation_temporality",
        ),
    ),
    "summary": ("metrics_summary", ("count", "sum", "quantile_values")),
}


def _number(p: Any) -> tuple[float | None, int | None]:
    kind = p.WhichOneof("value")
    if kind == "as_double":
        return p.as_double, None
    if kind == "as_int":
        return float(p.as_int), p.as_int
    return None, None


def _opt(p: Any, name: str) -> float | None:
    return getattr(p, name) if p.HasField(name) else None


def _exemplars(p: Any) -> list[dict[str, Any]]:
    out = []
    for e in getattr(p, "exemplars", ()):
        value, value_int = _number(e)
        out.append(
            {
                "time": e.time_unix_nano,
                "value": value,
                "value_int": value_int,
                "trace_id": hexid(e.trace_id),
                "span_id": hexid(e.span_id),
                "filtered_attributes": attrs(e.filtered_attributes),
            }
        )
    return out


def metrics_columns(req: ExportMetricsServiceRequest) -> tuple[dict[str, dict[str, list[Any]]], dict[str, int]]:
    tables: dict[str, dict[str, list[Any]]] = {
        table: {n: [] for n in POINT_HEAD + extra + ("exemplars",) + RS_COLUMNS}
        for table, extra in METRIC_TABLES.values()
    }
    rejected: dict[str, int] = {}
    for rx in req.resource_metrics:
        for sx in rx.scope_metrics:
            rs = rs_values(rx, sx)
            for m in sx.metrics:
                kind = m.WhichOneof("data")
                if kind is None:
                    rejected["metric_without_data"] = rejected.get("metric_without_data", 0) + 1
                    continue
                table, extra = METRIC_TABLES[kind]
                data = getattr(m, kind)
                cols = tables[table]
                for p in data.data_points:
                    head = (
                        m.name, m.description, m.unit, attrs(p.attributes),
                        p.start_time_unix_nano, p.time_unix_nano, p.flags,
                    )  # fmt: skip
                    if kind == "gauge":
                        values: tuple[Any, ...] = _number(p)
                    elif kind == "sum":
                        values = (*_number(p), data.is_monotonic, data.aggregation_temporality)
                    elif kind == "histogram":
                        values = (
                            p.count, _opt(p, "sum"), list(p.bucket_counts), list(p.explicit_bounds),
                            _opt(p, "min"), _opt(p, "max"), data.aggregation_temporality,
                        )  # fmt: skip
                    elif kind == "exponential_histogram":
                        values = (
                            p.count, _opt(p, "sum"), p.scale, p.zero_count, p.zero_threshold,
                            p.positive.offset, list(p.positive.bucket_counts), p.negative.offset,
                            list(p.negative.bucket_counts), _opt(p, "min"), _opt(p, "max"),
                            data.aggregation_temporality,
                        )  # fmt: skip
                    else:
                        values = (
                            p.count, p.sum,
                            [{"quantile": q.quantile, "value": q.value} for q in p.quantile_values],
                        )  # fmt: skip
                    _push(cols, POINT_HEAD + extra + ("exemplars",), (*head, *values, _exemplars(p)))
                    _push(cols, RS_COLUMNS, rs)
    return tables, rejected


def to_batch(cols: dict[str, list[Any]], schema: pa.Schema) -> pa.RecordBatch:
    """Builds a batch of the given schema from Python column lists."""
    return pa.RecordBatch.from_arrays([pa.array(cols[f.name], type=f.type) for f in schema], schema=schema)


def reference_tables(
    kind: str, body: bytes, schemas: dict[str, pa.Schema]
) -> tuple[dict[str, pa.RecordBatch], dict[str, int]]:
    """The whole pure-Python conversion: upb parse, Python loops, pyarrow arrays."""
    req = REQUESTS[kind].FromString(body)
    if kind == "traces":
        return {"traces": to_batch(traces_columns(req), schemas["traces"])}, {}
    if kind == "logs":
        return {"logs": to_batch(logs_columns(req), schemas["logs"])}, {}
    tables, rejected = metrics_columns(req)
    return {name: to_batch(cols, schemas[name]) for name, cols in tables.items()}, rejected


def _ints_for_times(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t):
        return pa.int64()
    if pa.types.is_map(t):
        return t
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_ints_for_times(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_ints_for_times(f.type)) for f in t])
    return t


def plain_rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """`to_pylist` with timestamps as int nanoseconds (datetime would truncate them)."""
    schema = pa.schema([f.with_type(_ints_for_times(f.type)) for f in batch.schema])
    return batch.cast(schema).to_pylist()


def assert_batches_equal(got: pa.RecordBatch, want: pa.RecordBatch) -> None:
    """Equal schemas and values; on a difference, names the first column and row."""
    assert got.schema == want.schema, f"schemas differ:\n{got.schema}\nvs\n{want.schema}"
    assert got.num_rows == want.num_rows, f"{got.num_rows} rows, want {want.num_rows}"
    for name in got.schema.names:
        g, w = got.column(name), want.column(name)
        if not g.equals(w):
            for i in range(len(g)):
                if not g[i].equals(w[i]):
                    raise AssertionError(f"column {name!r} row {i}: {g[i]!r} != {w[i]!r}")
            raise AssertionError(f"column {name!r} differs")


def check_against_reference(kind: str, body: bytes) -> Any:
    """Converts with Rust and asserts every table equals the pure-Python reference."""
    from signaldb import otlp

    result = otlp.convert(kind, body)
    schemas = {name: b.schema for name, b in result.tables.items()}
    want, rejected = reference_tables(kind, body, schemas)
    assert set(result.tables) == set(want)
    for name, batch in result.tables.items():
        assert_batches_equal(batch, want[name])
    assert result.rejected == rejected
    assert result.items == sum(b.num_rows for b in result.tables.values())
    assert otlp.count_items(kind, body) == (result.items, result.rejected)
    return result


# --- the reference's own checks ---


def test_any_json_matches_python_json() -> None:
    from opentelemetry.proto.common.v1.common_pb2 import ArrayValue, KeyValue, KeyValueList

    av = AnyValue(
        kvlist_value=KeyValueList(
            values=[
                KeyValue(key="a", value=AnyValue(int_value=-3)),
                KeyValue(key="b", value=AnyValue(array_value=ArrayValue(values=[AnyValue(double_value=1e16)]))),
                KeyValue(key="c\n", value=AnyValue(bytes_value=b"\x00\xff")),
                KeyValue(key="d", value=AnyValue()),
            ]
        )
    )
    assert any_json(av) == '{"a":-3,"b":[1e+16],"c\\n":"AP8=","d":null}'
    assert json.loads(any_json(av))["b"] == [1e16]
    assert any_str(AnyValue(string_value="plain")) == "plain"
    assert any_str(AnyValue()) is None
