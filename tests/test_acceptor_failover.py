"""Writers found by DNS (``dns://name:port``) and writer failover, with real processes.

DNS: the acceptor runs in a private mount namespace whose /etc/hosts is a file this
test rewrites (a bind mount: the machine's own /etc/hosts is never touched), so the
acceptor's real resolver path (``getaddrinfo`` through glibc's NSS ``files``) answers
with the addresses the test chooses: several 127.0.0.x writers under one name,
then others. What is not exercised here: a DNS server (the answers come from the
hosts file; the code asks ``getaddrinfo`` either way) and a Kubernetes headless
Service (tests/test_deploy.py checks the manifests point at one).

Failover: two real writers on one storage directory with the default embedded
catalog, a real acceptor with ``writer_failover_secs`` = 2; one writer is SIGKILLed,
later restarted, and the other SIGSTOPped and continued, under load.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from conftest import scaled
from helpers.acceptor_proc import AcceptorProcess
from helpers.flight_recorder import FlightRecorder
from helpers.net import free_port, wait_until
from helpers.tls import self_signed
from signaldb.acceptor.routing import RoutingTable, ranked, route
from signaldb.config import ConfigError, load
from test_acceptor_bad_input import post, trace_request
from test_multinode import Clients, Cluster

TOKEN = "dns-test-token"  # a dns:// name is not loopback: Flight to it needs the token


# --- configuration and routing ----------------------------------------------------------------


def test_dns_endpoints_parse_mixed_with_grpc_ones():
    cfg = load(
        None,
        "acceptor",
        environ={
            "ACCEPTOR_WRITER_ENDPOINTS": "grpc://127.0.0.1:1,dns://writers.example:50061,grpc+tls://[::1]:2",
            "SIGNALDB_AUTH_TOKEN": "t",
        },
    )
    assert cfg.acceptor.writer_endpoints == ("grpc://127.0.0.1:1", "dns://writers.example:50061", "grpc+tls://[::1]:2")
    for bad, why in (
        ("dns://writers.example", "HOST:PORT"),
        ("dns://writers.example:0", "port"),
        ("dns://:50061", "HOST:PORT"),
    ):
        with pytest.raises(ConfigError, match=f"acceptor.writer_endpoints: .*{why}"):
            load(None, "acceptor", environ={"ACCEPTOR_WRITER_ENDPOINTS": bad, "SIGNALDB_AUTH_TOKEN": "t"})
    # A name other than localhost may resolve anywhere: Flight to it needs the token.
    with pytest.raises(ConfigError, match=r"security\.auth_token"):
        load(None, "acceptor", environ={"ACCEPTOR_WRITER_ENDPOINTS": "dns://writers.example:50061"})
    load(None, "acceptor", environ={"ACCEPTOR_WRITER_ENDPOINTS": "dns://localhost:50061"})


def test_failed_over_entries_go_to_the_next_writer_in_rendezvous_order():
    writers = ("grpc://a:1", "grpc://b:1", "grpc://c:1")
    table = RoutingTable(writers)
    for eid in range(1, 2000):
        order = ranked(eid, writers)
        assert table.owner(eid) == order[0] == writers[route(eid, writers)]
        assert table.with_failed_over(frozenset({order[0]})).owner(eid) == order[1]
        assert table.with_failed_over(frozenset(order[:2])).owner(eid) == order[2]
        assert table.with_failed_over(frozenset(writers)).owner(eid) == order[0]  # nowhere better to go
    # Failing one writer over moves only its own entries.
    b_out = table.with_failed_over(frozenset({"grpc://b:1"}))
    assert all(b_out.owner(e) == table.owner(e) for e in range(1, 2000) if table.owner(e) != "grpc://b:1")


def test_claims_keep_each_entry_on_one_lane_through_route_changes(tmp_path):
    """The forwarder's bookkeeping on a real WAL (no lanes running): an entry in flight on one
    lane is not claimed by its new owner after a failover; one acked meanwhile is not claimed
    from a read that began before; one given up after a failed attempt is."""
    from signaldb.acceptor.forwarder import Forwarder
    from signaldb.wal import Wal

    a, b = "grpc://127.0.0.1:1", "grpc://127.0.0.1:2"
    with Wal(tmp_path / "wal") as wal:
        wal.append_batch([b"x"] * 40)
        fw = Forwarder(
            wal, "acc", [a, b], metrics=None, dead_letters=None, batch_entries=100, batch_bytes=1 << 20, failover_secs=2
        )
        entries = list(wal.unprocessed())
        fw.begin_read(a)
        in_flight_on_a = fw.claim(entries, a)
        assert in_flight_on_a and all(fw.table.owner(e.id) == a for e in in_flight_on_a)
        fw.table = fw.table.with_failed_over(frozenset({a}))  # what check_failover does
        assert all(fw.table.owner(e.id) == b for e in entries)
        fw.begin_read(b)
        assert {e.id for e in fw.claim(entries, b)} == {e.id for e in entries} - {e.id for e in in_flight_on_a}

        acked, *failed = in_flight_on_a
        fw.begin_read(b)
        stale = list(wal.unprocessed())  # lists ``acked``: the read began before a's ack
        wal.mark_processed(acked.id)
        fw.release([acked.id])
        assert fw.claim(stale, b) == []  # b's own are claimed already; acked is done, failed are a's
        assert fw.give_up(a, failed) == {e.id for e in failed}
        fw.begin_read(b)
        assert [e.id for e in fw.claim(list(wal.unprocessed()), b)] == [e.id for e in failed]
        assert not fw._done, "processed ids are forgotten once no read can list them"


# --- dns:// through the system resolver ---------------------------------------------------------


class HostsFile:
    """The /etc/hosts of one acceptor's private mount namespace."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set([])

    def set(self, addresses: list[str], name: str = "writers.test") -> None:
        text = "127.0.0.1 localhost\n" + "".join(f"{a} {name}\n" for a in addresses)
        # In place, one write: the bind mount holds this inode (a rename would not be seen).
        with open(self.path, "r+" if self.path.exists() else "w") as f:
            f.write(text.ljust(4096, "#") + "\n")

    def prefix(self) -> list[str]:
        """Runs the command with this file as /etc/hosts (root: unshare + bind mount)."""
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"',
            str(self.path),
        ]


def sent(acceptor, n: int, name: str) -> None:
    for i in range(n):
        status, _, body = post(
            acceptor, "/v1/traces", trace_request(1, f"{name}{i}"), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200, body


def test_dns_endpoint_follows_the_name_as_writers_come_and_go(tmp_path, request):
    port = free_port()
    ips = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "::1")
    recorders = {ip: FlightRecorder(port=port, host=f"[{ip}]" if ":" in ip else ip) for ip in ips}
    url = {ip: r.url for ip, r in recorders.items()}
    hosts = HostsFile(tmp_path / "hosts")
    hosts.set(["127.0.0.2", "127.0.0.3", "::1"])
    acceptor = AcceptorProcess(
        workdir=tmp_path,
        prefix=hosts.prefix(),
        env={
            "ACCEPTOR_WRITER_ENDPOINTS": f"dns://writers.test:{port}",
            "ACCEPTOR_WRITER_DNS_REFRESH_SECS": "1",
            "SIGNALDB_AUTH_TOKEN": TOKEN,
            # No catalog: no failover, so only a change of the name's addresses moves entries.
            "SIGNALDB_CATALOG_URL": "none",
        },
    )

    down: set[str] = set()

    def ids(ip: str) -> set[int]:
        return recorders[ip].entry_ids()

    def delivered() -> set[int]:
        return set().union(*(ids(ip) for ip in recorders))

    try:
        acceptor.start()
        assert any(line.get("msg", "").startswith("writer failover is off") for line in acceptor.log_lines())
        wait_until(lambda: acceptor.metric("signaldb_forwarder_writers") == 3, what="three writers resolved")
        sent(acceptor, 30, "first")
        wait_until(lambda: len(delivered()) == 30, what="first entries delivered")
        three = [url["127.0.0.2"], url["127.0.0.3"], url["::1"]]
        assert three[2].startswith("grpc://[::1]:")
        assert ids("127.0.0.2") and ids("127.0.0.3") and ids("::1") and not ids("127.0.0.4")
        for ip in ("127.0.0.2", "127.0.0.3", "::1"):
            assert all(three[route(eid, three)] == url[ip] for eid in ids(ip)), "routed by rendezvous over the name"

        # Writer .2 goes away; entries routed to it wait (no catalog: no failover) ...
        recorders["127.0.0.2"].shutdown()
        down.add("127.0.0.2")
        before = delivered()
        sent(acceptor, 30, "second")
        wait_until(lambda: len(delivered() - before) >= 5, what="entries of .3 delivered")
        time.sleep(3)  # > 2 failover secs, had it been on
        waiting = acceptor.health()["wal"]["unprocessed_entries"]
        assert waiting > 0, "entries routed to the stopped writer went elsewhere without a catalog"
        # ... until the name stops listing it (and ::1) and lists .4 instead: they re-route to .3 and .4.
        hosts.set(["127.0.0.3", "127.0.0.4"])
        wait_until(lambda: acceptor.health()["wal"]["unprocessed_entries"] == 0, timeout=60, what="re-routed and acked")
        assert len(delivered()) == 60 and ids("127.0.0.4")
        wait_until(
            lambda: (
                [w["endpoint"] for w in acceptor.health()["forwarder"]["writers"]]
                == [url["127.0.0.3"], url["127.0.0.4"]]
            ),
            what="the lane of .2 stopped",
        )

        # Resolution fails (the name is gone): the last good addresses stay.
        hosts.set([])
        wait_until(lambda: acceptor.metric("signaldb_forwarder_dns_failures_total") >= 1, what="failure counted")
        sent(acceptor, 20, "third")
        wait_until(lambda: len(delivered()) == 80, what="sent to the last good writers")
        assert acceptor.metric("signaldb_forwarder_writers") == 2
        assert any(
            line.get("msg") == "writer DNS resolution failed; keeping the last good addresses"
            for line in acceptor.log_lines()
        )
        # Every entry reached exactly one writer, once.
        assert sum(r.duplicates for r in recorders.values()) == 0
        assert sum(len(ids(ip)) for ip in recorders) == 80, "an entry reached two writers"
        assert acceptor.metric("signaldb_forward_entries_total") == 80
    finally:
        if acceptor.proc is not None and acceptor.proc.poll() is None:
            acceptor.kill()
        for ip, r in recorders.items():
            if ip not in down:
                r.shutdown()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"--- acceptor log ---\n{acceptor.log_text()[-8000:]}")


def test_dns_endpoint_with_tls_checks_the_certificate_against_the_name(tmp_path, request):
    """With TLS, a writer at an address of ``dns://writers.test`` must show a certificate for
    writers.test (pods change addresses; their certificate names the Service). The same kind of
    writer listed by address (``grpc+tls://127.0.0.3``) fails: the certificate names no address."""
    import ssl
    import urllib.request

    import pyarrow.flight as flight

    cert, key = self_signed(tmp_path, cn="writers.test", san="DNS:writers.test")
    pair = [flight.CertKeyPair(cert.read_bytes(), key.read_bytes())]
    port = free_port()
    by_name = FlightRecorder(port=port, host="127.0.0.2", scheme="grpc+tls", tls_certificates=pair)
    by_address = FlightRecorder(port=port, host="127.0.0.3", scheme="grpc+tls", tls_certificates=pair)
    hosts = HostsFile(tmp_path / "hosts")
    hosts.set(["127.0.0.2"])
    acceptor = AcceptorProcess(
        workdir=tmp_path,
        prefix=hosts.prefix(),
        env={
            "ACCEPTOR_WRITER_ENDPOINTS": f"dns://writers.test:{port},{by_address.url}",
            "SIGNALDB_AUTH_TOKEN": TOKEN,
            "SIGNALDB_TLS_CERT": str(cert),
            "SIGNALDB_TLS_KEY": str(key),
            "SIGNALDB_CATALOG_URL": "none",
        },
    )  # no failover: entries of the address stay with it
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the acceptor's certificate names writers.test, not 127.0.0.1
    try:
        acceptor.start()
        for i in range(20):
            req = urllib.request.Request(
                acceptor.http_url("/v1/traces").replace("http:", "https:"),
                data=trace_request(1, f"tls{i}"),
                headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {TOKEN}"},
            )
            with urllib.request.urlopen(req, context=context, timeout=10) as resp:
                assert resp.status == 200
        name_url = f"grpc+tls://127.0.0.2:{port}"
        wait_until(
            lambda: by_name.entry_ids() and acceptor.metric("signaldb_forward_errors_total", writer=by_address.url) > 0,
            what="delivered by name, refused by address",
        )
        assert acceptor.metric("signaldb_forward_writer_up", writer=name_url) == 1
        assert not by_address.entry_ids()
        routed = [name_url, by_address.url]
        wait_until(
            lambda: len(by_name.entry_ids()) == sum(route(i, routed) == 0 for i in range(1, 21)),
            what="every entry of the name's writer",
        )
    finally:
        if acceptor.proc is not None and acceptor.proc.poll() is None:
            acceptor.kill()
        by_name.shutdown()
        by_address.shutdown()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"--- acceptor log ---\n{acceptor.log_text()[-8000:]}")


# --- failover with real writers ------------------------------------------------------------------


def entries_to(acceptor: AcceptorProcess, writer_port: int) -> float:
    return acceptor.metric("signaldb_forward_entries_total", writer=f"grpc://127.0.0.1:{writer_port}")


def test_failover_to_the_other_writer_and_back_under_load(tmp_path, request):
    """Writer 0 SIGKILLed: after 2 s its entries go to writer 1, and the acceptor drains while
    writer 0 is down; restarted, writer 0 gets its own entries again. Then writer 1 SIGSTOPped
    (a hung writer: calls time out instead of failing) and continued. Every acknowledged span
    ends up in the table exactly once.

    The exactly-once assertion at the end relies on the writers' catalog commit refusing rows
    whose acceptor entries another writer already committed (issue 16, writer side): an entry
    that a writer stored durably but could not acknowledge before it was killed or stopped is
    also sent to the other writer."""
    cluster = Cluster(tmp_path, writers=2, acceptors=1, env={"ACCEPTOR_WRITER_FAILOVER_SECS": "2"})
    acceptor = cluster.acceptors[0]
    w0, w1 = cluster.writers
    p0, p1 = cluster.flight_ports
    target_spans = scaled(100_000, 400_000)
    try:
        cluster.start()
        assert acceptor.health()["forwarder"]["failover_secs"] == 2
        clients = Clients(cluster, per_acceptor=3, spans=250, tag="first")
        with clients:
            wait_until(
                lambda: entries_to(acceptor, p0) > 5 and entries_to(acceptor, p1) > 5,
                timeout=60,
                what="load flowing to both writers",
            )
            w0.kill()
            wait_until(
                lambda: acceptor.metric("signaldb_forwarder_failovers_total", writer=f"grpc://127.0.0.1:{p0}") == 1,
                timeout=30,
                what="writer 0 failed over",
            )
            assert acceptor.metric("signaldb_forwarder_writers_failed_over") == 1
            failed_over_at = entries_to(acceptor, p1)
            wait_until(
                lambda: entries_to(acceptor, p1) > failed_over_at + 20, timeout=60, what="entries flowing to writer 1"
            )
        # Writer 0 is still down: everything acknowledged reaches writer 1.
        wait_until(
            lambda: acceptor.health()["wal"]["unprocessed_entries"] == 0,
            timeout=60,
            what="acceptor drained to writer 1 alone",
        )
        line = next(x for x in acceptor.log_lines() if x.get("msg") == "writer failed over")
        assert line["writer"] == f"grpc://127.0.0.1:{p0}" and line["next_writers"] == [f"grpc://127.0.0.1:{p1}"]
        assert line["unreachable_since"] and line["unreachable_secs"] >= 2
        status = {w["endpoint"]: w for w in acceptor.health()["forwarder"]["writers"]}
        assert status[f"grpc://127.0.0.1:{p0}"]["failed_over"] is True

        w0.start()  # same port, same WAL: the same writer, back
        wait_until(
            lambda: acceptor.metric("signaldb_forwarder_writers_failed_over") == 0, timeout=30, what="writer 0 back"
        )
        back_at = entries_to(acceptor, p0)
        with Clients(cluster, per_acceptor=3, spans=250, tag="second") as more:
            wait_until(
                lambda: entries_to(acceptor, p0) > back_at + 5, timeout=60, what="writer 0 getting its entries again"
            )
            # A hung writer: SIGSTOP. Its calls time out (5 s at most with failover on), then it fails over.
            w1.proc.send_signal(signal.SIGSTOP)
            try:
                wait_until(
                    lambda: acceptor.metric("signaldb_forwarder_failovers_total", writer=f"grpc://127.0.0.1:{p1}") == 1,
                    timeout=60,
                    what="writer 1 failed over",
                )
                stopped_at = entries_to(acceptor, p0)
                wait_until(
                    lambda: entries_to(acceptor, p0) > stopped_at + 20,
                    timeout=60,
                    what="writer 1's entries flowing to writer 0",
                )
            finally:
                w1.proc.send_signal(signal.SIGCONT)
            wait_until(
                lambda: acceptor.metric("signaldb_forwarder_writers_failed_over") == 0, timeout=30, what="writer 1 back"
            )
            wait_until(
                lambda: len(clients.acked) + len(more.acked) >= target_spans,
                timeout=300,
                what=f"{target_spans} spans acknowledged",
            )
        acked = clients.acked | more.acked
        assert acceptor.metric("signaldb_forwarder_failovers_total") == 2

        wait_until(cluster.drained, timeout=180, what="cluster drained")
        got = cluster.view().counts_once_present(acked, timeout=60)
        missing = acked - set(got)
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged spans missing"
        # The acceptor's side: every entry was acknowledged by exactly one writer, once (an entry
        # is never in flight on two writers at once, and an acked one is never sent again).
        wal = acceptor.health()["wal"]
        assert acceptor.metric("signaldb_forward_entries_total") == wal["appended_entries"]
        assert acceptor.metric("signaldb_forward_dead_letter_entries_total") == 0
        # Exactly once in the table needs the writers' catalog commit (see the docstring).
        dupes = {name: n for name, n in got.items() if n > 1}
        assert not dupes, f"{len(dupes)} of {len(acked)} spans stored more than once, e.g. {list(dupes.items())[:3]}"
        dropped = sum(w.metric("signaldb_writer_rows_committed_elsewhere_total") for w in (w0, w1))
        print(
            f"{len(acked)} acknowledged spans exactly once across two failovers; "
            f"{dropped:.0f} rows dropped at commit as committed by the other writer"
        )
    finally:
        for w in (w0, w1):
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGCONT)
        cluster.kill_all()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for proc in cluster.processes():
                print(f"--- {proc.name} {proc.workdir.name} (start {proc.starts}) ---\n{proc.log_text()[-4000:]}")
