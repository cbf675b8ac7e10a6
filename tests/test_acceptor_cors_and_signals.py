"""CORS for browser exporters, SIGHUP reloads, and logs for people: against real processes."""

from __future__ import annotations

import json
import os
import pty
import signal
import ssl
import subprocess
import sys
import time
import urllib.request

import grpc

from helpers.tls import self_signed
from test_acceptor_bad_input import post, trace_request

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def options(acceptor, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(acceptor.http_url(path), method="OPTIONS", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def preflight(acceptor, origin: str, request_headers: str = "content-type", method: str = "POST"):
    return options(
        acceptor,
        "/v1/traces",
        {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": request_headers},
    )


def test_cors_is_off_by_default(recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url})
    status, headers = preflight(acceptor, "https://app.example.com")
    assert status == 405 and "Access-Control-Allow-Origin" not in headers
    status, headers, _ = post(acceptor, "/v1/traces", trace_request(1), headers={"Origin": "https://app.example.com"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


def test_cors_preflight_and_requests_as_the_collector_answers(recorder, acceptor_factory):
    acceptor = acceptor_factory(
        {
            "ACCEPTOR_WRITER_ENDPOINTS": recorder.url,
            "ACCEPTOR_CORS_ALLOWED_ORIGINS": "https://app.example.com,https://*.shop.example",
            "ACCEPTOR_CORS_ALLOWED_HEADERS": "authorization,x-tenant",
            "ACCEPTOR_CORS_MAX_AGE_SECS": "600",
            "SIGNALDB_AUTH_TOKEN": "t0ken",
        }
    )
    # An allowed origin: 204 with the grant, echoing the requested headers. No token needed.
    status, h = preflight(acceptor, "https://app.example.com", "Content-Type, Authorization, X-Tenant")
    assert status == 204
    assert h["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert h["Access-Control-Allow-Methods"] == "POST"
    assert h["Access-Control-Allow-Headers"] == "content-type, authorization, x-tenant"
    assert h["Access-Control-Max-Age"] == "600"
    assert "Origin" in h["Vary"] and "Access-Control-Request-Headers" in h["Vary"]
    # A wildcard origin matches its subdomains only.
    assert preflight(acceptor, "https://eu.shop.example")[1]["Access-Control-Allow-Origin"] == "https://eu.shop.example"
    # No grant (still 204, as rs/cors answers): another origin, a header not listed, a method not POST.
    for args in (
        ("https://evil.example",),
        ("https://shop.example.evil",),
        ("https://app.example.com", "x-other"),
        ("https://app.example.com", "content-type", "PUT"),
    ):
        status, h = preflight(acceptor, *args)
        assert status == 204 and "Access-Control-Allow-Origin" not in h, args
    # The actual request, and a refusal: both readable by the browser of an allowed origin.
    status, h, _ = post(
        acceptor,
        "/v1/traces",
        trace_request(1),
        headers={"Origin": "https://app.example.com", "Authorization": "Bearer t0ken"},
    )
    assert status == 200 and h["Access-Control-Allow-Origin"] == "https://app.example.com" and h["Vary"] == "Origin"
    status, h, _ = post(acceptor, "/v1/traces", trace_request(1), headers={"Origin": "https://app.example.com"})
    assert status == 401 and h["Access-Control-Allow-Origin"] == "https://app.example.com"
    status, h, _ = post(
        acceptor,
        "/v1/traces",
        trace_request(1),
        headers={"Origin": "https://evil.example", "Authorization": "Bearer t0ken"},
    )
    assert status == 200 and "Access-Control-Allow-Origin" not in h
    # Preflights are not refusals.
    assert acceptor.metric("signaldb_receiver_refused_requests_total", reason="wrong_method") == 0


def test_cors_star_allows_any_origin(recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "ACCEPTOR_CORS_ALLOWED_ORIGINS": "*"})
    status, h = preflight(acceptor, "https://anything.example")
    assert status == 204 and h["Access-Control-Allow-Origin"] == "*" and "Access-Control-Max-Age" not in h


def grpc_export(acceptor, token: str | None, root: bytes | None = None) -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    target = acceptor.grpc_target
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root)) if root else grpc.insecure_channel(target)
    with channel:
        try:
            channel.unary_unary(TRACES)(trace_request(1), metadata=metadata, timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()


def wait_log(proc, predicate, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in proc.log_lines() if predicate(line)]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no such log line:\n{proc.log_text()[-3000:]}")


def make_cert(tmp_path, name: str) -> tuple:
    return self_signed(tmp_path, name, cn=name)


def served_cert(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port), timeout=10)


def test_sighup_reloads_token_log_level_cors_and_certificates(tmp_path, recorder, acceptor_factory):
    cert_a, key_a = make_cert(tmp_path, "a")
    cert_b, key_b = make_cert(tmp_path, "b")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(cert_a.read_bytes())
    live_key.write_bytes(key_a.read_bytes())
    toml = tmp_path / "signaldb.toml"

    def write_config(token: str, level: str, origins: list[str], max_request: int) -> None:
        toml.write_text(
            f'log_level = "{level}"\n[security]\nauth_token = "{token}"\n'
            f'tls_cert = "{live_cert}"\ntls_key = "{live_key}"\n'
            f"[acceptor]\ncors_allowed_origins = {json.dumps(origins)}\n"
            f"max_request_bytes = {max_request}\n"
        )

    write_config("first", "info", [], 1 << 20)
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "SIGNALDB_CONFIG": str(toml)})
    root_a = cert_a.read_bytes()
    assert grpc_export(acceptor, "first", root_a) == grpc.StatusCode.OK
    assert served_cert(acceptor.ports["http_port"]).strip() == cert_a.read_text().strip()

    # Rotate everything that can be rotated, plus one setting that cannot.
    write_config("second", "debug", ["https://app.example.com"], 2 << 20)
    live_cert.write_bytes(cert_b.read_bytes())
    live_key.write_bytes(key_b.read_bytes())
    acceptor.proc.send_signal(signal.SIGHUP)
    done = wait_log(acceptor, lambda line: line.get("msg") == "SIGHUP: configuration reloaded")
    assert {"log_level", "security.auth_token", "acceptor.cors_allowed_origins"} <= set(done["applied"])
    assert any(a.startswith("security.tls") for a in done["applied"])
    restart = wait_log(acceptor, lambda line: line.get("msg", "").startswith("SIGHUP: these settings changed"))
    assert restart["needs_restart"] == ["acceptor.max_request_bytes"]
    assert "second" not in acceptor.log_text()  # the token is never logged
    assert acceptor.proc.poll() is None

    root_b = cert_b.read_bytes()
    assert grpc_export(acceptor, "second", root_b) == grpc.StatusCode.OK  # new certificate, new token
    assert grpc_export(acceptor, "first", root_b) == grpc.StatusCode.UNAUTHENTICATED
    assert served_cert(acceptor.ports["http_port"]).strip() == cert_b.read_text().strip()
    ctx = ssl.create_default_context(cafile=str(cert_b))
    req = urllib.request.Request(
        f"https://127.0.0.1:{acceptor.ports['http_port']}/v1/traces",
        data=trace_request(1),
        headers={
            "Content-Type": "application/x-protobuf",
            "Authorization": "Bearer second",
            "Origin": "https://app.example.com",
        },
    )
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    # debug is on: the acceptor logs per-request lines now.
    wait_log(acceptor, lambda line: line.get("level") == "debug" and line.get("msg") == "accepted")

    # A configuration that no longer loads changes nothing.
    toml.write_text('[wal]\nsync_mode = "sometimes"\n')
    acceptor.proc.send_signal(signal.SIGHUP)
    err = wait_log(acceptor, lambda line: line.get("msg", "").startswith("SIGHUP: configuration not reloaded"))
    assert "wal.sync_mode" in err["error"]
    assert grpc_export(acceptor, "second", root_b) == grpc.StatusCode.OK
    assert acceptor.stop() == 0


def test_sighup_keeps_the_writer_running(tmp_path):
    from helpers.pipeline import WriterProcess

    toml = tmp_path / "writer.toml"
    toml.write_text('log_level = "info"\n')
    writer = WriterProcess(
        workdir=tmp_path, env={"SIGNALDB_CONFIG": str(toml), "SIGNALDB_STORAGE_URL": f"file://{tmp_path / 'data'}"}
    ).start()
    try:
        toml.write_text('log_level = "debug"\n[writer]\nfile_max_age_secs = 5\n')
        writer.proc.send_signal(signal.SIGHUP)
        done = wait_log(writer, lambda line: line.get("msg") == "SIGHUP: configuration reloaded")
        assert done["applied"] == ["log_level"]
        restart = wait_log(writer, lambda line: line.get("msg", "").startswith("SIGHUP: these settings changed"))
        assert restart["needs_restart"] == ["writer.file_max_age_secs"]
        assert writer.proc.poll() is None and writer.get("/livez")[0] == 200
    finally:
        assert writer.stop() == 0


def run_on_a_terminal(env: dict[str, str], tmp_path, seconds: float = 4.0) -> str:
    """Runs an acceptor with stderr on a pseudo-terminal; returns what it printed there."""
    tmp_path.mkdir(parents=True)
    master, slave = pty.openpty()
    full = {
        **os.environ,
        "ACCEPTOR_WAL_DIR": str(tmp_path / "wal"),
        "ACCEPTOR_GRPC_ADDR": "127.0.0.1:0",
        "ACCEPTOR_HTTP_ADDR": "127.0.0.1:0",
        "ACCEPTOR_HEALTH_ADDR": "127.0.0.1:0",
        "ACCEPTOR_WRITER_ENDPOINTS": "grpc://127.0.0.1:9",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "signaldb.acceptor.main"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=full,
        cwd=tmp_path,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + seconds
    stopped = False
    while True:
        if not stopped and (b"listening" in out or time.monotonic() > deadline):
            proc.send_signal(signal.SIGTERM)
            stopped = True
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(30)
    os.close(master)
    return out.decode(errors="replace")


def test_logs_are_readable_lines_on_a_terminal_unless_json_is_asked_for(tmp_path):
    text = run_on_a_terminal({}, tmp_path / "text")
    lines = [line for line in text.splitlines() if line.strip()]
    listening = [line for line in lines if " listening " in line]
    assert listening and not any(line.lstrip().startswith("{") for line in lines), text
    assert "INFO" in listening[0] and "acceptor" in listening[0] and "grpc_port=" in listening[0]
    forced = run_on_a_terminal({"SIGNALDB_LOG_FORMAT": "json"}, tmp_path / "json")
    lines = [line for line in forced.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["service"] == "acceptor" for line in lines), forced
