"""Process lifecycle: run a service until SIGTERM/SIGINT, then stop it in bounded time; SIGHUP reloads."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from signaldb.config import ConfigError
from signaldb.service.memory import keep_large_buffers

if TYPE_CHECKING:
    from signaldb.wal import Wal

log = logging.getLogger(__name__)

EXIT_CONFIG = 2  # bad configuration: do not restart in a loop
EXIT_FAILURE = 1
# Stopped in order, but the WAL still holds entries this service acknowledged and has not passed
# on: its volume must be kept (the next start on it replays them), never deleted or replaced.
EXIT_UNDRAINED = 3


def entries_left_at_stop(wal: Wal) -> int:
    """Entries ``wal`` still holds unprocessed as the service stops; a WAL that cannot say (it
    failed) counts as holding one: its volume must be kept."""
    try:
        return wal.stats().unprocessed_entries
    except Exception as err:
        log.error("WAL state unknown at shutdown; keep its volume", extra={"error": str(err)})
        return 1


def exit_status_after_stop(entries_left: int, keep_volume_message: str) -> int:
    """0 only when the WAL is drained: an operator (or a script scaling a service down) may
    delete its volume only then. Otherwise EXIT_UNDRAINED, with ``keep_volume_message`` logged:
    those entries were acknowledged upstream, and the next start on this volume passes them on."""
    if entries_left == 0:
        return 0
    log.warning(keep_volume_message, extra={"unprocessed_entries": entries_left, "exit_status": EXIT_UNDRAINED})
    return EXIT_UNDRAINED


async def wait_for_stop_signal(on_reload: Callable[[], Awaitable[None]] | None = None) -> str:
    """Returns the name of the first SIGTERM or SIGINT received.

    SIGHUP (whose default action would end the process without a word) runs ``on_reload``
    (reread the configuration, apply what can change while running); without one it is
    logged and ignored. Reloads run one at a time; a SIGHUP during one runs another after."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[str] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    reloads: asyncio.Queue[None] = asyncio.Queue()
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)

    async def reload_loop() -> None:
        while True:
            await reloads.get()
            while not reloads.empty():  # several SIGHUPs at once: one reload
                reloads.get_nowait()
            if on_reload is None:
                log.info("SIGHUP: nothing to reload")
                continue
            try:
                await on_reload()
            except Exception:  # a failed reload keeps the running configuration
                log.exception("SIGHUP: reload failed; the running configuration is unchanged")

    reloader = asyncio.create_task(reload_loop())
    try:
        return await received
    finally:
        reloader.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # while stopping: not the default (exit)


def run_main(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Runs ``main`` and maps startup errors to exit codes with one clear line."""
    keep_large_buffers()  # before the first big buffer: see signaldb.service.memory
    # Until the service is up and handles it, a SIGHUP must not end the process (its default).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return asyncio.run(main())
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
