"""Pre-built OTLP export requests, encoded by hand (protobuf wire format).

The load generator never builds protobuf on its hot path: it encodes ``K``
distinct requests once, up front, and then sends those bytes. This module is
the encoder; it needs no protobuf library (the tests decode its output with
``opentelemetry-proto`` to check it).

Shape of one request (``--signal traces``): one resource (``service.name``,
``service.instance.id``, ``host.name``, ``telemetry.sdk.*``,
``loadgen.request_id``), one scope (``signaldb.loadgen``), and ``items``
spans that form one trace: a root span and children whose parents are earlier
spans; names, kinds, durations, statuses and ``attributes`` attributes per
span (HTTP, database, RPC semantic-convention keys; ``attr.N`` beyond the
list) vary from span to span. Logs: ``items`` log records of that trace with
severities, bodies and attributes. Metrics: ``items`` data points spread over
sums, gauges and histograms of 16 points each.

Stamping (``--unique``): every request carries a 16-byte *request id*. For
traces and logs it is the trace id of every span / log record, and for every
signal its 32-character hex form is the value of the resource attribute
``loadgen.request_id``. A pre-built request is made with a random
placeholder id; :meth:`Prebuilt.stamp` returns a copy of the body with both
forms of the placeholder replaced (two ``bytes.replace`` calls, no parsing).
The builder checks that the placeholder occurs exactly where it put it, so a
replace can never touch anything else. The same id in Parquet (the
``trace_id`` column, or ``resource_attributes['loadgen.request_id']``) then
identifies the request a row came from.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections.abc import Iterator, Sequence

SIGNALS = ("traces", "logs", "metrics")
# What one item is, per signal, in report keys and the acceptor's metric names.
ITEM_NAMES = {"traces": "spans", "logs": "log_records", "metrics": "metric_points"}
SERVICES = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
}
HTTP_PATHS = {"traces": "/v1/traces", "logs": "/v1/logs", "metrics": "/v1/metrics"}
REQUEST_ID_KEY = "loadgen.request_id"
POINTS_PER_METRIC = 16

# -- protobuf wire format ------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _len(field: int, payload: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(payload)) + payload


def _str(field: int, s: str) -> bytes:
    return _len(field, s.encode())


def _uint(field: int, n: int) -> bytes:
    return _tag(field, _VARINT) + _varint(n)


def _fixed64(field: int, n: int) -> bytes:
    return _tag(field, _I64) + struct.pack("<Q", n)


def _double(field: int, x: float) -> bytes:
    return _tag(field, _I64) + struct.pack("<d", x)


def _fixed32(field: int, n: int) -> bytes:
    return _tag(field, _I32) + struct.pack("<I", n)


def _any_value(v: object) -> bytes:
    # AnyValue: 1 string, 2 bool, 3 int, 4 double
    if isinstance(v, bool):
        return _uint(2, int(v))
    if isinstance(v, int):
        return _uint(3, v)
    if isinstance(v, float):
        return _double(4, v)
    return _str(1, str(v))


def _kv(key: str, value: object) -> bytes:
    return _str(1, key) + _len(2, _any_value(value))


def _attrs(field: int, attrs: Sequence[tuple[str, object]]) -> bytes:
    return b"".join(_len(field, _kv(k, v)) for k, v in attrs)


# -- realistic content -----------------------------------------------------------------------

_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
_ROUTES = (
    "/api/v1/items/{id}",
    "/api/v1/orders/{id}",
    "/api/v1/cart",
    "/api/v1/users/{id}/profile",
    "/checkout",
    "/healthz",
)
_DB_OPS = ("SELECT orders", "SELECT items", "INSERT order_lines", "UPDATE carts", "redis GET", "redis SET")
_RPCS = ("inventory.Inventory/Reserve", "pricing.Pricing/Quote", "payments.Payments/Authorize")
_SERVERS = ("shop.example.com", "api.example.com", "db-01.internal", "cache-02.internal")
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4)",
    "okhttp/4.12.0",
    "python-requests/2.32.3",
)
_LOG_BODIES = (
    "request handled",
    "cache miss, loading from database",
    "order {n} reserved",
    "retrying upstream call (attempt {n})",
    "slow query: {n} ms",
    "user {n} signed in",
)
_SEVERITIES = ((9, "INFO"), (9, "INFO"), (9, "INFO"), (5, "DEBUG"), (13, "WARN"), (17, "ERROR"))


def _span_attrs(rng: random.Random, n: int, i: int) -> list[tuple[str, object]]:
    status = rng.choice((200, 200, 200, 200, 201, 204, 404, 500))
    route = rng.choice(_ROUTES)
    item = rng.randrange(1, 100_000)
    pool: list[tuple[str, object]] = [
        ("http.request.method", rng.choice(_METHODS)),
        ("url.path", route.replace("{id}", str(item))),
        ("http.route", route),
        ("http.response.status_code", status),
        ("server.address", rng.choice(_SERVERS)),
        ("server.port", 443),
        ("url.scheme", "https"),
        ("user_agent.original", rng.choice(_AGENTS)),
        ("network.protocol.version", "1.1"),
        ("cache.hit", rng.random() < 0.5),
        ("db.system", "postgresql"),
        ("db.operation.name", rng.choice(("SELECT", "INSERT", "UPDATE"))),
        ("rpc.system", "grpc"),
        ("enduser.id", f"user-{rng.randrange(10_000)}"),
        ("app.item.price", round(rng.uniform(1, 500), 2)),
    ]
    if n <= len(pool):
        return pool[:n]
    return pool + [(f"attr.{k}", f"value-{(i * 31 + k) % 997}") for k in range(len(pool), n)]


def _resource(service: str, instance: int, request_id_hex: str) -> bytes:
    attrs = [
        ("service.name", service),
        ("service.version", "1.4.2"),
        ("service.instance.id", f"{service}-{instance:04d}"),
        ("host.name", f"node-{instance % 7:02d}"),
        ("deployment.environment.name", "loadtest"),
        ("telemetry.sdk.name", "opentelemetry"),
        ("telemetry.sdk.language", "python"),
        ("telemetry.sdk.version", "1.30.0"),
        (REQUEST_ID_KEY, request_id_hex),
    ]
    return _attrs(1, attrs)  # Resource.attributes = 1


_SCOPE = _str(1, "signaldb.loadgen") + _str(2, "0.1.0")  # InstrumentationScope name, version


def _nonzero_bytes(rng: random.Random, n: int) -> bytes:
    while True:
        b = rng.randbytes(n)
        if any(b):
            return b


def _spans(rng: random.Random, trace_id: bytes, items: int, attributes: int, base_ns: int) -> bytes:
    span_ids = [_nonzero_bytes(rng, 8) for _ in range(items)]
    while len(set(span_ids)) != items:  # vanishingly rare; keep span ids unique in the trace
        span_ids = [_nonzero_bytes(rng, 8) for _ in range(items)]
    out = []
    for i in range(items):
        start = base_ns + i * 50_000 + rng.randrange(20_000)
        duration = int(rng.lognormvariate(13, 1.2))  # ~0.4 ms median, long tail
        if i == 0:
            name, kind = f"{rng.choice(_METHODS)} {rng.choice(_ROUTES)}", 2  # SERVER
        else:
            r = rng.random()
            if r < 0.5:
                name, kind = rng.choice(_DB_OPS), 3  # CLIENT
            elif r < 0.8:
                name, kind = rng.choice(_RPCS), 3
            else:
                name, kind = "process " + rng.choice(("cart", "order", "payment")), 1  # INTERNAL
        error = rng.random() < 0.02
        body = (
            _len(1, trace_id)
            + _len(2, span_ids[i])
            + (_len(4, span_ids[rng.randrange(i)]) if i else b"")
            + _str(5, name)
            + _uint(6, kind)
            + _fixed64(7, start)
            + _fixed64(8, start + duration)
            + _attrs(9, _span_attrs(rng, attributes, i))
            + (_len(15, _str(2, "upstream error") + _uint(3, 2)) if error else b"")  # Status
            + _fixed32(16, 0x101)
        )  # flags: sampled, has-parent-is-remote known
        out.append(_len(2, body))  # ScopeSpans.spans = 2
    return b"".join(out)


def _log_records(rng: random.Random, trace_id: bytes, items: int, attributes: int, base_ns: int) -> bytes:
    out = []
    for i in range(items):
        t = base_ns + i * 30_000 + rng.randrange(10_000)
        sev, sev_text = rng.choice(_SEVERITIES)
        msg = rng.choice(_LOG_BODIES).format(n=rng.randrange(10_000))
        body = (
            _fixed64(1, t)
            + _uint(2, sev)
            + _str(3, sev_text)
            + _len(5, _any_value(msg))
            + _attrs(6, _span_attrs(rng, attributes, i))
            + _fixed32(8, 1)
            + _len(9, trace_id)
            + _len(10, _nonzero_bytes(rng, 8))
            + _fixed64(11, t + 1_000)
        )
        out.append(_len(2, body))  # ScopeLogs.log_records = 2
    return b"".join(out)


def _metrics(rng: random.Random, items: int, attributes: int, base_ns: int) -> bytes:
    out = []
    start_ns = base_ns - 60_000_000_000
    bounds = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]
    m = 0
    left = items
    while left > 0:
        n = min(POINTS_PER_METRIC, left)
        left -= n
        points = []
        form = m % 3
        for p in range(n):
            attrs = _attrs(7 if form < 2 else 9, _span_attrs(rng, attributes, p))
            if form == 0:  # monotonic int sum: NumberDataPoint as_int (sfixed64 = 6)
                pt = attrs + _fixed64(2, start_ns) + _fixed64(3, base_ns) + _fixed64(6, rng.randrange(1 << 40))
            elif form == 1:  # gauge: as_double = 4
                pt = attrs + _fixed64(2, start_ns) + _fixed64(3, base_ns) + _double(4, rng.uniform(0, 100))
            else:  # histogram point
                counts = [rng.randrange(100) for _ in range(len(bounds) + 1)]
                pt = (
                    attrs
                    + _fixed64(2, start_ns)
                    + _fixed64(3, base_ns)
                    + _fixed64(4, sum(counts))
                    + _double(5, sum(counts) * 42.0)
                    + _len(6, struct.pack(f"<{len(counts)}Q", *counts))
                    + _len(7, struct.pack(f"<{len(bounds)}d", *bounds))
                    + _double(11, 0.5)
                    + _double(12, 1500.0)
                )
            points.append(_len(1, pt))
        data = b"".join(points)
        if form == 0:
            metric = _str(1, f"app.requests.{m}") + _str(3, "{request}") + _len(7, data + _uint(2, 2) + _uint(3, 1))
        elif form == 1:
            metric = _str(1, f"app.queue.depth.{m}") + _str(3, "{item}") + _len(5, data)
        else:
            metric = (
                _str(1, f"app.request.duration.{m}")
                + _str(2, "request duration")
                + _str(3, "ms")
                + _len(9, data + _uint(2, 2))
            )
        out.append(_len(2, metric))  # ScopeMetrics.metrics = 2
        m += 1
    return b"".join(out)


# -- pre-built requests ----------------------------------------------------------------------


class Prebuilt:
    """One pre-built export request: its body and the request id it carries.

    ``stamp`` must be cheap (it runs per request): the body is kept split at
    the binary id, so a stamped copy is one ``bytes.join`` (one pass of memcpy,
    ~20 us for 512 spans, against ~600 us for two ``bytes.replace``).
    """

    __slots__ = ("_hex_at", "_hex_part", "_parts", "body", "items", "request_id")

    def __init__(self, body: bytes, request_id: bytes, items: int) -> None:
        self.body = body
        self.request_id = request_id
        self.items = items
        parts = body.split(request_id)
        hex_id = request_id.hex().encode()
        where = [(j, part.find(hex_id)) for j, part in enumerate(parts) if hex_id in part]
        if len(where) != 1 or body.count(hex_id) != 1:
            raise ValueError("the request id's hex form must occur exactly once")
        self._parts = tuple(parts)
        self._hex_part, self._hex_at = where[0]

    def stamp(self, request_id: bytes) -> bytes:
        """The body with every occurrence of this request's id replaced by ``request_id``."""
        parts = list(self._parts)
        j, at = self._hex_part, self._hex_at
        part = parts[j]
        parts[j] = part[:at] + request_id.hex().encode() + part[at + 32 :]
        return request_id.join(parts)


def build_request(
    signal: str,
    items: int,
    attributes: int,
    service: str = "loadgen",
    seed: int | None = None,
    request_id: bytes | None = None,
    base_ns: int | None = None,
    instance: int = 0,
) -> Prebuilt:
    """Encodes one ``Export{Trace,Logs,Metrics}ServiceRequest``."""
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {SIGNALS}, not {signal!r}")
    if items < 1 or attributes < 0:
        raise ValueError("items must be >= 1 and attributes >= 0")
    rng = random.Random(seed)
    rid = request_id or _nonzero_bytes(rng, 16)
    base = base_ns if base_ns is not None else time.time_ns()
    resource = _resource(service, instance, rid.hex())
    if signal == "traces":
        content = _spans(rng, rid, items, attributes, base)
    elif signal == "logs":
        content = _log_records(rng, rid, items, attributes, base)
    else:
        content = _metrics(rng, items, attributes, base)
    scoped = _len(1, _SCOPE) + content  # Scope{Spans,Logs,Metrics}.scope = 1
    resource_block = _len(1, resource) + _len(2, scoped)  # Resource{Spans,Logs,Metrics}: resource 1, scoped 2
    body = _len(1, resource_block)  # Export*ServiceRequest.resource_* = 1
    # stamp() relies on the placeholder appearing only where we put it.
    want_binary = items if signal in ("traces", "logs") else 0
    if body.count(rid) != want_binary or body.count(rid.hex().encode()) != 1:
        return build_request(signal, items, attributes, service, rng.randrange(1 << 62), None, base, instance)
    return Prebuilt(body, rid, items)


def build_requests(
    signal: str, count: int, items: int, attributes: int, service: str = "loadgen", seed: int | None = None
) -> list[Prebuilt]:
    """``count`` distinct requests (different ids, content and resource instances)."""
    seed = seed if seed is not None else int.from_bytes(os.urandom(8), "little")
    base = time.time_ns()
    return [
        build_request(signal, items, attributes, service, seed=seed + k, base_ns=base, instance=k) for k in range(count)
    ]


class Stamper:
    """Unique request ids: an 8-byte random run nonce followed by an 8-byte counter."""

    def __init__(self, nonce: bytes | None = None) -> None:
        self.nonce = nonce if nonce is not None else os.urandom(8)
        self.counter = 0

    def next_id(self) -> bytes:
        self.counter += 1
        return self.nonce + self.counter.to_bytes(8, "big")


def parse_partial_success(response: bytes) -> int:
    """Rejected item count from an ``Export*ServiceResponse`` body (0 for an empty body).

    All three responses have ``partial_success = 1`` whose field 1 is the
    rejected count (int64); a small hand decoder, used only for non-empty bodies.
    """
    if not response:
        return 0
    rejected = 0

    def fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
        pos = 0
        while pos < len(buf):
            key, pos = _read_varint(buf, pos)
            field, wire = key >> 3, key & 7
            if wire == _VARINT:
                value, pos = _read_varint(buf, pos)
                yield field, value
            elif wire == _LEN:
                n, pos = _read_varint(buf, pos)
                yield field, buf[pos : pos + n]
                pos += n
            elif wire == _I64:
                pos += 8
            elif wire == _I32:
                pos += 4
            else:
                raise ValueError(f"unexpected wire type {wire}")

    for field, value in fields(response):
        if field == 1 and isinstance(value, bytes):
            for f2, v2 in fields(value):
                if f2 == 1 and isinstance(v2, int):
                    rejected = v2
    return rejected


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
