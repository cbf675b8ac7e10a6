"""``signaldb-writer``: the writer service process.

Exit codes: 0 after SIGTERM/SIGINT (also when the shutdown deadline left rows
in the WAL: they are durable and the next start writes them), 2 for a bad
configuration, 1 for any other startup failure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from signaldb.config import ConfigError, add_flags, load
from signaldb.service import reload as reloading
from signaldb.service.lifecycle import EXIT_FAILURE, exit_status_after_stop, run_main, wait_for_stop_signal
from signaldb.service.logsetup import set_level, setup_logging
from signaldb.service.statefiles import StartupFileError
from signaldb.wal import WalError
from signaldb.writer.identity import WriterIdError
from signaldb.writer.service import WriterService
from signaldb.writer.state import StateFileError

log = logging.getLogger("signaldb.writer")

# Startup failures whose message says all there is to say (which file, what to do).
KNOWN_STARTUP_ERRORS = (
    StartupFileError,
    StateFileError,
    WriterIdError,
    WalError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signaldb-writer",
        description="SignalDB writer: Arrow Flight in, writer WAL, Parquet out (file:// or s3://).",
    )
    add_flags(parser, "writer")
    return parser


async def _serve(args: argparse.Namespace, services: list[WriterService]) -> int:
    cfg = load(args, "writer")
    setup_logging(cfg.log_level, "writer", cfg.log_format)  # before the WAL opens: the Rust side caches levels
    service = WriterService(cfg)
    services.append(service)
    # Listen for SIGTERM from the start: a stop during a long replay must still be clean.
    stop = asyncio.create_task(wait_for_stop_signal(lambda: _reload(args, service)))
    await asyncio.sleep(0)
    start = asyncio.create_task(service.start())
    await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
    if stop.done():
        service.cancel_start()
        await asyncio.gather(start, return_exceptions=True)
    elif start.exception() is not None:
        err = start.exception()
        if isinstance(err, KNOWN_STARTUP_ERRORS):  # the message names the file and the fix: no traceback
            log.error("startup failed", extra={"error": str(err)})
        else:
            log.error("startup failed", extra={"error": str(err)}, exc_info=err)
        stop.cancel()
        await service.stop()
        return EXIT_FAILURE
    signame = await stop
    log.info("stopping", extra={"signal": signame})
    # Entries left were acknowledged to acceptors, which no longer hold them.
    return exit_status_after_stop(
        await service.stop(), "stopped with entries left in the WAL; keep this volume: the next start on it writes them"
    )


async def _reload(args: argparse.Namespace, service: WriterService) -> None:
    """SIGHUP: the log level takes effect; every other change is named as needing a restart."""
    try:
        new = load(args, "writer")
    except ConfigError as err:
        log.error("SIGHUP: configuration not reloaded; the running one stays", extra={"error": str(err)})
        return
    old = service.cfg
    changed = reloading.changed_settings(old, new)
    applied = []
    if "log_level" in changed:
        set_level(new.log_level)
        applied.append("log_level")
    reloading.report(applied, [key for key in changed if key != "log_level"])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    services: list[WriterService] = []
    code = run_main(lambda: _serve(args, services))
    if any(s.flight_left_open for s in services):
        # Idle Flight streams keep gRPC's shutdown (and interpreter exit) waiting for ever; the WAL
        # is closed by now, so end the process here rather than be SIGKILLed later.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
