"""TLS contexts and bearer-token checks shared by the receivers and Flight."""

from __future__ import annotations

import hmac
import ssl
from pathlib import Path

from signaldb.config import SecurityConfig


def server_ssl_context(security: SecurityConfig) -> ssl.SSLContext | None:
    """A TLS 1.2+ server context for aiohttp, or None when TLS is off."""
    if security.tls_cert is None or security.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(security.tls_cert), str(security.tls_key))
    return ctx


def read_pem_pair(security: SecurityConfig) -> tuple[bytes, bytes] | None:
    """(certificate chain, private key) bytes for grpc and Flight, or None."""
    if security.tls_cert is None or security.tls_key is None:
        return None
    return Path(security.tls_cert).read_bytes(), Path(security.tls_key).read_bytes()


def bearer_ok(expected_token: str | None, authorization: str | None) -> bool:
    """True when no token is configured, or the header carries exactly it.

    Constant-time comparison: the token must not leak through timing."""
    if expected_token is None:
        return True
    if not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Header values that are not UTF-8 arrive with surrogate escapes (aiohttp decodes with
    # surrogateescape): they are a wrong token (401), never an encoding error (500).
    try:
        presented = token.strip().encode("utf-8", "surrogateescape")
    except UnicodeError:  # a lone surrogate surrogateescape cannot map back
        return False
    return hmac.compare_digest(presented, expected_token.encode())
