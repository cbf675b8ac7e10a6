"""Reading what a writer committed: the Iceberg tables of the embedded SQLite catalog.

With a catalog (the default), a data file counts only once a commit references it: a
file written before a crash and never committed is an orphan (maintenance deletes it
later) and a raw glob would see its rows twice. Tests therefore read the files the
table's current snapshot lists. Without ``<root>/catalog.db`` (``SIGNALDB_CATALOG_URL=none``)
the files under the root are the data.
"""

from __future__ import annotations

import pathlib
from typing import Any

CATALOG_FILE = "catalog.db"


def catalog_of(root: pathlib.Path) -> Any | None:
    """The embedded catalog beside ``root``'s data, or None when there is none."""
    db = root / CATALOG_FILE
    if not db.exists():
        return None
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("signaldb", uri=f"sqlite:///{db}", warehouse=f"file://{root.absolute()}")


def load(root: pathlib.Path, table: str) -> Any | None:
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    catalog = catalog_of(root)
    if catalog is None:
        return None
    try:
        return catalog.load_table(("signaldb", table))
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def committed_files(root: pathlib.Path, table: str) -> list[pathlib.Path] | None:
    """The data files of ``table``'s current snapshot; None without a catalog."""
    if catalog_of(root) is None:
        return None
    loaded = load(root, table)
    if loaded is None:
        return []
    return sorted(pathlib.Path(task.file.file_path.removeprefix("file://")) for task in loaded.scan().plan_files())


def is_catalog_file(root: pathlib.Path, path: pathlib.Path) -> bool:
    """The catalog database and the tables' metadata (not data, not leftovers)."""
    rel = path.relative_to(root)
    return rel.name.startswith(CATALOG_FILE) or (len(rel.parts) > 1 and rel.parts[1] == "metadata")
