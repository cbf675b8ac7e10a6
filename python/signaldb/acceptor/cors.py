"""CORS for OTLP/HTTP, so browser exporters can send to the acceptor.

Off unless ``acceptor.cors_allowed_origins`` lists origins. It answers as the
OpenTelemetry Collector's HTTP server does (``confighttp``, which uses
``rs/cors``):

- Preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``):
  ``204``, ``Vary: Origin, Access-Control-Request-Method,
  Access-Control-Request-Headers``. Only when the origin is allowed, the
  method is ``POST`` and every requested header is allowed does it carry
  ``Access-Control-Allow-Origin`` (the origin, or ``*`` when ``*`` is listed),
  ``Access-Control-Allow-Methods: POST``, ``Access-Control-Allow-Headers``
  (the requested ones) and ``Access-Control-Max-Age`` (when set); otherwise the
  browser sees no grant and does not send. No authentication: browsers never
  send credentials on a preflight.
- Actual requests (and their refusals, so a browser client can read the
  status): ``Access-Control-Allow-Origin`` and ``Vary: Origin`` for an allowed
  origin; nothing for others (the request is still handled: CORS is enforced
  by the browser, not a server-side access control; use the bearer token).

Implicitly allowed headers: the CORS-safelisted ones the Collector names
(``Accept``, ``Accept-Language``, ``Content-Type``, ``Content-Language``) plus
``Content-Encoding`` and ``X-Requested-With``. Others, ``Authorization``
included, must be listed in ``acceptor.cors_allowed_headers`` (as in the
Collector); ``*`` allows any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_IMPLICIT_HEADERS = frozenset(
    {"accept", "accept-language", "content-type", "content-language", "content-encoding", "x-requested-with"}
)
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


@dataclass(frozen=True)
class CorsPolicy:
    allowed_origins: tuple[str, ...] = ()
    allowed_headers: tuple[str, ...] = ()
    max_age_secs: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_origins)

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.lower()
        for allowed in self.allowed_origins:
            allowed = allowed.lower()
            if allowed == "*" or allowed == origin:
                return True
            if "*" in allowed:  # https://*.example.com: a prefix and a suffix around one wildcard
                prefix, suffix = allowed.split("*", 1)
                if len(origin) >= len(prefix) + len(suffix) and origin.startswith(prefix) and origin.endswith(suffix):
                    return True
        return False

    def _allow_origin_value(self, origin: str) -> str:
        return "*" if "*" in self.allowed_origins else origin

    def preflight_headers(self, request_headers: Mapping[str, str]) -> dict[str, str]:
        """The headers of the 204 answer to a preflight (the grant only when it is granted)."""
        headers = {"Vary": _PREFLIGHT_VARY}
        origin = request_headers.get("Origin")
        method = request_headers.get("Access-Control-Request-Method", "")
        if not origin or not self.origin_allowed(origin) or method.upper() != "POST":
            return headers
        requested = [
            h.strip().lower() for h in request_headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()
        ]
        if "*" not in self.allowed_headers and any(
            h not in _IMPLICIT_HEADERS and h not in self.allowed_headers for h in requested
        ):
            return headers
        headers["Access-Control-Allow-Origin"] = self._allow_origin_value(origin)
        headers["Access-Control-Allow-Methods"] = "POST"
        if requested:
            headers["Access-Control-Allow-Headers"] = ", ".join(requested)
        if self.max_age_secs > 0:
            headers["Access-Control-Max-Age"] = str(self.max_age_secs)
        return headers

    def response_headers(self, request_headers: Mapping[str, str]) -> dict[str, str]:
        """Headers for the answer to an actual request from a browser."""
        origin = request_headers.get("Origin")
        if not origin or not self.origin_allowed(origin):
            return {"Vary": "Origin"} if self.enabled else {}
        return {"Access-Control-Allow-Origin": self._allow_origin_value(origin), "Vary": "Origin"}

    @staticmethod
    def is_preflight(method: str, request_headers: Mapping[str, str]) -> bool:
        return (
            method == "OPTIONS" and "Origin" in request_headers and "Access-Control-Request-Method" in request_headers
        )
