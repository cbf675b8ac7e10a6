"""OTLP export requests to Arrow record batches (the conversion runs in Rust).

```python
from signaldb.otlp import convert, count_items, OtlpDecodeError

result = convert("traces", body)                        # application/x-protobuf
result = convert("logs", body, "application/json")      # OTLP/JSON
result.tables["traces"]         # pyarrow.RecordBatch (zero-copy from Rust)
result.rejected                 # {"metric_without_data": 2}: items that made no row
result.items                    # spans / log records / metric data points converted
items, rejected = count_items("metrics", body)          # validate + count, no Arrow
window = TimeWindow.around(time.time_ns(), max_age_secs=7 * 86400, max_future_secs=3600)
counts = check("traces", body, window=window, max_converted_bytes=256 << 20)  # what the acceptor asks
result = convert("traces", body, window=window)          # the same items rejected, the rest converted
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
fit ``timestamp[ns]`` (before year 2262). Any of these fails the whole request.

Items, not the request, are rejected (counted in ``rejected`` by reason, never
a row; the rest of the request is converted) when they break a rule the OTLP
protos state: ``span_end_before_start``;
``histogram_bucket_counts_not_bounds_plus_one`` (or buckets empty but bounds
not), ``histogram_count_not_sum_of_buckets``,
``histogram_bounds_not_increasing`` (strictly, no NaN);
``exponential_histogram_scale_out_of_range`` (outside [-10, 20]),
``exponential_histogram_count_not_sum_of_buckets`` (zero_count included);
``summary_quantile_out_of_range`` (outside [0, 1], NaN),
``summary_value_invalid`` (negative or NaN); ``metric_without_data``. With a
``TimeWindow``, an item whose time (span start; log time, else observed time;
point time) is unset (``time_missing``), before the window
(``time_too_old``) or after it (``time_in_future``) is rejected too, and a log
record with neither time gets the window's ``now_ns`` as observed time.

Size: resource and scope fields (and a metric's name, description and unit)
are repeated on every row they cover, so a small request can name huge rows.
The walk adds up each admitted row's bytes (``check(...).converted_bytes``:
the item's wire bytes, a fixed per-row overhead and the rendered bytes
repeated onto it) and raises ``OtlpTooLargeError`` once the sum passes
``max_converted_bytes`` (at most ``CONVERT_CEILING``, 1 GiB, the default),
before allocating the rows. ``check`` and ``convert`` with the same window and
limit make the same decisions, so what passed ``check`` converts.

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
from signaldb._native import NativePanicError, OtlpContentTypeError, OtlpDecodeError, OtlpTooLargeError

__all__ = [
    "CONVERT_CEILING",
    "TABLES",
    "Checked",
    "ConversionResult",
    "NativePanicError",
    "OtlpContentTypeError",
    "OtlpDecodeError",
    "OtlpTooLargeError",
    "TimeWindow",
    "check",
    "convert",
    "count_items",
]

#: The largest ``max_converted_bytes``: every column of a batch stays far below Arrow's 2 GiB.
CONVERT_CEILING: int = _native.OTLP_CONVERT_CEILING

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


@dataclass(frozen=True)
class TimeWindow:
    """Item times (ns since the epoch) a request may carry: ``[min_ns, max_ns]``;
    ``now_ns`` is when the request was taken."""

    min_ns: int
    max_ns: int
    now_ns: int

    @classmethod
    def around(cls, now_ns: int, max_age_secs: float, max_future_secs: float) -> TimeWindow:
        """The window from ``max_age_secs`` before ``now_ns`` to ``max_future_secs`` after;
        an age of 0 means no lower bound."""
        min_ns = now_ns - int(max_age_secs * 1e9) if max_age_secs > 0 else 1
        return cls(max(min_ns, 1), now_ns + int(max_future_secs * 1e9), now_ns)

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.min_ns, self.max_ns, self.now_ns)


@dataclass(frozen=True)
class Checked:
    """What ``check`` found: items that will become rows, items rejected by
    reason, and the rows' size (the figure ``max_converted_bytes`` limits)."""

    items: int
    rejected: dict[str, int]
    converted_bytes: int


def convert(
    kind: Kind | str,
    body: bytes,
    content_type: str = PROTOBUF,
    *,
    window: TimeWindow | None = None,
    max_converted_bytes: int = CONVERT_CEILING,
) -> ConversionResult:
    """Converts one OTLP export request into Arrow record batches.

    Raises ``OtlpDecodeError`` for bad input, ``OtlpTooLargeError`` (a subclass)
    when the rows would pass ``max_converted_bytes``, ``OtlpContentTypeError``
    for an unsupported ``content_type``, ``ValueError`` for an unknown ``kind``
    and ``NativePanicError`` for a bug in the Rust core.
    """
    tables, rejected, items = _native.otlp_convert(kind, body, content_type, _window(window), max_converted_bytes)
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
    items, rejected, _ = _native.otlp_count_items(kind, body, content_type)
    return items, dict(rejected)


def check(
    kind: Kind | str,
    body: bytes,
    content_type: str = PROTOBUF,
    *,
    window: TimeWindow | None = None,
    max_converted_bytes: int = CONVERT_CEILING,
) -> Checked:
    """Validates a request exactly as ``convert`` would with the same window and
    limit, without building Arrow arrays; raises like ``convert``."""
    items, rejected, converted = _native.otlp_count_items(
        kind, body, content_type, _window(window), max_converted_bytes
    )
    return Checked(items, dict(rejected), converted)


def _window(window: TimeWindow | None) -> tuple[int, int, int] | None:
    return None if window is None else window.as_tuple()
