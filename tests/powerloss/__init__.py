"""Power-loss test harness: SyncFS, a FUSE filesystem that drops what was not fsynced.

syncfs.py is the filesystem (run as its own process); launcher.py mounts it,
cuts its power and unmounts it. See syncfs.py for the durability model.
"""

from powerloss.launcher import FuseUnavailable, SyncFsMount, eatmydata_library, fuse_problems, require_fuse

__all__ = ["FuseUnavailable", "SyncFsMount", "eatmydata_library", "fuse_problems", "require_fuse"]
