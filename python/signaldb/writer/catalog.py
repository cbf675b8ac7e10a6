"""The Iceberg side of storage: which catalog, which tables, which column types.

With a catalog (``storage.catalog_url``, default a SQLite file beside ``file://``
data), every signal table is an Apache Iceberg table ``signaldb.<table>`` whose
location is ``<storage>/<table>``. The writer still writes the Parquet files
itself (create-only, named after its identity, zstd, statistics, a bloom filter
on ``trace_id``: pyiceberg's own writer has no bloom filters) and then *adds*
them to the table in one commit (``committer``); a file no commit references is
invisible to readers of the table.

Column types differ from the plain-file layout in two ways, because Iceberg
format version 2 (the newest pyiceberg 0.12 writes) has neither nanosecond
timestamps nor unsigned integers:

- ``timestamp[ns, UTC]`` columns are stored as ``timestamp[us, UTC]`` (the
  nanoseconds below a microsecond are dropped; ``duration_ns`` stays exact);
- ``uint32``/``uint64`` columns (``count``, ``bucket_counts``, flags...) are
  stored as ``int64``; a count of 2^63 or more cannot be stored (the file build
  fails and the entry goes to dead-letter like any unbuildable row).

Logs are partitioned by the hour of ``time``; a record without ``time`` (0)
gets its ``observed_time`` there (the plain-file layout places it in that hour
too), so the partition value and the rows agree.

Secrets: a PostgreSQL password in the URL is never logged (``CatalogConfig.redacted``);
a REST catalog's bearer token comes from ``SIGNALDB_CATALOG_TOKEN``, S3 credentials
from the standard ``AWS_*`` variables.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc

from signaldb.config import CatalogConfig
from signaldb.writer.tables import TABLES, reference_schema, time_column

log = logging.getLogger(__name__)

# add_files reads each file's footer statistics and warns once per column without any; our files
# leave them out on purpose for ids and nested columns (parquet.py), so that would be a warning
# per column per file, forever. Errors still show.
logging.getLogger("pyiceberg.io.pyarrow").setLevel(logging.ERROR)

NAMESPACE = "signaldb"
TOKEN_ENV = "SIGNALDB_CATALOG_TOKEN"

# SignalDB decides what to do on a conflicting commit (``committer``): pyiceberg's own retry
# would rebuild the snapshot on top of the other writer's without checking its claims again.
TABLE_PROPERTIES = {
    "commit.retry.num-retries": "0",
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    # Every commit writes a new metadata file: keep the last 100, delete older ones at commit.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "100",
}


# -- column types --------------------------------------------------------------


def _storage_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", t.tz)
    if pa.types.is_unsigned_integer(t):
        return pa.int64()
    if pa.types.is_map(t):
        return pa.map_(_storage_field(t.key_field), _storage_field(t.item_field))
    if pa.types.is_list(t):
        return pa.list_(_storage_field(t.value_field))
    if pa.types.is_large_list(t):
        return pa.large_list(_storage_field(t.value_field))
    if pa.types.is_struct(t):
        return pa.struct([_storage_field(f) for f in t])
    return t


def _storage_field(f: pa.Field) -> pa.Field:
    return pa.field(f.name, _storage_type(f.type), f.nullable, f.metadata)


@functools.cache
def storage_schema(table: str) -> pa.Schema:
    """The table's columns as Iceberg stores them (see the module doc)."""
    return pa.schema([_storage_field(f) for f in reference_schema(table)])


def to_storage(table: str, data: pa.Table) -> pa.Table:
    """``data`` (the converter's types) cast to ``storage_schema``. Raises on a uint64 that
    does not fit int64 (the build fails: see the module doc)."""
    if table == "logs":
        time = data.column("time")
        filled = pc.if_else(pc.equal(time.cast(pa.int64()), 0), data.column("observed_time"), time)
        data = data.set_column(data.schema.get_field_index("time"), data.schema.field("time"), filled)
    # Timestamps are truncated to microseconds (an unchecked cast); unsigned values are
    # checked first, since the same unchecked cast would wrap a uint64 over 2^63 around.
    for column in data.columns:
        _check_unsigned(column)
    return data.cast(storage_schema(table), safe=False)


def _check_unsigned(column: pa.ChunkedArray) -> None:
    limit = (1 << 63) - 1

    def walk(arr: pa.Array) -> None:
        t = arr.type
        if pa.types.is_uint64(t):
            top = pc.max(arr).as_py()
            if top is not None and top > limit:
                raise pa.ArrowInvalid(f"unsigned value {top} does not fit the table's int64 column")
        elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
            walk(arr.flatten() if not pa.types.is_map(t) else arr.items)
        elif pa.types.is_struct(t):
            for i in range(t.num_fields):
                walk(arr.field(i))

    for chunk in column.chunks:
        walk(chunk)


# -- the catalog ---------------------------------------------------------------


def _sql_uri(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _rest_properties(url: str) -> dict[str, Any]:
    """``http(s)://host:port/path?key=value&...``: the query holds pyiceberg REST
    properties that are not secrets (``warehouse``, ``rest.sigv4-enabled``,
    ``rest.signing-name``, ...); the token comes from ``SIGNALDB_CATALOG_TOKEN``."""
    parts = urlsplit(url)
    props: dict[str, Any] = dict(parse_qsl(parts.query))
    props["uri"] = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    token = os.environ.get(TOKEN_ENV)
    if token:
        props["token"] = token
    else:
        props.setdefault("auth", {"type": "noop"})  # pyiceberg would send "Bearer None"
    return props


def _s3_properties() -> dict[str, str]:
    """pyiceberg's FileIO settings from the standard AWS variables (for s3:// data)."""
    env = os.environ
    props = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    for key, value in (
        ("s3.endpoint", endpoint),
        ("s3.access-key-id", env.get("AWS_ACCESS_KEY_ID")),
        ("s3.secret-access-key", env.get("AWS_SECRET_ACCESS_KEY")),
        ("s3.session-token", env.get("AWS_SESSION_TOKEN")),
        ("s3.region", env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")),
    ):
        if value:
            props[key] = value
    return props


def storage_root_uri(storage_url: str) -> str:
    """The storage URL as pyiceberg's FileIO spells it (absolute ``file://`` paths)."""
    if storage_url.startswith("file://"):
        return f"file://{Path(storage_url[len('file://') :]).absolute()}"
    return storage_url.rstrip("/")


def open_catalog(cfg: CatalogConfig, storage_url: str) -> Any:
    """A pyiceberg catalog for ``cfg.url`` (not ``none``)."""
    url = cfg.url
    warehouse = storage_root_uri(storage_url)
    if url.startswith("sqlite:///"):
        from pyiceberg.catalog.sql import SqlCatalog

        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return SqlCatalog("signaldb", uri=url, warehouse=warehouse, **_s3_properties())
    if url.startswith(("postgresql://", "postgresql+psycopg2://")):
        from pyiceberg.catalog.sql import SqlCatalog

        return SqlCatalog("signaldb", uri=_sql_uri(url), warehouse=warehouse, **_s3_properties())
    if url.startswith(("http://", "https://")):
        from pyiceberg.catalog.rest import RestCatalog

        return RestCatalog("signaldb", **{"warehouse": warehouse, **_s3_properties(), **_rest_properties(url)})
    raise ValueError(f"unsupported catalog URL {cfg.redacted!r}")


def _create(catalog: Any, table: str, storage_url: str) -> Any:
    """Creates ``signaldb.<table>``: hour partitioning on the time column, sort order
    (service_name, time), commit retries left to SignalDB."""
    from pyiceberg.catalog import Catalog
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import assign_fresh_schema_ids
    from pyiceberg.table.sorting import SortField, SortOrder
    from pyiceberg.transforms import HourTransform, IdentityTransform

    schema = assign_fresh_schema_ids(Catalog._convert_schema_if_needed(storage_schema(table)))
    column = time_column(table)
    spec = PartitionSpec(
        PartitionField(
            source_id=schema.find_field(column).field_id,
            field_id=1000,
            transform=HourTransform(),
            name=f"{column}_hour",
        )
    )
    order = SortOrder(
        SortField(source_id=schema.find_field("service_name").field_id, transform=IdentityTransform()),
        SortField(source_id=schema.find_field(column).field_id, transform=IdentityTransform()),
    )
    location = f"{storage_root_uri(storage_url)}/{table}"
    kwargs: dict[str, Any] = {"partition_spec": spec, "sort_order": order, "properties": TABLE_PROPERTIES}
    if not storage_url.startswith("s3://") or not isinstance(catalog, _rest_type()):
        kwargs["location"] = location  # a REST server may place tables itself (S3 table buckets do)
    return catalog.create_table((NAMESPACE, table), schema, **kwargs)


def _rest_type() -> type:
    from pyiceberg.catalog.rest import RestCatalog

    return RestCatalog


class Tables:
    """The catalog and its tables, created on first use (by whichever writer comes first)."""

    def __init__(self, cfg: CatalogConfig, storage_url: str) -> None:
        self.cfg = cfg
        self.storage_url = storage_url
        self._catalog: Any = None
        self._lock = threading.Lock()
        self._namespace_ready = False

    @property
    def catalog(self) -> Any:
        """Opened on first use (connecting may fail while the catalog is down: callers retry)."""
        with self._lock:
            if self._catalog is None:
                self._catalog = open_catalog(self.cfg, self.storage_url)
            return self._catalog

    def load(self, table: str) -> Any:
        """``signaldb.<table>``, fresh from the catalog (created if missing)."""
        from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError

        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        catalog = self.catalog
        if not self._namespace_ready:
            with contextlib.suppress(NamespaceAlreadyExistsError):
                catalog.create_namespace(NAMESPACE)
            self._namespace_ready = True
        try:
            return self.catalog.load_table((NAMESPACE, table))
        except NoSuchTableError:
            pass
        try:
            created = _create(self.catalog, table, self.storage_url)
            log.info("Iceberg table created", extra={"table": f"{NAMESPACE}.{table}", "location": created.location()})
            return created
        except TableAlreadyExistsError:  # another writer was first
            return self.catalog.load_table((NAMESPACE, table))

    def existing(self) -> list[str]:
        """The signal tables that exist in the catalog now."""
        from pyiceberg.exceptions import NoSuchNamespaceError

        try:
            names = {ident[-1] for ident in self.catalog.list_tables(NAMESPACE)}
        except NoSuchNamespaceError:
            return []
        return [t for t in TABLES if t in names]

    @property
    def places_tables(self) -> bool:
        """True for a REST catalog: it chooses table locations (SQL ones take ours)."""
        return self.cfg.url.startswith(("http://", "https://"))

    def data_dir(self, table: Any) -> str:
        """``<location>/data`` relative to storage, for a table a REST catalog placed."""
        root, location = storage_root_uri(self.storage_url), table.location().rstrip("/")
        if not location.startswith(root + "/"):
            raise ValueError(
                f"table {table.name()} is at {location}, outside storage.url {root}: "
                f"set storage.url to the catalog's warehouse (its table locations start with it)"
            )
        return f"{location[len(root) + 1 :]}/data"

    def data_file_uri(self, path: str) -> str:
        """The URI a data file written at ``path`` (relative to storage) has in the table."""
        return f"{storage_root_uri(self.storage_url)}/{path}"
