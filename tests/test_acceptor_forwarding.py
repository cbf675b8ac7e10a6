"""The forwarder: batching across entries, source ids in app_metadata, retries to the
same writer, routing over several writers, dead letters, backpressure and recovery.
Real acceptor process, real Flight servers on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from helpers.flight_recorder import FlightRecorder
from helpers.net import free_port, wait_until
from signaldb.acceptor import forwarder
from signaldb.acceptor.forwarder import route
from test_acceptor_bad_input import grpc_export, post, trace_request


def test_batches_span_entries_and_carry_source_ids(acceptor_factory, tmp_path):
    port = free_port()
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": f"grpc://127.0.0.1:{port}"})
    for i in range(20):  # the writer is down: entries pile up in the WAL, all acknowledged
        assert post(acceptor, "/v1/traces", trace_request(2, f"req{i}"))[0] == 200
    assert acceptor.health()["wal"]["unprocessed_entries"] == 20
    # Ready all the same: readiness is local (replay, backlog, disk), writers are reported in /health.
    assert acceptor.get("/readyz") == (200, b'{"ready": true}')
    assert acceptor.health()["forwarder"]["writers"][0]["up"] is False
    assert acceptor.metric("signaldb_forward_writer_up") == 0

    recorder = FlightRecorder(port=port)
    try:
        recorder.wait_for(lambda: len(recorder.rows("traces")) == 40, timeout=30)
        acceptor_id = (tmp_path / "wal" / "acceptor-id").read_text().strip()
        assert {r.acceptor_id for r in recorder.received} == {acceptor_id}
        assert max(len(r.entries) for r in recorder.received) > 1, "entries were not batched together"
        assert len(recorder.entry_ids()) == 20
        wait_until(lambda: acceptor.health()["wal"]["unprocessed_entries"] == 0, what="all processed")
        wait_until(lambda: acceptor.get("/readyz")[0] == 200, what="ready")
    finally:
        recorder.shutdown()


def test_requests_in_quick_succession_travel_in_one_round(recorder, acceptor_factory):
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url})
    wait_until(lambda: acceptor.health()["forwarder"]["writers"][0]["up"], what="writer up")
    for i in range(10):
        assert post(acceptor, "/v1/traces", trace_request(1, f"q{i}"))[0] == 200
    recorder.wait_for(lambda: len(recorder.entry_ids()) == 10)
    # Without the linger each request was a round of its own (a Flight call and a writer sync).
    assert len(recorder.received) <= 5, [r.entries for r in recorder.received]


@dataclass
class _Pending:  # what _linger_secs reads of a WAL entry
    payload: bytes
    timestamp_ns: int


def test_linger_waits_only_for_young_small_rounds():
    now = time.time_ns()
    young = [_Pending(b"x" * 1000, now - 10_000_000)]  # 10 ms old
    assert 0.05 < forwarder._linger_secs(young, full=False) <= 0.09
    assert forwarder._linger_secs(young, full=True) == 0  # a full round goes at once
    assert forwarder._linger_secs([_Pending(b"x" * forwarder.LINGER_BYTES, now)], full=False) == 0
    assert forwarder._linger_secs([_Pending(b"x", now - 1_000_000_000)], full=False) == 0  # old enough
    assert forwarder._linger_secs([_Pending(b"x", now + 3600 * 10**9)], full=False) == 0  # clock went back
    assert forwarder._linger_secs([], full=False) == 0


def test_retries_go_to_the_same_writer_and_routing_is_stable(acceptor_factory):
    a, b = FlightRecorder(), FlightRecorder()
    try:
        b.fail_next = 3  # writer b refuses its first streams: its entries must wait for b, not go to a
        endpoints = [a.url, b.url]
        acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": ",".join(endpoints)})
        for i in range(30):
            assert post(acceptor, "/v1/traces", trace_request(1, f"r{i}"))[0] == 200
        wait_until(lambda: len(a.entry_ids()) + len(b.entry_ids()) == 30, what="all delivered")
        assert a.entry_ids() and b.entry_ids()
        for recorder, index in ((a, 0), (b, 1)):
            assert all(route(eid, endpoints) == index for eid in recorder.entry_ids())
        assert not (a.entry_ids() & b.entry_ids())
        assert acceptor.metric("signaldb_forward_errors_total") >= 1
    finally:
        a.shutdown()
        b.shutdown()


def test_rounds_in_flight_are_all_resent_when_one_fails(recorder, acceptor_factory):
    # One entry per round and slow acks: the lane streams a round while the previous one
    # still waits for its ack. Stream 3 fails; every entry still arrives and is processed.
    recorder.ack_delay = 0.3
    recorder.fail_streams = {3}
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": recorder.url, "ACCEPTOR_FORWARD_BATCH_ENTRIES": "1"})
    for i in range(8):
        assert post(acceptor, "/v1/traces", trace_request(1, f"r{i}"))[0] == 200
    recorder.wait_for(lambda: len(recorder.entry_ids()) == 8)
    wait_until(lambda: acceptor.health()["wal"]["unprocessed_entries"] == 0, what="all processed")
    assert recorder.max_active >= 2, "rounds were not pipelined"
    assert {r["name"] for r in recorder.rows("traces")} == {f"r{i}-0" for i in range(8)}
    assert acceptor.metric("signaldb_forward_errors_total") >= 1
    assert acceptor.metric("signaldb_forward_entries_total") == 8


def test_refused_entry_goes_to_dead_letter_and_does_not_block(recorder, acceptor_factory, tmp_path):
    recorder.refuse_if = lambda table, batch: "poison-0" in batch.column("name").to_pylist()
    port = recorder.port
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": f"grpc://127.0.0.1:{port}"})
    for name in ("good-a", "poison", "good-b"):
        assert post(acceptor, "/v1/traces", trace_request(1, name))[0] == 200
    recorder.wait_for(lambda: {r["name"] for r in recorder.rows("traces")} == {"good-a-0", "good-b-0"})
    wait_until(lambda: acceptor.health()["wal"]["unprocessed_entries"] == 0, what="all processed")
    dead = tmp_path / "wal" / "dead-letter"
    infos = [json.loads(p.read_text()) for p in dead.glob("*.json")]
    assert len(infos) == 1 and "refuses" in infos[0]["reason"] and infos[0]["kind"] == "traces"
    payload = (dead / f"{infos[0]['entry_id']:020d}.traces.otlp").read_bytes()
    # the request as accepted, recoverable: replayable as is with the content type the .json names
    assert infos[0]["content_type"] == "application/x-protobuf"
    assert ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans[0].name == "poison-0"
    assert acceptor.metric("signaldb_forward_dead_letter_entries_total") == 1
    assert acceptor.health()["forwarder"]["dead_letter_entries"] == 1


def retry_delay(err: grpc.RpcError) -> tuple[int, int]:
    trailers = dict(err.trailing_metadata() or ())
    info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    st = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    detail = error_details_pb2.RetryInfo()
    assert st.code == 14 and st.details[0].Unpack(detail)
    return info.retry_delay.seconds, detail.retry_delay.seconds


def test_backlog_limit_pushes_back_then_recovers(acceptor_factory):
    port = free_port()
    acceptor = acceptor_factory({"ACCEPTOR_WRITER_ENDPOINTS": f"grpc://127.0.0.1:{port}", "WAL_MAX_BACKLOG_BYTES": "1"})
    assert post(acceptor, "/v1/traces", trace_request(1, "first"))[0] == 200
    status, headers, body = post(acceptor, "/v1/traces", trace_request(1, "second"))
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert "backlog" in status_pb2.Status.FromString(body).message
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, trace_request(1, "third"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert min(retry_delay(err.value)) >= 1
    status, body = acceptor.get("/readyz")
    assert status == 503 and any("backlog" in r for r in json.loads(body)["reasons"])
    assert acceptor.metric("signaldb_receiver_refused_spans_total", reason="backpressure") == 2
    assert acceptor.health()["wal"]["appended_entries"] == 1  # nothing written for refused requests

    recorder = FlightRecorder(port=port)
    try:
        recorder.wait_for(lambda: len(recorder.rows("traces")) == 1, timeout=30)
        wait_until(lambda: post(acceptor, "/v1/traces", trace_request(1, "later"))[0] == 200, what="recovery")
        wait_until(lambda: acceptor.get("/readyz")[0] == 200, what="ready again")
    finally:
        recorder.shutdown()


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_answers_503_and_recovers_when_space_frees(acceptor_factory, small_disk):
    port = free_port()
    acceptor = acceptor_factory(
        {"ACCEPTOR_WRITER_ENDPOINTS": f"grpc://127.0.0.1:{port}", "ACCEPTOR_WAL_DIR": str(small_disk / "wal")}
    )
    big = trace_request(1, "x" * 200_000)
    accepted = 0
    for _ in range(60):
        status, headers, body = post(acceptor, "/v1/traces", big)
        if status != 200:
            break
        accepted += 1
    assert status == 503 and "Retry-After" in headers, body
    assert "disk is full" in status_pb2.Status.FromString(body).message
    assert accepted >= 5
    assert acceptor.get("/readyz")[0] == 503
    with pytest.raises(grpc.RpcError) as err:
        grpc_export(acceptor, big)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert acceptor.proc.poll() is None  # still up

    recorder = FlightRecorder(port=port)
    try:
        recorder.wait_for(lambda: len(recorder.rows("traces")) == accepted, timeout=60)
        wait_until(lambda: post(acceptor, "/v1/traces", big)[0] == 200, timeout=30, what="space freed")
    finally:
        recorder.shutdown()


def test_new_entries_wake_every_lane():
    # Each lane has its own wake-up: with one shared event, the first lane to wake
    # cleared it and the others noticed new entries only at their next 0.5 s poll.
    fw = forwarder.Forwarder(
        wal=None,
        acceptor_id="a",
        endpoints=["grpc://127.0.0.1:1", "grpc://127.0.0.1:2"],
        metrics=None,
        dead_letters=None,
        batch_entries=1,
        batch_bytes=1,
    )
    fw.lanes[0].wake.set()
    fw.lanes[0].wake.clear()  # lane 0 woke and went back to sleep
    fw.notify()
    assert all(lane.wake.is_set() for lane in fw.lanes)
