"""Acceptor lifecycle and configuration: replay after SIGKILL, graceful SIGTERM under
load, fail-fast configuration errors, health endpoints, auth and TLS, and grpcio +
pyarrow.flight busy together in one process."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from helpers.flight_recorder import FlightRecorder
from helpers.net import free_port, wait_until
from test_acceptor_bad_input import grpc_export, post, trace_request
from test_acceptor_exporters import make_spans


def test_sigkill_then_restart_replays_everything_acknowledged(acceptor_factory, tmp_path):
    port = free_port()
    env = {"ACCEPTOR_WRITER_ENDPOINTS": f"grpc://127.0.0.1:{port}"}
    acceptor = acceptor_factory(env)
    for i in range(25):
        assert post(acceptor, "/v1/traces", trace_request(2, f"k{i}"))[0] == 200
    acceptor.kill()  # SIGKILL: no flush, no close

    recorder = FlightRecorder(port=port)
    try:
        again = acceptor_factory(env)
        recorder.wait_for(lambda: len({r["name"] for r in recorder.rows("traces")}) == 50, timeout=30)
        assert {f"k{i}-{j}" for i in range(25) for j in range(2)} == {r["name"] for r in recorder.rows("traces")}
        wait_until(lambda: again.health()["wal"]["unprocessed_entries"] == 0, what="processed after replay")
        assert again.stop() == 0
    finally:
        recorder.shutdown()


def test_sigterm_under_load_with_no_writer_says_keep_the_volume_and_keeps_every_ack(recorder, acceptor_factory):
    """No writer listens: the stop gives up forwarding after a short stall, exits with status 3
    (its WAL holds acknowledged entries: keep the volume), and the next start forwards them."""
    port = free_port()
    env = {"ACCEPTOR_WRITER_ENDPOINTS": f"grpc://127.0.0.1:{port}", "ACCEPTOR_SHUTDOWN_TIMEOUT_SECS": "10"}
    acceptor = acceptor_factory(env)
    acked: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"c{n}-{i}"
            try:
                status = post(acceptor, "/v1/traces", trace_request(1, name))[0]
            except OSError:
                return  # connection refused once the listener is gone
            if status == 200:
                acked.append(f"{name}-0")
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = time.monotonic()
    code = acceptor.stop(signal.SIGTERM, timeout=15)
    took = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(10)
    assert code == 3 and took < 12, (code, took)
    assert len(acked) > 20
    lines = acceptor.log_lines()
    stopped = [line for line in lines if line.get("msg") == "stopped"]
    assert stopped and stopped[0]["unprocessed_entries"] > 0, stopped
    assert any(line.get("msg", "").startswith("stopped with entries not forwarded; keep this volume") for line in lines)

    late = FlightRecorder(port=port)
    try:
        acceptor_factory(env)
        late.wait_for(lambda: {r["name"] for r in late.rows("traces")} >= set(acked), timeout=60)
    finally:
        late.shutdown()


def test_sigterm_forwards_what_the_wal_holds_then_exits_0(recorder, acceptor_factory):
    """A stop (a scale-down, `signaldb run` ending) first passes on what the WAL holds while the
    writer takes it, so the volume it leaves is empty: exit status 0, nothing left behind."""
    recorder.ack_delay = 0.2  # a slow writer: the WAL still holds most entries at the SIGTERM
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "ACCEPTOR_FORWARD_BATCH_ENTRIES": "4"})
    names = set()
    for i in range(40):
        assert post(acceptor, "/v1/traces", trace_request(1, f"d{i}"))[0] == 200
        names.add(f"d{i}-0")
    assert acceptor.health()["wal"]["unprocessed_entries"] > 0, "forwarded before the stop: the test shows nothing"
    assert acceptor.stop(signal.SIGTERM, timeout=30) == 0
    assert {r["name"] for r in recorder.rows("traces")} >= names
    stopped = [line for line in acceptor.log_lines() if line.get("msg") == "stopped"]
    assert stopped and stopped[0]["unprocessed_entries"] == 0, stopped


def run_acceptor(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "signaldb.acceptor.main", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args,env,toml,key",
    [
        ([], {"WAL_SYNC_MODE": "sometimes"}, None, "wal.sync_mode"),
        ([], {"ACCEPTOR_GRPC_ADDR": "localhost"}, None, "acceptor.grpc_addr"),
        ([], {"WAL_MAX_SEGMENT_SIZE": "-5"}, None, "wal.max_segment_size"),
        ([], {"ACCEPTOR_WRITER_ENDPOINTS": "http://x:1"}, None, "acceptor.writer_endpoints"),
        (["--max-backlog-bytes", "lots"], {}, None, "wal.max_backlog_bytes"),
        ([], {}, "[wal]\nmax_segment_sise = 5\n", "wal.max_segment_sise"),
        ([], {}, "[acceptor]\ngrpc_addr = 4317\n", "acceptor.grpc_addr"),
        (
            [],
            {"SIGNALDB_TLS_CERT": "/nonexistent.pem", "SIGNALDB_TLS_KEY": "/nonexistent.key"},
            None,
            "security.tls_cert",
        ),
    ],
)
def test_invalid_configuration_is_a_startup_error_naming_the_key(tmp_path, args, env, toml, key):
    if toml is not None:
        (tmp_path / "signaldb.toml").write_text(toml)
        args = [*args, "--config", str(tmp_path / "signaldb.toml")]
    result = run_acceptor(args, env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"configuration error: {key}:"), result.stderr


def test_precedence_defaults_toml_env_flags(tmp_path, recorder, acceptor_factory):
    (tmp_path / "c.toml").write_text(
        f'[wal]\nsync_mode = "batched"\nmax_backlog_bytes = 5\n[acceptor]\nwriter_endpoints = ["{recorder.url}"]\n'
    )
    acceptor = acceptor_factory(
        {"WAL_MAX_BACKLOG_BYTES": "7"}, args=["--config", str(tmp_path / "c.toml"), "--max-backlog-bytes", "100000000"]
    )
    assert acceptor.health()["wal"]["sync_mode"] == "batched"  # from TOML
    assert post(acceptor, "/v1/traces", trace_request(1))[0] == 200  # flag beat env and TOML (5, 7)
    assert post(acceptor, "/v1/traces", trace_request(1))[0] == 200


def test_health_endpoints(recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url})
    post(acceptor, "/v1/traces", trace_request(1))
    health = acceptor.health()
    assert health["status"] == "ok"
    for key in ("unprocessed_entries", "total_segments", "disk_usage_bytes", "last_flush"):
        assert key in health["wal"]
    assert acceptor.get("/livez")[0] == 200
    wait_until(lambda: acceptor.get("/readyz")[0] == 200, what="ready")
    # Labelled series appear with their first sample: wait for the first forwarding round.
    wait_until(lambda: acceptor.metric("signaldb_forward_entries_total") >= 1, what="forwarded")
    text = acceptor.metrics()
    for name in (
        "signaldb_wal_fsync_duration_seconds_bucket",
        "signaldb_wal_unprocessed_entries",
        "signaldb_wal_segments",
        "signaldb_wal_disk_usage_bytes",
        "signaldb_wal_corrupt_entries_total",
        "signaldb_wal_checkpoints_refused_total",
        "signaldb_wal_recycle_failures_total",
        "signaldb_receiver_accepted_spans_total",
        "signaldb_receiver_refused_spans_total",
        "signaldb_receiver_accepted_log_records_total",
        "signaldb_receiver_accepted_metric_points_total",
        "signaldb_wal_oldest_unprocessed_age_seconds",
        "signaldb_forward_duration_seconds_bucket",
        "signaldb_forward_errors_total",
    ):
        assert name in text, name
    assert acceptor.metric("signaldb_wal_fsync_duration_seconds_count") >= 1


def test_bearer_token_auth(recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "SIGNALDB_AUTH_TOKEN": "s3cret"})
    assert post(acceptor, "/v1/traces", trace_request(1))[0] == 401
    assert post(acceptor, "/v1/traces", trace_request(1), headers={"Authorization": "Bearer wrong"})[0] == 401
    assert post(acceptor, "/v1/traces", trace_request(1), headers={"Authorization": "Bearer s3cret"})[0] == 200
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, trace_request(1))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    exporter = GrpcSpanExporter(
        endpoint=f"http://{acceptor.grpc_target}", insecure=True, headers={"authorization": "Bearer s3cret"}
    )
    assert exporter.export(make_spans("auth", 1)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert acceptor.health()["wal"]["appended_entries"] == 2


def test_tls_on_both_receivers(recorder, acceptor_factory, tls_pair):
    cert, key = tls_pair
    acceptor = acceptor_factory(
        {"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "SIGNALDB_TLS_CERT": str(cert), "SIGNALDB_TLS_KEY": str(key)}
    )
    ctx = ssl.create_default_context(cafile=str(cert))
    req = urllib.request.Request(
        f"https://127.0.0.1:{acceptor.ports['http_port']}/v1/traces",
        data=trace_request(2),
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        assert resp.status == 200
    with pytest.raises(OSError):  # plain HTTP to a TLS port is refused
        post(acceptor, "/v1/traces", trace_request(1))
    exporter = GrpcSpanExporter(
        endpoint=f"https://127.0.0.1:{acceptor.ports['grpc_port']}",
        credentials=grpc.ssl_channel_credentials(cert.read_bytes()),
    )
    assert exporter.export(make_spans("tls", 1)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    recorder.wait_for(lambda: len(recorder.rows("traces")) == 4)


def test_grpc_and_flight_busy_together(recorder, acceptor_factory):
    """grpcio (the OTLP server) and pyarrow.flight (the forwarder's client) are two
    gRPC copies in one process; upstream has reported conflicts. Keep both busy."""
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "ACCEPTOR_FORWARD_BATCH_ENTRIES": "5"})
    spans = make_spans("busy", 5)
    sent = [0] * 4
    deadline = time.monotonic() + 5

    def client(n: int) -> None:
        exporter = GrpcSpanExporter(endpoint=f"http://{acceptor.grpc_target}", insecure=True)
        while time.monotonic() < deadline:
            assert exporter.export(spans) == SpanExportResult.SUCCESS
            sent[n] += 1
        exporter.shutdown()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    total = sum(sent)
    assert total > 50
    recorder.wait_for(lambda: len(recorder.entry_ids()) == total, timeout=60)
    assert recorder.streams >= 10  # many do_puts ran while the OTLP server was busy
    assert len(recorder.rows("traces")) == total * len(spans)
    assert acceptor.proc.poll() is None


def test_an_unwritable_wal_directory_fails_startup_with_one_clear_line(tmp_path):
    blocker = tmp_path / "not-a-dir"  # a file where the WAL directory's parent should be
    blocker.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaldb.acceptor.main",
            "--wal-dir",
            str(blocker / "wal"),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    [failure] = [json.loads(line) for line in result.stderr.splitlines() if '"startup failed"' in line]
    assert "WAL directory not writable" in failure["error"] and str(blocker) in failure["error"]
