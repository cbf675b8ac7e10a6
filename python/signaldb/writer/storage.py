"""Where Parquet files go: ``file://PATH`` or ``s3://BUCKET/PREFIX``.

Both stores offer one operation, ``put(path, data)``, that is durable and
all-or-nothing when it returns, and never leaves a partial object under a
``.parquet`` name:

- local: write ``.<name>.tmp`` in the target directory (a fixed name: a crash's
  leftover is removed and written anew by the retry), fsync, then *create* the
  final name with ``link()`` (fails if the name exists: never an overwrite),
  remove the temp name and fsync the directory; new directories are fsynced
  into their parents too. A final object that exists already is fine when it
  holds what this put would write (a replay after a crash: the same bytes, or
  the same rows); any other content raises ``ObjectConflict`` and nothing is
  written. The filesystem must support hard links (ext4, xfs, NFS do);
- S3: one PUT of the whole object (no multipart, FIELD-NOTES: pyarrow's S3
  stream completes uploads on error), conditional (``If-None-Match: *``, obstore's
  ``mode="create"``): an existing object answers 412 and is read back and
  compared as above (same content: a replay; other: ``ObjectConflict``).
  SeaweedFS (4.48, the tests' server) and AWS S3 honour it; a server that
  ignores the header overwrites, one that rejects it fails every put (logged
  and retried, nothing lost). Endpoint and credentials come from the
  standard ``AWS_*`` variables, ``AWS_ENDPOINT_URL`` included.

``put_with_retry`` retries any failure with capped exponential backoff for as
long as the caller's ``give_up()`` says no: the data is in the WAL, so the
writer waits for the store rather than dropping anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from signaldb.service.durable import fsync_dir, write_file_synced
from signaldb.writer import crashpoints
from signaldb.writer.metrics import WriterMetrics

log = logging.getLogger(__name__)

_BACKOFF_START = 0.1
_BACKOFF_MAX = 5.0


class StoreAborted(Exception):
    """A put was abandoned (shutdown deadline); its data stays in the WAL."""


class ObjectConflict(Exception):
    """The object exists with other content than this put's: it was not overwritten."""

    def __init__(self, url: str, path: str) -> None:
        super().__init__(f"object exists with other content: {url}/{path}")
        self.url = url
        self.path = path


def same_content(existing: bytes, data: bytes) -> bool:
    """True when an existing object holds what ``data`` would: the same bytes, or (a file
    built again, e.g. by another library version) a Parquet file with the same schema and rows."""
    if existing == data:
        return True
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        same: bool = pq.read_table(pa.BufferReader(existing)).equals(pq.read_table(pa.BufferReader(data)))
        return same
    except Exception:  # not Parquet, or unreadable: other content
        return False


@dataclass(frozen=True)
class StoredObject:
    """One object found by ``list``: its path relative to the store, age and size."""

    path: str
    modified: float  # seconds since the epoch (file mtime, or S3 Last-Modified)
    size: int


class ObjectStore(Protocol):
    url: str

    def put(self, path: str, data: bytes) -> None: ...

    def list(self, prefix: str) -> Iterator[StoredObject]: ...

    def delete(self, path: str) -> None: ...

    def remove_empty_dir(self, path: str) -> bool: ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self._mkdirs(self.root)

    def _mkdirs(self, directory: Path) -> None:
        """Creates missing directories, fsyncing each into its parent."""
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir()
            fsync_dir(d.parent)

    def put(self, path: str, data: bytes) -> None:
        """Creates ``path`` durably, never replacing an existing object (see the module doc)."""
        target = self.root / path
        self._mkdirs(target.parent)
        temp = target.with_name(f".{target.name}.tmp")
        # A leftover temp may be a second name of the final object (a crash between link and
        # unlink): remove it, never truncate it.
        _unlink_missing_ok(temp)
        write_file_synced(temp, data, 0o644, exclusive=True)
        crashpoints.reached("before_rename")
        try:
            os.link(temp, target)  # create-exclusive: EEXIST if the name is taken
        except FileExistsError:
            _unlink_missing_ok(temp)
            if not same_content(target.read_bytes(), data):
                raise ObjectConflict(self.url, path) from None
            fsync_dir(target.parent)  # the temp name's removal; the object itself is durable already
            return
        _unlink_missing_ok(temp)
        fsync_dir(target.parent)

    # Listing and deleting are for table maintenance (orphan cleanup) only.

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every regular file under ``prefix`` (a directory path relative to the root), recursively."""
        base = self.root / prefix
        for directory, _dirs, names in os.walk(base):
            for name in names:
                full = Path(directory) / name
                try:
                    st = full.lstat()
                except FileNotFoundError:
                    continue  # removed meanwhile
                if stat.S_ISREG(st.st_mode):
                    yield StoredObject(str(full.relative_to(self.root)), st.st_mtime, st.st_size)

    def delete(self, path: str) -> None:
        """Removes ``path`` durably (the directory entry's removal is fsynced); gone already is fine."""
        target = self.root / path
        _unlink_missing_ok(target)
        fsync_dir(target.parent)

    def remove_empty_dir(self, path: str) -> bool:
        """Removes the directory ``path`` if it is empty; False if it is not (or is gone)."""
        target = self.root / path
        try:
            target.rmdir()
        except OSError:
            return False
        fsync_dir(target.parent)
        return True


def _unlink_missing_ok(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class S3Store:
    def __init__(self, url: str) -> None:
        from obstore.store import S3Store as _S3

        self.url = url
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        # Short client timeouts and few internal retries: put_with_retry owns the patience.
        self._store = _S3.from_url(
            url.rstrip("/"),
            client_options={
                "allow_http": endpoint.startswith("http://"),
                "timeout": timedelta(seconds=60),
                "connect_timeout": timedelta(seconds=5),
            },
            retry_config={
                "max_retries": 1,
                "retry_timeout": timedelta(seconds=30),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=1),
                    "base": 2,
                },
            },
        )

    def put(self, path: str, data: bytes) -> None:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self._store, path, data, use_multipart=False, mode="create")
        except (AlreadyExistsError, PreconditionError):
            existing = bytes(obstore.get(self._store, path).bytes())
            if not same_content(existing, data):
                raise ObjectConflict(self.url, path) from None

    def list(self, prefix: str) -> Iterator[StoredObject]:
        import obstore

        for chunk in obstore.list(self._store, prefix.rstrip("/") + "/", chunk_size=1000):
            for meta in chunk:
                yield StoredObject(meta["path"], meta["last_modified"].timestamp(), int(meta["size"]))

    def delete(self, path: str) -> None:
        import obstore

        obstore.delete(self._store, path)  # a missing object is not an error on S3

    def remove_empty_dir(self, path: str) -> bool:
        return False  # S3 has no directories


def open_store(url: str) -> ObjectStore:
    if url.startswith("file://"):
        return LocalStore(Path(url[len("file://") :]))
    if url.startswith("s3://"):
        return S3Store(url)
    raise ValueError(f"unsupported storage URL {url!r}")


def put_with_retry(
    store: ObjectStore, path: str, data: bytes, metrics: WriterMetrics, give_up: Callable[[], bool]
) -> None:
    delay = _BACKOFF_START
    failures = 0
    while True:
        started = time.monotonic()
        try:
            store.put(path, data)
        except ObjectConflict:
            raise  # not transient: retrying at once would never succeed (the caller backs off)
        except Exception as err:  # any store error: retry, the WAL still holds the rows
            failures += 1
            metrics.put_errors.inc()
            if failures == 1 or failures % 10 == 0:
                log.warning(
                    "object store put failed; retrying",
                    extra={"path": path, "store": store.url, "failures": failures, "error": str(err)},
                )
            if _sleep_unless(give_up, delay):
                raise StoreAborted(f"gave up writing {path} after {failures} failures: {err}") from err
            delay = min(delay * 2, _BACKOFF_MAX)
            continue
        metrics.put_duration.observe(time.monotonic() - started)
        if failures:
            log.info("object store put succeeded after retries", extra={"path": path, "failures": failures})
        return


def _sleep_unless(give_up: Callable[[], bool], seconds: float) -> bool:
    """Sleeps in short steps; True as soon as ``give_up()`` does (shutdown must not wait 5 s)."""
    end = time.monotonic() + seconds
    while True:
        if give_up():
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 0.05))
