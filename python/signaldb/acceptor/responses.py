"""OTLP answers in both encodings: export responses and ``google.rpc.Status`` errors.

Success is an ``Export{Trace,Logs,Metrics}ServiceResponse``: empty when all
was taken, with ``partial_success`` (rejected count + message) when some items
could not be used. Errors carry a ``google.rpc.Status`` (HTTP body; gRPC
``grpc-status-details-bin`` trailer), with a ``RetryInfo`` detail when the
client should retry.
"""

from __future__ import annotations

import json
import re

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
        fields = {_REJECTED_FIELD[kind]: str(rejected), "errorMessage": message}
        return json.dumps({"partialSuccess": fields}).encode()
    if not rejected and not message:
        return b""
    text = message.encode()
    # ExportXPartialSuccess { int64 rejected_* = 1; string error_message = 2; }
    partial = b"\x08" + _varint(rejected) + b"\x12" + _varint(len(text)) + text
    # ExportXServiceResponse { ExportXPartialSuccess partial_success = 1; }
    return b"\x0a" + _varint(len(partial)) + partial


def status(
    reason: Reason, message: str, retry_after_secs: int | None = None, field: str | None = None
) -> status_pb2.Status:
    """The ``google.rpc.Status``; a retry hint becomes a ``RetryInfo`` detail, the offending
    field of an invalid request a ``BadRequest`` detail (``field_violations``)."""
    st = status_pb2.Status(code=reason.rpc_code, message=message)
    if retry_after_secs is not None:
        detail = any_pb2.Any()
        detail.Pack(retry_info(retry_after_secs))
        st.details.append(detail)
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        st.details.append(detail)
    return st


def retry_info(retry_after_secs: int) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_secs))


def status_body(st: status_pb2.Status, content_type: str) -> bytes:
    """An HTTP error body in the request's encoding."""
    if content_type == JSON:
        body: dict[str, object] = {"code": st.code, "message": st.message}
        details: list[dict[str, object]] = []
        for detail in st.details:
            info, bad = error_details_pb2.RetryInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                details.append(
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{info.retry_delay.seconds}s"}
                )
            elif detail.Unpack(bad):
                details.append(
                    {
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [
                            {"field": v.field, "description": v.description} for v in bad.field_violations
                        ],
                    }
                )
        if details:
            body["details"] = details
        return json.dumps(body).encode()
    serialized: bytes = st.SerializeToString()
    return serialized


# "invalid [OTLP/JSON ]ExportXServiceRequest: <path>: <problem>" (signaldb_otlp::DecodeError's
# Display: the path in the request's own naming, lowerCamelCase JSON paths for OTLP/JSON).
_DECODE_PATH = re.compile(r"^invalid (?:OTLP/JSON )?\w+: ([A-Za-z_]\w*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)*): ")


def field_of(message: str) -> str | None:
    """The offending field's path a decode error names, if it names one."""
    m = _DECODE_PATH.match(message)
    return m.group(1) if m else None
