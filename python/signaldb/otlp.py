"""OTLP export requests to Arrow record batches (the conversion runs in Rust).

```python
from signaldb.otlp import convert, count_items, OtlpDecodeError

result = convert("traces", body)                        # application/x-protobuf
result = convert("logs", body, "application/json")      # OTLP/JSON
result.tables["traces"]         # pyarrow.RecordBatch (zero-copy from Rust)
result.rejected                 # {"metric_without_data": 2}: items that made no row
result.items                    # spans / log records / metric data points converted
items, rejected = count_items("metrics", body)          # validate + count, no Arrow
```

``kind`` is ``"traces"``, ``"logs"`` or ``"metrics"``; ``body`` holds an
``Export{Trace,Logs,Metrics}ServiceRequest`` (already decompressed).
``content_type`` is ``application/x-protobuf`` (default) or
``application/json`` (parameters such as ``; charset=utf-8`` are ignored);
anything else raises ``OtlpContentTypeError``. Malformed, truncated or invalid
input raises ``OtlpDecodeError`` (a ``ValueError``) whose message names the
field, e.g. ``invalid ExportTraceServiceRequest:
resource_spans[0].scope_spans[0].spans[3].span_id: span id must be 8 bytes,
got 3``. A request converts entirely or not at all. The GIL is released while
Rust works.

OTLP/JSON follows the OTLP spec: lowerCamelCase keys (snake_case accepted),
hex trace/span ids, 64-bit integers as numbers or strings, enums as integers
(names accepted), unknown fields ignored. It is transcoded to protobuf and
then converted by the same code, so both encodings give identical batches.

Validation: span and link ``trace_id`` must be 16 bytes and ``span_id`` 8,
not all zeroes; ``parent_span_id`` and the ids of logs and exemplars may be
empty (null) or of the right length; strings must be UTF-8; timestamps must
fit ``timestamp[ns]`` (before year 2262).

Tables (every table of the kind is always present, maybe with no rows):

- ``traces`` (one row per span): ``trace_id``, ``span_id``,
  ``parent_span_id`` (null for a root), ``trace_state``, ``name``, ``kind``
  (int32, OTLP SpanKind), ``flags`` (uint32), ``start_time``, ``end_time``,
  ``duration_ns`` (int64), ``status_code`` (int32), ``status_message``,
  ``span_attributes``, ``dropped_attributes_count``, ``events``
  (list<struct<time, name, attributes, dropped_attributes_count>>),
  ``dropped_events_count``, ``links`` (list<struct<trace_id, span_id,
  trace_state, attributes, dropped_attributes_count, flags>>),
  ``dropped_links_count``.
- ``logs`` (one row per log record): ``time``, ``observed_time``,
  ``severity_number`` (int32), ``severity_text``, ``body``,
  ``log_attributes``, ``dropped_attributes_count``, ``flags``, ``trace_id``,
  ``span_id`` (null when absent), ``event_name``.
- ``metrics_gauge``, ``metrics_sum``, ``metrics_histogram``,
  ``metrics_exponential_histogram``, ``metrics_summary`` (one row per data
  point): ``metric_name``, ``metric_description``, ``metric_unit``,
  ``attributes``, ``start_time``, ``time``, ``flags``, then per type:
  gauge/sum ``value`` (float64; null when unset) and ``value_int`` (int64, the
  exact value of an ``as_int`` point); sum ``is_monotonic``,
  ``aggregation_temporality`` (int32, also on both histograms); histogram
  ``count`` (uint64), ``sum``, ``bucket_counts`` (list<uint64>),
  ``explicit_bounds`` (list<float64>), ``min``, ``max`` (float64, null when
  absent); exponential histogram ``count``, ``sum``, ``scale``,
  ``zero_count``, ``zero_threshold``, ``positive_offset``,
  ``positive_bucket_counts``, ``negative_offset``, ``negative_bucket_counts``,
  ``min``, ``max``; summary ``count``, ``sum``, ``quantile_values``
  (list<struct<quantile, value>>); and on every type ``exemplars``
  (list<struct<time, value, value_int, trace_id, span_id,
  filtered_attributes>>). A metric with no data set has no points: it is
  counted in ``rejected["metric_without_data"]``.
- Every table ends with the resource and scope columns: ``service_name``
  (the ``service.name`` resource attribute, null if absent),
  ``resource_attributes``, ``resource_dropped_attributes_count``,
  ``resource_schema_url``, ``scope_name``, ``scope_version``,
  ``scope_attributes``, ``scope_dropped_attributes_count``,
  ``scope_schema_url``.

Types: times are ``timestamp[ns, UTC]`` (0 when the sender left them
unset); ids are lowercase hex strings; enums stay OTLP integers; attributes
are ``map<string, string>``: a string value as is, any other AnyValue as
canonical JSON (``true``, ``42``, ``1.5``, ``"NaN"``, bytes as a base64 JSON
string, ``[...]``, ``{"k":...}`` in wire order, no whitespace) and an unset
value as null. A log ``body`` follows the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from signaldb import _native
from signaldb._native import OtlpContentTypeError, OtlpDecodeError

__all__ = [
    "ConversionResult",
    "OtlpContentTypeError",
    "OtlpDecodeError",
    "TABLES",
    "convert",
    "count_items",
]

Kind = Literal["traces", "logs", "metrics"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

#: The tables each kind produces, in order.
TABLES: dict[str, tuple[str, ...]] = {
    "traces": ("traces",),
    "logs": ("logs",),
    "metrics": (
        "metrics_gauge",
        "metrics_sum",
        "metrics_histogram",
        "metrics_exponential_histogram",
        "metrics_summary",
    ),
}


@dataclass(frozen=True)
class ConversionResult:
    """What one export request became."""

    tables: dict[str, pa.RecordBatch]
    """Every table of the kind (see ``TABLES``), possibly with no rows."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Items that could not become rows, counted by reason."""
    items: int = 0
    """Spans, log records or metric data points converted (rows over all tables)."""


def convert(kind: Kind | str, body: bytes, content_type: str = PROTOBUF) -> ConversionResult:
    """Converts one OTLP export request into Arrow record batches.

    Raises ``OtlpDecodeError`` for bad input, ``OtlpContentTypeError`` for an
    unsupported ``content_type`` and ``ValueError`` for an unknown ``kind``.
    """
    tables, rejected, items = _native.otlp_convert(kind, body, content_type)
    return ConversionResult(
        tables={name: pa.RecordBatch._import_from_c_capsule(s, a) for name, s, a in tables},
        rejected=dict(rejected),
        items=items,
    )


def count_items(kind: Kind | str, body: bytes, content_type: str = PROTOBUF) -> tuple[int, dict[str, int]]:
    """Validates a request exactly as ``convert`` would and counts its items
    (spans, log records or metric data points) without building Arrow arrays.

    Returns ``(items, rejected)``; raises like ``convert``.
    """
    items, rejected = _native.otlp_count_items(kind, body, content_type)
    return items, dict(rejected)
