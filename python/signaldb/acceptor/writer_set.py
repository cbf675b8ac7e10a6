"""The writers an acceptor sends to: static endpoints plus the addresses of ``dns://`` names.

``acceptor.writer_endpoints`` mixes ``grpc://host:port`` / ``grpc+tls://host:port``
(one writer each) with ``dns://name:port``: every address ``name`` resolves to is
a writer, ``grpc://addr:port`` (``grpc+tls://`` when ``security.tls_cert`` is set,
as the writers then serve TLS), so acceptors follow a Kubernetes headless
Service: writers added or removed need no acceptor restart. The names are
resolved again every ``acceptor.writer_dns_refresh_secs`` by the system resolver
(``getaddrinfo``: /etc/hosts, then DNS, as any other program on the host). A
failed or empty answer keeps the name's last good addresses (logged and
counted): a DNS outage must not take writers away from entries routed to them.

With TLS the certificate is checked against the DNS name, not the address (a
writer's certificate names its Service, and pod addresses change).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DNS_SCHEME = "dns://"
# A name that never resolved yet is tried again this often, not only every refresh interval:
# at start the writers' Service may have no addresses for a few seconds.
UNRESOLVED_RETRY_SECS = 1.0
# A name that keeps failing is logged when it starts failing and then once a minute (every failure counts).
FAILURE_LOG_SECS = 60.0

Resolver = Callable[[str, int], list[str]]


def system_resolve(host: str, port: int) -> list[str]:
    """Every address of ``host`` for a TCP connection, as the system resolver gives them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def writer_url(address: str, port: int, tls: bool) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{'grpc+tls' if tls else 'grpc'}://{host}:{port}"


@dataclass(frozen=True)
class Writer:
    url: str  # the lane's key for routing, metrics and logs
    tls_hostname: str | None = None  # the dns:// name: what a TLS certificate must name


@dataclass
class _Name:
    endpoint: str  # dns://name:port as configured
    host: str
    port: int
    addresses: tuple[str, ...] | None = None  # last good answer; None: never resolved
    failure_logged: float | None = None  # monotonic time of the last failure logged; None: not failing


class WriterSet:
    """Resolves ``dns://`` endpoints; ``current()`` is the writer list to route over.

    Not thread-safe: one thread (the forwarder's resolver) calls ``refresh``."""

    def __init__(
        self, endpoints: Sequence[str], tls: bool, metrics: Any = None, resolve: Resolver = system_resolve
    ) -> None:
        self.tls = tls
        self._metrics = metrics
        self._resolve = resolve
        self.static = [e for e in endpoints if not e.startswith(DNS_SCHEME)]
        self.names = []
        for endpoint in endpoints:
            if endpoint.startswith(DNS_SCHEME):
                host, _, port = endpoint[len(DNS_SCHEME) :].rpartition(":")
                self.names.append(_Name(endpoint, host.strip("[]"), int(port)))

    @property
    def dynamic(self) -> bool:
        return bool(self.names)

    @property
    def unresolved(self) -> bool:
        return any(n.addresses is None for n in self.names)

    def current(self) -> list[Writer]:
        """Static endpoints in their configured order, then each name's addresses (sorted);
        an address listed twice is one writer."""
        writers = {url: Writer(url) for url in self.static}
        for name in self.names:
            for address in name.addresses or ():
                url = writer_url(address, name.port, self.tls)
                writers.setdefault(url, Writer(url, name.host if self.tls else None))
        return list(writers.values())

    def refresh(self) -> bool:
        """Resolves every name once; True when some name's addresses changed."""
        changed = False
        for name in self.names:
            try:
                addresses = tuple(self._resolve(name.host, name.port))
                if not addresses:
                    raise OSError("no addresses")
            except (OSError, UnicodeError) as err:  # socket.gaierror is an OSError
                if self._metrics is not None:
                    self._metrics.dns_failures.labels(name.endpoint).inc()
                now = time.monotonic()
                if name.failure_logged is None or now - name.failure_logged >= FAILURE_LOG_SECS:
                    name.failure_logged = now
                    log.warning(
                        "writer DNS resolution failed; keeping the last good addresses",
                        extra={
                            "endpoint": name.endpoint,
                            "error": str(err) or type(err).__name__,
                            "kept": list(name.addresses or ()),
                        },
                    )
                continue
            if name.failure_logged is not None:
                name.failure_logged = None
                log.info("writer DNS resolution works again", extra={"endpoint": name.endpoint})
            if addresses != name.addresses:
                log.info(
                    "writer addresses changed",
                    extra={
                        "endpoint": name.endpoint,
                        "addresses": list(addresses),
                        "added": sorted(set(addresses) - set(name.addresses or ())),
                        "removed": sorted(set(name.addresses or ()) - set(addresses)),
                    },
                )
                name.addresses = addresses
                changed = True
        return changed
