"""The whole pipeline under load while its processes are SIGKILLed.

A client keeps sending requests whose span names are unique, remembering each
one the acceptor acknowledged. Cycles kill the acceptor, the writer, or both,
mid-load, and restart them. At the end the pipeline drains and every
acknowledged span must be in Parquet exactly once (unacknowledged ones at most
once), with no temp files left. 10 cycles in `make test`, 200 in `make stress`.
Also: the writer away for a while (backlog builds, readiness fails over the
limit, then it catches up).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from conftest import STRESS
from helpers.load import ThreadedLoad
from helpers.net import free_port, wait_until
from helpers.pipeline import Pipeline, show_logs_if_failed
from test_acceptor_bad_input import trace_request


class Load(ThreadedLoad):
    """Sends unique requests to the acceptor's fixed HTTP port from a few threads."""

    def __init__(self, http_port: int, threads: int = 3, spans: int = 5) -> None:
        super().__init__(threads)
        self.url = f"http://127.0.0.1:{http_port}/v1/traces"
        self.spans = spans
        self.acked: list[str] = []  # request prefixes; span names are f"{prefix}-{i}"
        self.refused = 0

    def _run(self, n: int) -> None:
        i = 0
        while not self.stopping:
            prefix = f"t{n}r{i}"
            i += 1
            req = urllib.request.Request(
                self.url, data=trace_request(self.spans, prefix), headers={"Content-Type": "application/x-protobuf"}
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    if resp.status == 200:
                        with self._lock:
                            self.acked.append(prefix)
            except urllib.error.HTTPError:
                self.refused += 1
                time.sleep(0.05)
            except OSError:  # acceptor down: connection refused or reset
                time.sleep(0.05)


def assert_exactly_once(pipeline: Pipeline, load: Load) -> None:
    wait_until(pipeline.drained, timeout=120, what="pipeline drained")
    want = {f"{prefix}-{i}" for prefix in load.acked for i in range(load.spans)}
    got = pipeline.counts_once_present(want)
    missing = want - set(got)
    assert not missing, f"{len(missing)} acknowledged spans missing, e.g. {sorted(missing)[:5]}"
    dupes = {name: n for name, n in got.items() if n > 1}
    assert not dupes, f"{len(dupes)} spans duplicated, e.g. {list(dupes.items())[:5]}"
    assert not pipeline.partial_files()


@pytest.fixture
def fixed_pipeline(tmp_path, request):
    http_port = free_port()
    p = Pipeline(tmp_path, env={"ACCEPTOR_HTTP_ADDR": f"127.0.0.1:{http_port}"})
    p.http_port = http_port
    try:
        yield p
    finally:
        p.kill_all()
        show_logs_if_failed(request, p)


# 200 cycles take ~4-6 min here (each writer start loads the catalog's tables, ~0.6 s):
# past pytest's default 300 s, so the stress variant has its own limit.
STRESS_CYCLES = pytest.param(200, marks=[pytest.mark.stress, pytest.mark.timeout(1200)])


@pytest.mark.parametrize("cycles", [STRESS_CYCLES if STRESS else 10])
def test_sigkill_acceptor_writer_and_both_under_load(fixed_pipeline, cycles):
    p = fixed_pipeline.start()
    victims = ("acceptor", "writer", "both")
    with Load(p.http_port) as load:
        for cycle in range(cycles):
            time.sleep(0.4)
            victim = victims[cycle % 3]
            if victim in ("acceptor", "both"):
                p.acceptor.kill()
            if victim in ("writer", "both"):
                p.writer.kill()
            if victim in ("writer", "both"):
                p.writer.start()
            if victim in ("acceptor", "both"):
                p.acceptor.start()
        time.sleep(0.5)
    assert len(load.acked) > cycles, "the load barely ran"
    assert_exactly_once(p, load)
    p.stop()


def test_writer_away_backlog_builds_readiness_fails_then_catches_up(tmp_path, request):
    away = 60.0  # a minute, as operators see it (an upgrade, a node drain)
    http_port = free_port()
    p = Pipeline(
        tmp_path,
        env={
            "ACCEPTOR_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "WAL_MAX_BACKLOG_BYTES": str(3 << 20),
            "WAL_MAX_SEGMENT_SIZE": str(1 << 20),
        },
    )
    p.http_port = http_port
    try:
        p.start()
        p.writer.stop()
        with Load(http_port, spans=50) as load:
            deadline = time.monotonic() + away
            saw_unready = False
            while time.monotonic() < deadline:
                status, body = p.acceptor.get("/readyz")
                saw_unready |= status == 503 and any("backlog" in r for r in json.loads(body)["reasons"])
                time.sleep(0.25)
            assert saw_unready, "readiness never failed while over the backlog limit"
            assert load.refused > 0
            p.writer.start()
            wait_until(lambda: p.acceptor.get("/readyz")[0] == 200, timeout=60, what="ready again")
        assert_exactly_once(p, load)
    finally:
        p.kill_all()
        show_logs_if_failed(request, p)


from helpers.seaweed import BUCKET, S3_ENV  # noqa: E402  (the `weed` fixture is in conftest.py)


def test_object_store_away_for_a_while_nothing_lost_files_arrive_once(weed, tmp_path, request):
    """S3 (a real SeaweedFS) goes away while clients send: acks continue (both WALs hold
    the data), the writer retries its PUTs, and once S3 is back every acknowledged span
    is in the bucket exactly once."""
    http_port = free_port()
    prefix = f"e2e/{request.node.name}"
    p = Pipeline(
        tmp_path,
        storage_url=f"s3://{BUCKET}/{prefix}",
        env={**S3_ENV, "AWS_ENDPOINT_URL": weed.endpoint, "ACCEPTOR_HTTP_ADDR": f"127.0.0.1:{http_port}"},
    )
    try:
        p.start()
        weed.stop()
        try:
            with Load(http_port) as load:
                time.sleep(6.0 if not STRESS else 60.0)
            assert len(load.acked) > 20 and load.refused == 0, "acks must continue while S3 is away"
            assert p.writer.metric("signaldb_writer_object_put_errors_total") >= 1
        finally:
            weed.start(fresh=True)
        wait_until(p.drained, timeout=120, what="pipeline drained")
        p.stop()
        p.storage_dir = tmp_path / "download"
        keys = weed.download(prefix, p.storage_dir)
        assert keys and all(k.endswith(".parquet") for k in keys)
        p.drained = lambda: True  # already checked; the services are stopped now
        assert_exactly_once(p, load)
    finally:
        p.kill_all()
        show_logs_if_failed(request, p)
