"""Several writers and acceptors on one object store, as docs/operations.md →
"Scaling writers" deploys them: real processes, killed and replaced under load.

Three writers and two acceptors (each listing every writer) share one storage
URL. Clients send through both acceptors while a writer is SIGKILLed and
restarted, another is stopped and replaced by one with a new, empty WAL
directory, and an acceptor is SIGKILLed and restarted. A watcher records every
object's name and checksum as it appears: none may ever change. At the end
every acknowledged span is in storage exactly once.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import scaled
from helpers.acceptor_proc import AcceptorProcess
from helpers.load import ThreadedLoad
from helpers.net import free_port, wait_until
from helpers.pipeline import Pipeline, WriterProcess
from helpers.seaweed import BUCKET, S3_ENV
from signaldb.service.lifecycle import EXIT_UNDRAINED
from test_acceptor_bad_input import post
from test_hostile_requests import spans_request


class Cluster:
    """``writers`` writers and ``acceptors`` acceptors on fixed ports, one storage URL."""

    def __init__(
        self,
        root: Path,
        writers: int = 3,
        acceptors: int = 2,
        storage_url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.storage_dir = root / "parquet"
        self.storage_url = storage_url or f"file://{self.storage_dir}"
        base = {"SIGNALDB_STORAGE_URL": self.storage_url, "WRITER_FILE_MAX_AGE_SECS": "0.3", **(env or {})}
        self.flight_ports = [free_port() for _ in range(writers)]
        endpoints = ",".join(f"grpc://127.0.0.1:{p}" for p in self.flight_ports)
        self.writers = [
            WriterProcess(workdir=self._dir(f"w{i}"), env={**base, "WRITER_FLIGHT_ADDR": f"127.0.0.1:{port}"})
            for i, port in enumerate(self.flight_ports)
        ]
        self.http_ports = [free_port() for _ in range(acceptors)]
        self.acceptors = [
            AcceptorProcess(
                workdir=self._dir(f"a{i}"),
                env={**base, "ACCEPTOR_WRITER_ENDPOINTS": endpoints, "ACCEPTOR_HTTP_ADDR": f"127.0.0.1:{port}"},
            )
            for i, port in enumerate(self.http_ports)
        ]

    def _dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start(self) -> Cluster:
        for proc in self.writers + self.acceptors:
            proc.start()
        return self

    def processes(self) -> list[AcceptorProcess]:
        return self.writers + self.acceptors

    def kill_all(self) -> None:
        for proc in self.processes():
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()

    def replace_writer(self, i: int, attempts: int = 5) -> None:
        """Stops writer ``i`` and starts a new one on its port with a new, empty WAL directory
        (a fresh pod with a fresh volume). As docs/operations.md says, a volume is only thrown
        away after a drained stop (exit status 0): a writer that stops with entries left (exit
        EXIT_UNDRAINED) is started again on its volume to write them, then stopped again."""
        old = self.writers[i]
        for _ in range(attempts):
            code = old.stop()
            if code == 0:
                break
            assert code == EXIT_UNDRAINED, f"writer {i} exited {code}:\n{old.log_text()}"
            old.start()
        else:
            raise AssertionError(f"writer {i} never stopped drained in {attempts} attempts")
        wal = old.workdir / "writer-wal"
        shutil.move(str(wal), str(old.workdir / f"writer-wal.old{old.starts}"))
        old.start()

    def drained(self) -> bool:
        try:
            return all(p.health()["wal"]["unprocessed_entries"] == 0 for p in self.processes())
        except (OSError, KeyError, ValueError):
            return False

    def view(self) -> Pipeline:
        p = Pipeline.__new__(Pipeline)
        p.storage_dir = self.storage_dir
        return p


class ObjectWatcher:
    """Records every final object's checksum the first time it is seen; any later change
    of an object (an overwrite) is a violation. ``list_objects`` returns {name: checksum}."""

    def __init__(self, list_objects) -> None:
        self.list_objects = list_objects
        self.seen: dict[str, str] = {}
        self.changed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ObjectWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        self.scan()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.scan()

    def scan(self) -> None:
        for key, digest in self.list_objects().items():
            if self.seen.setdefault(key, digest) != digest:
                self.changed.append(key)
                self.seen[key] = digest


def local_objects(root: Path):
    """{path: sha256} of the final objects under ``root`` (a file is hashed again only when
    its size or mtime changed)."""
    cache: dict[str, tuple[tuple[int, int], str]] = {}

    def list_objects() -> dict[str, str]:
        out = {}
        if root.exists():
            for path in root.rglob("*.parquet"):
                if path.name.startswith("."):
                    continue
                try:
                    st = path.stat()
                    key, stamp = str(path.relative_to(root)), (st.st_size, st.st_mtime_ns)
                    if key not in cache or cache[key][0] != stamp:
                        cache[key] = (stamp, hashlib.sha256(path.read_bytes()).hexdigest())
                except FileNotFoundError:
                    continue
                out[key] = cache[key][1]
        return out

    return list_objects


def s3_objects(weed, prefix: str):
    """{key: ETag} under ``prefix`` (a single PUT's ETag is its content's MD5)."""
    client = weed.client()

    def list_objects() -> dict[str, str]:
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(".parquet"):
                    out[obj["Key"]] = obj["ETag"]
        return out

    return list_objects


class Clients(ThreadedLoad):
    """Threads sending unique spans through every acceptor; remembers what was acknowledged."""

    def __init__(self, cluster: Cluster, per_acceptor: int = 2, spans: int = 5, tag: str = "") -> None:
        super().__init__(len(cluster.acceptors) * per_acceptor)
        self.tag = tag  # tells the span names of two loads on one cluster apart
        self.cluster = cluster
        self.spans = spans
        self.per_acceptor = per_acceptor
        self.acked: set[str] = set()

    def _run(self, thread: int) -> None:
        a, n = divmod(thread, self.per_acceptor)
        target = _FixedPort(self.cluster.http_ports[a])
        i = 0
        while not self.stopping:
            prefix, i = f"{self.tag}a{a}t{n}r{i}", i + 1
            now = time.time_ns()
            try:
                status, _, _ = post(
                    target, "/v1/traces", spans_request(prefix, [(now, now + 5)] * self.spans, trace=a * 100 + n + 1)
                )
            except OSError:  # the acceptor is down for a moment
                status = 0
            if status == 200:
                with self._lock:
                    self.acked.update(f"{prefix}-{j}" for j in range(self.spans))
            else:
                time.sleep(0.05)


class _FixedPort:
    """What ``post`` needs of an acceptor: its HTTP URL, on a port that survives restarts."""

    def __init__(self, port: int) -> None:
        self.port = port

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def cluster_factory(tmp_path, request):
    made: list[Cluster] = []

    def make(**kwargs) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", **kwargs)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.kill_all()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for proc in c.processes():
                print(f"--- {proc.name} {proc.workdir.name} (start {proc.starts}) ---\n{proc.log_text()[-3000:]}")


def exercise(cluster: Cluster, cycles: int, list_objects) -> tuple[Clients, ObjectWatcher]:
    with ObjectWatcher(list_objects) as watcher, Clients(cluster) as clients:
        wait_until(lambda: len(clients.acked) > 200, timeout=30, what="load flowing")
        for cycle in range(cycles):
            victim = cluster.writers[cycle % len(cluster.writers)]
            victim.kill()  # SIGKILL under load, restart on the same WAL
            victim.start()
            time.sleep(0.5)
            cluster.replace_writer((cycle + 1) % len(cluster.writers))  # a fresh pod, a fresh volume
            time.sleep(0.5)
            acceptor = cluster.acceptors[cycle % len(cluster.acceptors)]
            acceptor.kill()
            acceptor.start()
            time.sleep(0.5)
    return clients, watcher


def assert_every_ack_once_and_nothing_overwritten(
    cluster: Cluster, clients: Clients, watcher: ObjectWatcher, view: Pipeline
) -> None:
    wait_until(cluster.drained, timeout=120, what="cluster drained")
    got = view.counts_once_present(clients.acked)
    missing = clients.acked - set(got)
    assert not missing, f"{len(missing)} of {len(clients.acked)} acknowledged spans missing"
    dupes = {name: n for name, n in got.items() if n > 1}
    assert not dupes, f"{len(dupes)} spans duplicated, e.g. {list(dupes.items())[:5]}"
    watcher.scan()
    assert watcher.changed == [], f"objects overwritten: {watcher.changed[:5]}"
    print(f"{len(clients.acked)} acknowledged spans exactly once in {len(watcher.seen)} objects")


def test_three_writers_two_acceptors_one_directory_killed_and_replaced_under_load(cluster_factory):
    cluster = cluster_factory()
    clients, watcher = exercise(cluster, 2, local_objects(cluster.storage_dir))
    assert_every_ack_once_and_nothing_overwritten(cluster, clients, watcher, cluster.view())


def test_three_writers_two_acceptors_one_s3_bucket_killed_and_replaced_under_load(cluster_factory, weed, request):
    prefix = f"multinode/{request.node.name}"
    cluster = cluster_factory(
        storage_url=f"s3://{BUCKET}/{prefix}",
        env={**S3_ENV, "AWS_ENDPOINT_URL": weed.endpoint, "WRITER_SHUTDOWN_TIMEOUT_SECS": "10"},
    )
    clients, watcher = exercise(cluster, 1, s3_objects(weed, prefix))
    wait_until(cluster.drained, timeout=120, what="cluster drained")
    weed.download(prefix, cluster.storage_dir)
    assert_every_ack_once_and_nothing_overwritten(cluster, clients, watcher, cluster.view())


def set_writers(cluster: Cluster, writers: list[int]) -> None:
    """Lists ``writers`` in every acceptor's writer_endpoints: a rolling, graceful restart."""
    endpoints = ",".join(f"grpc://127.0.0.1:{cluster.flight_ports[i]}" for i in writers)
    for acceptor in cluster.acceptors:
        acceptor.env["ACCEPTOR_WRITER_ENDPOINTS"] = endpoints
        assert acceptor.stop() == 0
        acceptor.start()


def test_adding_and_removing_writers_as_the_docs_say_loses_and_duplicates_nothing(cluster_factory):
    """docs/operations.md, Scaling writers: add a writer to every acceptor's list; remove one by
    taking it off the lists first, waiting for its /health to say drained, then stopping it."""
    cluster = cluster_factory(writers=3)
    set_writers(cluster, [0, 1])  # writer 2 is the one added below
    with ObjectWatcher(local_objects(cluster.storage_dir)) as watcher, Clients(cluster) as clients:
        wait_until(lambda: len(clients.acked) > 200, timeout=30, what="load flowing")
        set_writers(cluster, [0, 1, 2])  # add writer 2
        wait_until(
            lambda: (
                cluster.writers[2].health()["writer"]["unprocessed_entries"] > 0
                or cluster.writers[2].metric("signaldb_writer_batches_received_total") > 0
            ),
            timeout=30,
            what="the new writer receiving",
        )
        set_writers(cluster, [1, 2])  # remove writer 0: off the lists first ...
        removed = cluster.writers[0]
        wait_until(lambda: removed.health()["drained"], timeout=60, what="writer 0 drained")  # ... then drained
        assert removed.stop() == 0
        time.sleep(1.0)
    assert_every_ack_once_and_nothing_overwritten(_without(cluster, removed), clients, watcher, cluster.view())


def _without(cluster: Cluster, gone: AcceptorProcess) -> Cluster:
    """The cluster minus a process that was removed on purpose (for ``drained``)."""
    rest = Cluster.__new__(Cluster)
    rest.__dict__.update(cluster.__dict__)
    rest.writers = [w for w in cluster.writers if w is not gone]
    return rest


@pytest.mark.stress
@pytest.mark.timeout(1200)  # 40 cycles of restarts, each writer start loading the catalog
def test_three_writers_two_acceptors_one_directory_long(cluster_factory):
    cluster = cluster_factory()
    clients, watcher = exercise(cluster, scaled(10, 40), local_objects(cluster.storage_dir))
    assert_every_ack_once_and_nothing_overwritten(cluster, clients, watcher, cluster.view())
