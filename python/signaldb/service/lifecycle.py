"""Process lifecycle: run a service until SIGTERM/SIGINT, then stop it in bounded time."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from signaldb.config import ConfigError
from signaldb.service.memory import keep_large_buffers

log = logging.getLogger(__name__)

EXIT_CONFIG = 2  # bad configuration: do not restart in a loop
EXIT_FAILURE = 1


async def wait_for_stop_signal() -> str:
    """Returns the name of the first SIGTERM or SIGINT received."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[str] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await received
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_main(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Runs ``main`` and maps startup errors to exit codes with one clear line."""
    keep_large_buffers()  # before the first big buffer: see signaldb.service.memory
    try:
        return asyncio.run(main())
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
