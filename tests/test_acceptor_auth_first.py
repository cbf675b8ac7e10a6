"""Auth before work: with a bearer token configured, an unauthenticated request
is refused on its headers, before the acceptor reads (or inflates) its body,
and headers and streams per connection are bounded. Real acceptor processes;
raw HTTP/2 (the ``h2`` package) and raw sockets where only the wire can tell
how much of a body the server took in."""

from __future__ import annotations

import gzip
import socket
import time
import urllib.request

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from helpers.h2_grpc import H2GrpcConnection
from helpers.procstat import MIB, memory

TOKEN = "s3cret-token"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]  # 16
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]  # 8


def trace_request(n: int = 2, name: str = "op") -> bytes:
    spans = [
        Span(
            trace_id=bytes([7] * 16),
            span_id=bytes([3] * 7 + [i + 1]),
            name=f"{name}-{i}",
            start_time_unix_nano=1_700_000_000_000_000_000,
            end_time_unix_nano=1_700_000_000_000_001_000,
        )
        for i in range(n)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    ).SerializeToString()


@pytest.fixture
def acceptor(recorder, acceptor_factory):
    return acceptor_factory(
        {
            "ACCEPTOR_WRITER_ENDPOINTS": recorder.url,
            "SIGNALDB_AUTH_TOKEN": TOKEN,
            "ACCEPTOR_MAX_REQUEST_BYTES": str(64 * MIB),
        }
    )


def rss_mib(acceptor) -> float:
    return memory(acceptor.proc.pid)["VmRSS"] / MIB


def appended(acceptor) -> int:
    return acceptor.health()["wal"]["appended_entries"]


def grpc_export(
    acceptor, body: bytes, token: str | None = TOKEN, compression=None, metadata=(), timeout: float = 10
) -> bytes:
    md = [*metadata] + ([("authorization", f"Bearer {token}")] if token is not None else [])
    with grpc.insecure_channel(acceptor.grpc_target, options=[("grpc.max_send_message_length", 100 * MIB)]) as ch:
        return ch.unary_unary(EXPORT)(body, metadata=md, timeout=timeout, compression=compression)


def http_post(acceptor, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(
        acceptor.http_url("/v1/traces"),
        data=body,
        method="POST",
        headers={"Content-Type": "application/x-protobuf", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def raw_http(acceptor, head: bytes, body: bytes = b"", wait: float = 3.0) -> tuple[bytes, float]:
    """Sends ``head`` + ``body`` on a fresh connection; returns the status line (b"" if none came
    within ``wait``) and how long it took."""
    with socket.create_connection(("127.0.0.1", acceptor.ports["http_port"]), timeout=wait) as sock:
        sock.sendall(head + body)
        started = time.monotonic()
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
        return data.split(b"\r\n", 1)[0], time.monotonic() - started


def http_head(content_length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (content_length, extra)
    )


# --- gRPC ------------------------------------------------------------------------------------


def test_grpc_unauthenticated_60mib_is_refused_on_headers_without_reading_the_body(acceptor):
    rss_before = rss_mib(acceptor)
    conn = H2GrpcConnection("127.0.0.1", acceptor.ports["grpc_port"])
    try:
        # 1. A 60 MiB message (limit 64 MiB), wrong token and no token: we send as fast as the
        #    server's HTTP/2 flow control lets us and count what got out before the status came.
        for metadata in ([("authorization", "Bearer wrong")], []):
            sid = conn.start_call(EXPORT, metadata, message_bytes=60 * MIB)
            conn.run_until(lambda sid=sid: conn.streams[sid].done, time.monotonic() + 10)
            result = conn.streams[sid]
            assert result.grpc_status == UNAUTHENTICATED, result
            assert result.answered_after_secs < 5, result
            # grpc's stream window is 4 MiB at first, at most 16 MiB once its bandwidth probe
            # has grown it (the second call on a busy connection): the rest of the 60 MiB was
            # never let in.
            assert result.sent_body_bytes <= 16 * MIB, result
        # 2. Headers only, the message never sent and the stream left open: still answered at
        #    once, so the server cannot have waited for (or inflated) any of the body.
        sid = conn.start_call(
            EXPORT, [("grpc-encoding", "gzip")], message_bytes=60 * MIB, send_bytes=0, end_stream=False
        )
        conn.run_until(lambda: conn.streams[sid].done, time.monotonic() + 5)
        assert conn.streams[sid].grpc_status == UNAUTHENTICATED, conn.streams[sid]
        assert conn.streams[sid].sent_body_bytes == 0
        # Control: the same call with the right token is waited on (grpc wants its message).
        sid = conn.start_call(
            EXPORT, [("authorization", f"Bearer {TOKEN}")], message_bytes=1000, send_bytes=0, end_stream=False
        )
        conn.run_until(lambda: conn.streams[sid].done, time.monotonic() + 0.5)
        assert not conn.streams[sid].done, conn.streams[sid]
    finally:
        conn.close()
    # 3. grpc's own client sending a real 60 MiB message gets UNAUTHENTICATED, quickly.
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, bytes(60 * MIB), token="wrong", timeout=20)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 5
    rss_after = rss_mib(acceptor)
    print(f"acceptor RSS {rss_before:.0f} -> {rss_after:.0f} MiB after 3 unauthenticated 60 MiB requests")
    assert rss_after - rss_before < 32, (rss_before, rss_after)  # reading one body would be +60 MiB or more
    assert appended(acceptor) == 0


def test_grpc_authenticated_requests_still_work(acceptor):
    body = trace_request(3)
    for compression in (None, grpc.Compression.Gzip):
        answer = ExportTraceServiceResponse.FromString(grpc_export(acceptor, body, compression=compression))
        assert not answer.HasField("partial_success") or answer.partial_success.rejected_spans == 0
        with pytest.raises(grpc.RpcError) as err:
            grpc_export(acceptor, body, token="nope", compression=compression)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.value.details() == "missing or wrong bearer token"
    # A bad message from an authenticated client is still judged on its content.
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, b"\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An unknown method is still UNIMPLEMENTED, token or not.
    with grpc.insecure_channel(acceptor.grpc_target) as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Nope")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert appended(acceptor) == 2


def test_grpc_many_unauthenticated_streams_with_large_headers_stay_bounded(recorder, acceptor_factory):
    limit = 16 * 1024
    acceptor = acceptor_factory(
        {
            "ACCEPTOR_WRITER_ENDPOINTS": recorder.url,
            "SIGNALDB_AUTH_TOKEN": TOKEN,
            "ACCEPTOR_MAX_REQUEST_BYTES": str(64 * MIB),
            "ACCEPTOR_MAX_HEADER_BYTES": str(limit),
            "ACCEPTOR_MAX_CONCURRENT_STREAMS": "50",
        }
    )
    grpc_export(acceptor, trace_request(1, "warm-up"))
    rss_before = rss_mib(acceptor)
    conns = [H2GrpcConnection("127.0.0.1", acceptor.ports["grpc_port"]) for _ in range(5)]
    try:
        for conn in conns:
            conn.run_until(
                lambda conn=conn: bool(conn.conn.remote_settings.max_concurrent_streams < 1000), time.monotonic() + 5
            )
            assert conn.conn.remote_settings.max_concurrent_streams == 50  # the setting reaches the wire
            assert conn.conn.remote_settings.max_header_list_size == limit
        near, over = "n" * (limit - 1200), "o" * (limit + 2000)
        statuses: dict[str, list[int | None]] = {"near": [], "over": []}
        deadline = time.monotonic() + 60
        for wave in range(4):  # 4 waves x 5 connections x 50 streams = 1000 streams
            sids = []
            for conn in conns:
                for i in range(50):
                    kind = "over" if i % 5 == 0 else "near"
                    pad = over if kind == "over" else near
                    # Declares a 1 MiB message, sends 64 KiB of it and leaves the stream open.
                    sid = conn.start_call(
                        EXPORT,
                        [("x-pad", pad), ("authorization", "Bearer wrong")],
                        message_bytes=MIB,
                        send_bytes=64 * 1024,
                        end_stream=False,
                    )
                    sids.append((conn, sid, kind))
            for conn in conns:
                conn.run_until(
                    lambda conn=conn: (
                        all(s.done for s in conn.streams.values()) and conn.conn.open_outbound_streams == 0
                    ),
                    deadline,
                )
            for conn, sid, kind in sids:
                statuses[kind].append(conn.streams[sid].grpc_status)
            assert time.monotonic() < deadline, f"wave {wave} not answered in time"
        assert not any(conn.closed for conn in conns)
        assert len(statuses["near"]) == 800 and set(statuses["near"]) == {UNAUTHENTICATED}
        assert len(statuses["over"]) == 200 and set(statuses["over"]) == {RESOURCE_EXHAUSTED}
        rss_after = rss_mib(acceptor)
    finally:
        for conn in conns:
            conn.close()
    print(
        f"acceptor RSS {rss_before:.0f} -> {rss_after:.0f} MiB after 1000 unauthenticated streams "
        f"(5 connections, headers {len(near)} and {len(over)} bytes)"
    )
    assert rss_after - rss_before < 100, (rss_before, rss_after)  # measured: +15 to +26 MiB
    # Headers over the limit are refused for authenticated clients too (clearly, not a hang).
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, trace_request(1), metadata=[("x-pad", over)])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # ...and the acceptor keeps serving.
    grpc_export(acceptor, trace_request(2, "after"))
    assert appended(acceptor) == 2


# --- OTLP/HTTP -----------------------------------------------------------------------------------


def test_http_unauthenticated_large_body_is_refused_before_it_is_read(acceptor):
    # 60 MiB declared, 64 KiB sent, the rest never: the 401 comes anyway, at once.
    status, took = raw_http(acceptor, http_head(60 * MIB), bytes(64 * 1024))
    assert status == b"HTTP/1.1 401 Unauthorized" and took < 2, (status, took)
    status, took = raw_http(acceptor, http_head(60 * MIB, b"Authorization: Bearer wrong\r\n"))
    assert status == b"HTTP/1.1 401 Unauthorized" and took < 2, (status, took)
    # Control: with the right token the server does wait for the body it was promised.
    status, took = raw_http(acceptor, http_head(60 * MIB, f"Authorization: Bearer {TOKEN}\r\n".encode()), wait=0.5)
    assert status == b"", status
    # Authenticated requests work, plain and gzip; the wrong token gets 401.
    body = trace_request(2)
    assert http_post(acceptor, body, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert (
        http_post(acceptor, gzip.compress(body), {"Authorization": f"Bearer {TOKEN}", "Content-Encoding": "gzip"})[0]
        == 200
    )
    assert http_post(acceptor, body, {"Authorization": "Bearer nope"})[0] == 401
    assert appended(acceptor) == 2


def test_http_headers_over_the_limits_get_4xx_and_the_server_stays_up(recorder, acceptor_factory):
    limit = 8 * 1024
    acceptor = acceptor_factory(
        {
            "ACCEPTOR_WRITER_ENDPOINTS": recorder.url,
            "SIGNALDB_AUTH_TOKEN": TOKEN,
            "ACCEPTOR_MAX_HEADER_BYTES": str(limit),
            "ACCEPTOR_MAX_HEADER_COUNT": "40",
        }
    )
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    body = trace_request(1)
    # Within the limits: judged normally.
    near = b"X-Pad: " + b"n" * (limit - 100) + b"\r\n"
    assert raw_http(acceptor, http_head(len(body), auth + near), body)[0] == b"HTTP/1.1 200 OK"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    assert raw_http(acceptor, http_head(len(body), auth + many), body)[0] == b"HTTP/1.1 200 OK"
    cases = {
        "one header line over the limit": http_head(len(body), auth + b"X-Pad: " + b"o" * (limit + 100) + b"\r\n"),
        "too many header fields": http_head(len(body), auth + b"".join(b"X-H%d: v\r\n" % i for i in range(60))),
        "request line over the limit": b"POST /v1/traces?" + b"q" * (limit + 100) + b" HTTP/1.1\r\n\r\n",
        "unauthenticated, huge header": http_head(len(body), b"X-Pad: " + b"o" * (4 * limit) + b"\r\n"),
    }
    for name, head in cases.items():
        for _ in range(20):
            status, took = raw_http(acceptor, head, body)
            code = int(status.split()[1]) if status else 0
            assert 400 <= code < 500, (name, status)
            assert took < 2, (name, took)
    assert acceptor.proc.poll() is None
    assert http_post(acceptor, body, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert appended(acceptor) == 3
    # A client's malformed request is one warning line, not an error with a traceback (log flooding).
    lines = acceptor.log_lines()
    assert not [line for line in lines if line["level"] == "error"]
    refused = [line for line in lines if line["msg"] == "malformed HTTP request refused"]
    assert len(refused) == 4 * 20 and {line["status"] for line in refused} == {400}
