"""A raw HTTP/2 gRPC client (the ``h2`` package over a plain socket) for tests
that need to see the wire: how many request bytes the server let us send
before it answered, answers to requests whose message never completes, many
streams with chosen headers on one connection.

grpc's own client cannot do these: it sends a message whole and hides the
HTTP/2 flow control that tells how much the server actually took in.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

_ZEROS = bytes(1 << 20)


@dataclass
class StreamResult:
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)  # response headers and trailers together
    sent_body_bytes: int = 0  # DATA bytes (gRPC frame prefix included) we sent on this stream
    ended: bool = False  # the server ended the stream (trailers) ...
    reset: int | None = None  # ... or reset it (HTTP/2 error code)
    answered_after_secs: float | None = None

    @property
    def grpc_status(self) -> int | None:
        value = self.headers.get("grpc-status")
        return int(value) if value is not None else None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2GrpcConnection:
    """One HTTP/2 connection; ``start_call`` opens a gRPC stream, ``pump`` moves bytes both ways."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        # Our own receive window is huge: only the server's flow control should limit anything.
        # Huffman-coding large test headers in pure Python costs ~25 ms per 15 KiB: send them as is.
        encode = self.conn.encoder.encode
        self.conn.encoder.encode = lambda headers, huffman=False: encode(headers, huffman=False)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 30)
        self.streams: dict[int, StreamResult] = {}
        self._to_send: dict[int, int] = {}  # stream id -> body bytes still to send
        self._started: dict[int, float] = {}
        self.closed = False
        self.goaway: int | None = None
        self._flush()

    def start_call(
        self,
        path: str,
        metadata: list[tuple[str, str]] | None = None,
        message_bytes: int = 0,
        send_bytes: int | None = None,
        end_stream: bool = True,
    ) -> int:
        """Sends the headers of a gRPC call whose one message declares ``message_bytes``
        of payload; ``send_bytes`` of body (prefix included) are then sent as flow
        control allows (default: all of it), the stream half-closed after if ``end_stream``."""
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"{self.host}:{self.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(metadata or []),
        ]
        self.conn.send_headers(sid, headers)
        self.streams[sid] = StreamResult(sid)
        self._started[sid] = time.monotonic()
        total = 5 + message_bytes
        self._to_send[sid] = total if send_bytes is None else min(send_bytes, total)
        self._prefix_pending = getattr(self, "_prefix_pending", {})
        self._prefix_pending[sid] = struct.pack(">BI", 0, message_bytes)
        self._end = getattr(self, "_end", {})
        self._end[sid] = end_stream and self._to_send[sid] == total
        self._flush()
        return sid

    def pump(self, timeout: float) -> None:
        """Sends what flow control allows, then reads for up to ``timeout`` seconds (returns early on input)."""
        self._send_data()
        self._flush()
        if self.closed:
            return
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        for event in events:
            self._on_event(event)
        self._send_data()
        self._flush()

    def run_until(self, predicate, deadline: float) -> None:
        while not predicate() and not self.closed and time.monotonic() < deadline:
            self.pump(min(0.2, max(0.001, deadline - time.monotonic())))

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.closed = True

    # -- internals ----------------------------------------------------------------

    def _on_event(self, event) -> None:
        sid = getattr(event, "stream_id", None)
        result = self.streams.get(sid) if sid else None
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and result:
            result.headers.update({k: v for k, v in event.headers})
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and result:
            result.ended = True
            self._finish(sid)
        elif isinstance(event, h2.events.StreamReset) and result:
            result.reset = event.error_code
            self._finish(sid)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event.error_code
            self.closed = True

    def _finish(self, sid: int) -> None:
        result = self.streams[sid]
        if result.answered_after_secs is None:
            result.answered_after_secs = time.monotonic() - self._started[sid]
        self._to_send.pop(sid, None)

    def _send_data(self) -> None:
        for sid in list(self._to_send):
            remaining = self._to_send[sid]
            result = self.streams[sid]
            while remaining > 0 and not result.done:
                try:
                    window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                except h2.exceptions.StreamClosedError:
                    remaining = 0
                    break
                if window <= 0:
                    break
                n = min(window, remaining, len(_ZEROS))
                prefix = self._prefix_pending.pop(sid, b"")
                chunk = prefix[:n] + _ZEROS[: n - len(prefix[:n])]
                if len(prefix) > n:
                    self._prefix_pending[sid] = prefix[n:]
                remaining -= n
                last = remaining == 0 and self._end.get(sid, False)
                try:
                    self.conn.send_data(sid, chunk, end_stream=last)
                except h2.exceptions.StreamClosedError:
                    remaining = 0
                    break
                result.sent_body_bytes += n
                self._flush()
                if self.closed:
                    return
            if remaining == 0:
                self._to_send.pop(sid, None)
            else:
                self._to_send[sid] = remaining

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.closed:
            try:
                self.sock.settimeout(10.0)  # flow control keeps what we send small; never a partial frame
                self.sock.sendall(out)
            except OSError:
                self.closed = True
