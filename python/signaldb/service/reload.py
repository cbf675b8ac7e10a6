"""SIGHUP: reread the configuration and say what changed, what was applied, what needs a restart.

Only the TOML file (``--config`` / ``$SIGNALDB_CONFIG``) and the files it names
(TLS certificate and key) can change under a running process: its environment
and flags are fixed at start, so a reload resolves the same layers again and
usually differs only where the file did. A configuration that no longer loads
is logged and changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from signaldb.config import Config

log = logging.getLogger("signaldb.reload")

# Never logged with values.
_SECRET = {"security.auth_token"}


def changed_settings(old: Config, new: Config) -> list[str]:
    """Dotted names of the fields that differ (``sources`` aside)."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            for f in dataclasses.fields(a):
                if f.name != "sources":
                    walk(getattr(a, f.name), getattr(b, f.name), f"{prefix}{f.name}.")
        elif a != b:
            out.append(prefix[:-1])

    walk(old, new, "")
    return out


def report(applied: Iterable[str], needs_restart: Iterable[str]) -> None:
    applied, needs_restart = sorted(set(applied)), sorted(set(needs_restart))
    log.info("SIGHUP: configuration reloaded", extra={"applied": applied})
    if needs_restart:
        log.warning(
            "SIGHUP: these settings changed but take effect only after a restart",
            extra={"needs_restart": needs_restart},
        )
