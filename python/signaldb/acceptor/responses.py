"""OTLP answers in both encodings: export responses and ``google.rpc.Status`` errors.

Success is an ``Export{Trace,Logs,Metrics}ServiceResponse``: empty when all
was taken, with ``partial_success`` (rejected count + message) when some items
could not be used. Errors carry a ``google.rpc.Status`` (HTTP body; gRPC
``grpc-status-details-bin`` trailer), with a ``RetryInfo`` detail when the
client should retry.
"""

from __future__ import annotations

import json

from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from signaldb.acceptor.refusals import Reason
from signaldb.otlp import JSON

# The partial_success field name per signal (protobuf field 1 of ExportXPartialSuccess).
_REJECTED_FIELD = {"traces": "rejectedSpans", "logs": "rejectedLogRecords", "metrics": "rejectedDataPoints"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def export_response(kind: str, rejected: int, message: str, content_type: str) -> bytes:
    """The success answer; ``rejected`` > 0 makes it a partial success."""
    if content_type == JSON:
        if not rejected and not message:
            return b"{}"
        partial = {_REJECTED_FIELD[kind]: str(rejected), "errorMessage": message}
        return json.dumps({"partialSuccess": partial}).encode()
    if not rejected and not message:
        return b""
    text = message.encode()
    # ExportXPartialSuccess { int64 rejected_* = 1; string error_message = 2; }
    partial = b"\x08" + _varint(rejected) + b"\x12" + _varint(len(text)) + text
    # ExportXServiceResponse { ExportXPartialSuccess partial_success = 1; }
    return b"\x0a" + _varint(len(partial)) + partial


def status(reason: Reason, message: str, retry_after_secs: int | None = None) -> status_pb2.Status:
    st = status_pb2.Status(code=reason.rpc_code, message=message)
    if retry_after_secs is not None:
        detail = any_pb2.Any()
        detail.Pack(retry_info(retry_after_secs))
        st.details.append(detail)
    return st


def retry_info(retry_after_secs: int) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_secs))


def status_body(st: status_pb2.Status, content_type: str) -> bytes:
    """An HTTP error body in the request's encoding."""
    if content_type == JSON:
        body: dict[str, object] = {"code": st.code, "message": st.message}
        if st.details:
            body["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": f"{_retry_delay_secs(st)}s"}]
        return json.dumps(body).encode()
    return st.SerializeToString()


def _retry_delay_secs(st: status_pb2.Status) -> int:
    for detail in st.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return int(info.retry_delay.seconds)
    return 0
