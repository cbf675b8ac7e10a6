"""``signaldb-writer``: the writer service process.

Exit codes: 0 after SIGTERM/SIGINT (also when the shutdown deadline left rows
in the WAL: they are durable and the next start writes them), 2 for a bad
configuration, 1 for any other startup failure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from signaldb.config import add_flags, load
from signaldb.service.lifecycle import EXIT_FAILURE, run_main, wait_for_stop_signal
from signaldb.service.logsetup import setup_logging
from signaldb.writer import identity
from signaldb.writer.service import WriterService

log = logging.getLogger("signaldb.writer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signaldb-writer",
        description="SignalDB writer: Arrow Flight in, writer WAL, Parquet out (file:// or s3://).")
    add_flags(parser, "writer")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    cfg = load(args, "writer")
    setup_logging(cfg.log_level, "writer")  # before the WAL opens: the Rust side caches levels
    service = WriterService(cfg)
    # Listen for SIGTERM from the start: a stop during a long replay must still be clean.
    stop = asyncio.create_task(wait_for_stop_signal())
    await asyncio.sleep(0)
    start = asyncio.create_task(service.start())
    await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
    if stop.done():
        service.stopping = True
        if service.sink is not None:
            service.sink.abort_replay()
        await asyncio.gather(start, return_exceptions=True)
    elif start.exception() is not None:
        err = start.exception()
        # A bad identity file is the operator's to fix: one line naming it, no traceback.
        log.error("startup failed", extra={"error": str(err)},
                  exc_info=None if isinstance(err, identity.WriterIdError) else err)
        stop.cancel()
        await service.stop()
        return EXIT_FAILURE
    signame = await stop
    log.info("stopping", extra={"signal": signame})
    await service.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main(lambda: _serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
