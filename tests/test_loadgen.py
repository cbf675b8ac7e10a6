"""signaldb-loadgen: its requests decode and convert, and against a real acceptor
(forwarding to a recording Flight server) what it reports as acknowledged is
what the acceptor counted and what reached the writer side, exactly once.
Runs are short (~2 s) and small: the machine is shared."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from helpers.flight_recorder import FlightRecorder
from helpers.net import free_port
from helpers.tls import self_signed
from signaldb import otlp
from signaldb.loadgen import LoadConfig, Stamper, build_request, build_requests, run
from signaldb.loadgen.payload import REQUEST_ID_KEY, parse_partial_success
from signaldb.loadgen.runner import TokenBucket, percentiles
from test_otlp_reference import plain_rows

ACCEPTED = {
    "traces": "signaldb_receiver_accepted_spans_total",
    "logs": "signaldb_receiver_accepted_log_records_total",
    "metrics": "signaldb_receiver_accepted_metric_points_total",
}
TABLES = {"traces": ["traces"], "logs": ["logs"], "metrics": ["metrics_sum", "metrics_gauge", "metrics_histogram"]}


def loadgen(*args: str, timeout: float = 60) -> tuple[dict, subprocess.CompletedProcess]:
    """Runs ``python -m signaldb.loadgen ... --json`` and returns its report."""
    proc = subprocess.run(
        [sys.executable, "-m", "signaldb.loadgen", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.stdout.strip(), f"no report (exit {proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def rows(recorder: FlightRecorder, signal: str) -> list[dict]:
    return [r for t in TABLES[signal] for r in recorder.rows(t)]


# -- requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", ["traces", "logs", "metrics"])
def test_prebuilt_requests_decode_convert_and_stamp(signal):
    decoders = {
        "traces": ExportTraceServiceRequest,
        "logs": ExportLogsServiceRequest,
        "metrics": ExportMetricsServiceRequest,
    }
    reqs = build_requests(signal, 3, 40, 7, service="shop", seed=5)
    assert len({r.body for r in reqs}) == 3 and len({r.request_id for r in reqs}) == 3
    for req in reqs:
        msg = decoders[signal].FromString(req.body)
        res = msg.ListFields()[0][1][0]
        attrs = {kv.key: kv.value.string_value for kv in res.resource.attributes}
        assert attrs["service.name"] == "shop" and attrs[REQUEST_ID_KEY] == req.request_id.hex()
        result = otlp.convert(signal, req.body)  # the Rust core validates what the acceptor would
        assert result.items == 40 and not result.rejected
    new_id = Stamper(b"\x01" * 8).next_id()
    assert new_id == b"\x01" * 8 + (1).to_bytes(8, "big")
    stamped = reqs[0].stamp(new_id)
    assert len(stamped) == len(reqs[0].body)
    assert stamped == reqs[0].body.replace(reqs[0].request_id, new_id).replace(
        reqs[0].request_id.hex().encode(), new_id.hex().encode()
    )
    result = otlp.convert(signal, stamped)
    for table in result.tables.values():
        for row in plain_rows(table):
            assert dict(row["resource_attributes"])[REQUEST_ID_KEY] == new_id.hex()
            if signal != "metrics":
                assert row["trace_id"] == new_id.hex()
    if signal == "traces":
        spans = plain_rows(result.tables["traces"])
        assert len({s["span_id"] for s in spans}) == 40
        assert sum(s["parent_span_id"] is None for s in spans) == 1  # one root, the rest a tree
        assert all(len(dict(s["span_attributes"])) == 7 for s in spans)


def test_sizes_attributes_and_partial_success():
    req = build_request("traces", 512, 10, seed=1)
    spans = ExportTraceServiceRequest.FromString(req.body).resource_spans[0].scope_spans[0].spans
    assert len(spans) == 512 and all(len(s.attributes) == 10 for s in spans)
    assert all(
        len(s.attributes) == 20
        for s in ExportTraceServiceRequest.FromString(build_request("traces", 2, 20).body)
        .resource_spans[0]
        .scope_spans[0]
        .spans
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    resp = ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = 7
    resp.partial_success.error_message = "bad spans"
    assert parse_partial_success(resp.SerializeToString()) == 7
    assert parse_partial_success(b"") == 0


def test_percentiles_and_token_bucket():
    assert percentiles([]) == {}
    p = percentiles([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (p["p50"], p["p90"], p["p99"], p["max"]) == (50.0, 90.0, 99.0, 100.0)
    bucket = TokenBucket(rate=1000.0, burst=100.0)
    waits = [bucket.reserve(100) for _ in range(5)]  # the bucket starts empty: waits grow 0.1 s a reservation
    assert waits[0] == pytest.approx(0.1, abs=0.02) and waits[-1] == pytest.approx(0.5, abs=0.02)


# -- against a real acceptor ------------------------------------------------------------------------


def test_acknowledged_spans_reach_the_writer_exactly_once(recorder, acceptor_factory, tmp_path):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url})
    ack_log = tmp_path / "acked.txt"
    report, proc = loadgen(
        "--endpoint",
        acceptor.grpc_target,
        "--duration",
        "2",
        "--concurrency",
        "4",
        "--spans-per-request",
        "32",
        "--attributes",
        "4",
        "--unique",
        "--ack-log",
        str(ack_log),
    )
    assert proc.returncode == 0, proc.stderr
    acked = report["spans_acknowledged"]
    assert report["requests_ok"] > 5 and report["requests_failed"] == 0 and report["requests_refused"] == 0
    assert acked == report["requests_ok"] * 32 == report["items_acknowledged"]
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert acceptor.metric(ACCEPTED["traces"]) == acked
    recorder.wait_for(lambda: len(recorder.rows("traces")) >= acked, timeout=30)
    time.sleep(0.3)  # nothing more may arrive
    got = recorder.rows("traces")
    assert len(got) == acked and recorder.duplicates == 0
    ids = ack_log.read_text().split()
    assert len(ids) == report["requests_ok"] == len(set(ids))
    per_trace = collections.Counter(r["trace_id"] for r in got)
    assert per_trace == {i: 32 for i in ids}, "every acknowledged request's spans are there exactly once"
    assert len({(r["trace_id"], r["span_id"]) for r in got}) == acked
    assert {r["service_name"] for r in got} == {"loadgen"}


@pytest.mark.parametrize("signal", ["logs", "metrics"])
def test_logs_and_metrics_by_request_count(recorder, acceptor_factory, signal, tmp_path):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url})
    ack_log = tmp_path / "acked.txt"
    report = run(
        LoadConfig(
            endpoint=acceptor.grpc_target,
            signal=signal,
            requests=25,
            concurrency=3,
            items_per_request=20,
            attributes=3,
            unique=True,
            ack_log=str(ack_log),
            service="api",
        )
    )
    assert (report.requests_ok, report.requests_failed, report.items_acknowledged) == (25, 0, 500)
    assert acceptor.metric(ACCEPTED[signal]) == 500
    recorder.wait_for(lambda: len(rows(recorder, signal)) >= 500)
    got = rows(recorder, signal)
    assert len(got) == 500
    per_request = collections.Counter(dict(r["resource_attributes"])[REQUEST_ID_KEY] for r in got)
    assert per_request == {i: 20 for i in ack_log.read_text().split()}


def test_http_transport_gzip_and_auth_header(recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "SIGNALDB_AUTH_TOKEN": "s3cret"})
    http = f"127.0.0.1:{acceptor.ports['http_port']}"
    report, proc = loadgen(
        "--transport",
        "http",
        "--endpoint",
        http,
        "--requests",
        "4",
        "--gzip",
        "--spans-per-request",
        "16",
        "--header",
        "authorization=Bearer wrong",
        "--quiet",
    )
    assert proc.returncode == 1 and report["requests_ok"] == 0 and report["requests_failed"] == 4
    assert report["errors"] == {"http 401": 4}
    report, proc = loadgen(
        "--transport",
        "http",
        "--endpoint",
        http,
        "--requests",
        "12",
        "--gzip",
        "--spans-per-request",
        "16",
        "--header",
        "authorization=Bearer s3cret",
        "--unique",
    )
    assert proc.returncode == 0 and report["requests_ok"] == 12 and report["spans_acknowledged"] == 192
    report, proc = loadgen(
        "--endpoint",
        acceptor.grpc_target,
        "--requests",
        "5",
        "--gzip",
        "--spans-per-request",
        "16",
        "-H",
        "authorization=Bearer s3cret",
        "--quiet",
    )
    assert report["requests_ok"] == 5 and report["spans_acknowledged"] == 80
    assert acceptor.metric(ACCEPTED["traces"]) == 192 + 80
    recorder.wait_for(lambda: len(recorder.rows("traces")) == 272)


def test_tls_with_ca_file(recorder, acceptor_factory, tmp_path):
    cert, key = self_signed(tmp_path)
    acceptor = acceptor_factory(
        {"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "SIGNALDB_TLS_CERT": str(cert), "SIGNALDB_TLS_KEY": str(key)}
    )
    for transport, port in (("grpc", acceptor.ports["grpc_port"]), ("http", acceptor.ports["http_port"])):
        report, _ = loadgen(
            "--transport",
            transport,
            "--endpoint",
            f"localhost:{port}",
            "--ca-file",
            str(cert),
            "--requests",
            "3",
            "--spans-per-request",
            "8",
            "--quiet",
        )
        assert report["requests_ok"] == 3, report
    report, _ = loadgen(
        "--endpoint",
        f"localhost:{acceptor.ports['grpc_port']}",
        "--requests",
        "1",
        "--timeout",
        "3",
        "--max-retries",
        "0",
        "--quiet",
    )  # plaintext to a TLS port
    assert report["requests_ok"] == 0
    assert acceptor.metric(ACCEPTED["traces"]) == 48


def test_refusals_are_counted_and_retried_not_fatal(acceptor_factory):
    acceptor = acceptor_factory(
        {"ACCEPTOR_WRITER_ENDPOINTS": f"grpc://127.0.0.1:{free_port()}", "WAL_MAX_BACKLOG_BYTES": "1"}
    )
    report, proc = loadgen(
        "--endpoint",
        acceptor.grpc_target,
        "--duration",
        "2",
        "--concurrency",
        "4",
        "--spans-per-request",
        "16",
        "--max-retry-delay",
        "0.2",
    )
    assert proc.returncode == 0, proc.stderr  # the first request got in before the backlog built up
    assert report["requests_refused"] > 4, report
    assert report["requests_failed"] == 0
    assert set(report["errors"]) == {"grpc UNAVAILABLE"} and "backlog" in report["first_error"]
    assert report["spans_acknowledged"] == acceptor.metric(ACCEPTED["traces"]) > 0
    assert "Traceback" not in proc.stderr


def test_unreachable_endpoint_is_refused_not_a_crash():
    report, proc = loadgen(
        "--endpoint",
        f"127.0.0.1:{free_port()}",
        "--duration",
        "1",
        "--concurrency",
        "2",
        "--spans-per-request",
        "4",
        "--max-retry-delay",
        "0.1",
    )
    assert proc.returncode == 1 and report["requests_ok"] == 0 and report["requests_refused"] >= 2
    assert "Traceback" not in proc.stderr


# -- the sink and rate mode ---------------------------------------------------------------------------


@pytest.fixture
def sink():
    proc = subprocess.Popen(
        [sys.executable, "-m", "signaldb.loadgen", "sink", "--port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "sink listening: grpc 127.0.0.1:N, http 127.0.0.1:M"
        assert line.startswith("sink listening"), line + proc.stderr.read()
        parts = line.split()
        yield {"grpc": parts[3].rstrip(","), "http": parts[5]}
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # also closes the pipes


def test_rate_mode_holds_the_target(sink):
    report, proc = loadgen(
        "--endpoint",
        sink["grpc"],
        "--rate",
        "20000",
        "--duration",
        "2",
        "--spans-per-request",
        "100",
        "--concurrency",
        "4",
    )
    assert proc.returncode == 0 and report["rate_target"] == 20000
    assert 0.5 * 20000 <= report["spans_per_s"] <= 1.3 * 20000, report
    report, _ = loadgen(
        "--transport",
        "http",
        "--endpoint",
        sink["http"],
        "--rate",
        "5000",
        "--duration",
        "2",
        "--spans-per-request",
        "50",
        "--quiet",
    )
    assert 0.5 * 5000 <= report["spans_per_s"] <= 1.3 * 5000, report


def test_text_report_and_progress_lines(sink):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaldb.loadgen",
            "--endpoint",
            sink["grpc"],
            "--duration",
            "2.5",
            "--spans-per-request",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("requests:     ok", "acknowledged: ", " spans in ", "spans/s", "ack latency:  p50", "p99"):
        assert needle in out, out
    assert "loadgen: built 16 requests of 64 spans" in proc.stderr
    assert any(line.startswith("loadgen: ") and "spans/s" in line for line in proc.stderr.splitlines()), proc.stderr
    assert "\r" not in proc.stderr  # not a TTY: plain lines, no bar


def test_ctrl_c_stops_sending_and_still_reports(sink):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "signaldb.loadgen",
            "--endpoint",
            sink["grpc"],
            "--duration",
            "60",
            "--spans-per-request",
            "64",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stderr.readline()  # "loadgen: built ...": sending starts right after
    assert first.startswith("loadgen: built"), first
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["requests_ok"] > 0 and report["elapsed_s"] < 30
    assert "Traceback" not in err


def test_bad_arguments_exit_2():
    for args in (
        ["--concurrency", "0"],
        ["--header", "novalue"],
        ["--signal", "profiles"],
        ["--rate", "-1"],
        ["--max-retries", "-1"],
        ["--attributes", "-2"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "signaldb.loadgen", *args], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 2, (args, proc.stderr)
