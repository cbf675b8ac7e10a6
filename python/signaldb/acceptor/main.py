"""``signaldb-acceptor``: run the acceptor until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from signaldb.acceptor import identity
from signaldb.acceptor.service import AcceptorService
from signaldb.config import Config, ConfigError, add_flags, load
from signaldb.service.lifecycle import EXIT_FAILURE, exit_status_after_stop, run_main, wait_for_stop_signal
from signaldb.service.logsetup import setup_logging
from signaldb.service.statefiles import StartupFileError
from signaldb.wal import WalError

log = logging.getLogger("signaldb.acceptor")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="signaldb-acceptor",
        description="Receives OTLP over gRPC and HTTP, makes each request durable in a WAL before "
        "answering, and forwards it to signaldb-writer over Arrow Flight.",
        epilog="Precedence: defaults < TOML (--config / $SIGNALDB_CONFIG) < environment < flags. "
        "See docs/operations.md.",
    )
    add_flags(p, "acceptor")
    return p


async def serve(config: Config, args: argparse.Namespace | None = None) -> int:
    service = AcceptorService(config)
    try:
        await service.start()
    except Exception as err:  # one clear line (e.g. "WAL directory not writable: ..."), then exit 1
        # Errors that name the file and the fix need no traceback; anything else keeps one.
        known = isinstance(err, StartupFileError | WalError | IsADirectoryError | identity.AcceptorIdError)
        log.error("startup failed", extra={"error": str(err)}, exc_info=None if known else err)
        await service.stop()
        return EXIT_FAILURE
    except BaseException:
        await service.stop()
        raise

    async def reload() -> None:
        try:
            new = load(args, "acceptor")
        except ConfigError as err:
            log.error("SIGHUP: configuration not reloaded; the running one stays", extra={"error": str(err)})
            return
        await service.reload(new)

    stop_signal = asyncio.create_task(wait_for_stop_signal(reload))
    fatal = asyncio.create_task(service.wait_fatal())
    done, _ = await asyncio.wait({stop_signal, fatal}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if fatal in done:
        log.critical("stopping after a fatal error", extra={"error": fatal.result()})
        code = EXIT_FAILURE
    else:
        log.info("stopping", extra={"signal": stop_signal.result()})
    for task in (stop_signal, fatal):
        task.cancel()
    left = await service.stop()
    if code != 0:
        return code
    return exit_status_after_stop(
        left, "stopped with entries not forwarded; keep this volume: the next start on it forwards them"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    async def run() -> int:
        config = load(args, "acceptor")
        setup_logging(config.log_level, "acceptor", config.log_format)
        return await serve(config, args)

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
