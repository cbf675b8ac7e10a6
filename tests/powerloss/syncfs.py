#!/usr/bin/env python3
"""SyncFS: an in-memory FUSE filesystem that forgets what was never fsynced.

Why it exists: a SIGKILL leaves the kernel's page cache intact, so a test that
only kills a process cannot tell whether that process called fsync at the right
moments. SyncFS stands where the disk would be. For every file and directory it
keeps two states:

  volatile  what processes see now (in a real kernel: the page cache);
  durable   what would be on the disk if the power failed now.

The durability model (ext4 without a journal, read strictly as POSIX allows):

  * A file's data and size become durable only through fsync or fdatasync of
    that file (through any descriptor of it). Both calls count the same: all of
    the file's current data and its size become durable.
  * A directory's entries (names created, renamed or unlinked; mkdir, rmdir)
    become durable only through an fsync of that directory (FUSE: fsyncdir).
    fsync of a file does NOT make its name durable: after a cut, a new file
    whose directory was not fsynced is gone, a rename reverts, an unlinked file
    is back. A directory whose entry is durable but that was itself never
    fsynced comes back empty. A file whose name is durable but whose data was
    never fsynced comes back empty.
  * Inode attributes (mode, owner, times) are not modelled: they keep their
    current values across a cut.

A power cut (control command "cut"):

  1. forgets every open file handle (the processes that held them are dead: the
     test SIGKILLs them first; a late operation on an old handle gets EIO);
  2. optionally tears the most recent unsynced write: a random prefix of it
     (anything from 0 bytes to all of it) lands on top of its file's durable
     data, as if the disk had got that far when the power went;
  3. rebuilds the tree from the root's durable entries: each directory gets
     back its durable entries, each file its durable data. Whatever is not
     reachable that way is gone.

Control: the file ``/.syncfs-control`` at the root (hidden from listings).
Write one command to it, then read the JSON answer from the same open file:

  ``cut [tear=0|1] [seed=N] [keep=BYTES]``  the power cut above; answers what it
                               dropped (keep: how much of the torn write survives)
  ``stats``                    counters (fsyncs, writes, cuts, ...)

The kernel must cache nothing that a cut could change, so the mount uses
direct_io (no page cache), zero entry/attribute/negative timeouts, and
hard_remove (an unlinked open file is really unlinked, not renamed to
``.fuse_hidden*``). flock() is not implemented here on purpose: the kernel then
handles flock locks itself, locally, which is what a single machine needs.
The loop is single-threaded, so operations never run concurrently.

Run: ``python syncfs.py MOUNTPOINT`` (foreground; exits when unmounted).
"""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import sys
import time

import mfusepy as fuse

CONTROL_NAME = ".syncfs-control"
CONTROL_PATH = "/" + CONTROL_NAME


def _err(code: int) -> fuse.FuseOSError:
    return fuse.FuseOSError(code)


class Node:
    """One inode: a regular file (data) or a directory (entries)."""

    _next_ino = 1

    def __init__(self, mode: int, uid: int, gid: int) -> None:
        self.ino = Node._next_ino
        Node._next_ino += 1
        self.mode, self.uid, self.gid = mode, uid, gid
        self.atime = self.mtime = self.ctime = time.time_ns()
        # Regular files: current bytes, and the bytes (and so the size) as of the last fsync.
        self.data = bytearray()
        self.durable_data = b""
        # Directories: name -> Node now, and as of the last fsync of this directory.
        self.entries: dict[str, Node] = {}
        self.durable_entries: dict[str, Node] = {}

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class SyncFS(fuse.Operations):
    """The filesystem: the tree, open handles, the durable states, the power cut."""

    use_ns = True  # times in integer nanoseconds (mfusepy)

    def __init__(self) -> None:
        self.root = Node(stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
        self.handles: dict[int, Node] = {}  # fh -> node (files and directories)
        self.append_fhs: set[int] = set()  # handles opened with O_APPEND
        self.control_out: dict[int, bytes] = {}  # fh of the control file -> answer to read
        self.next_fh = 1
        self.write_seq = 0
        # The most recent write to each file since its last fsync: ino -> (seq, node, offset, bytes).
        # A torn write is the one of these with the highest seq.
        self.unsynced_writes: dict[int, tuple[int, Node, int, bytes]] = {}
        self.counters = {
            "writes": 0,
            "bytes_written": 0,
            "fsyncs": 0,
            "fdatasyncs": 0,
            "fsyncdirs": 0,
            "cuts": 0,
            "torn_writes": 0,
        }

    # -- the mount's kernel settings ------------------------------------------

    def init_with_config(self, conn_info, config) -> None:
        if config is not None:
            config.direct_io = 1  # no page cache: every read and write reaches us
            config.hard_remove = 1  # unlink means unlink, even for an open file
            config.entry_timeout = 0.0  # re-look-up names every time (a cut changes them)
            config.attr_timeout = 0.0  # re-read sizes every time (a cut changes them)
            config.negative_timeout = 0.0
            config.ac_attr_timeout_set = 0

    # -- paths and handles ----------------------------------------------------

    def _lookup(self, path: str) -> Node:
        node = self.root
        for part in path.split("/"):
            if not part:
                continue
            if not node.is_dir:
                raise _err(errno.ENOTDIR)
            child = node.entries.get(part)
            if child is None:
                raise _err(errno.ENOENT)
            node = child
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, name = path.rstrip("/").rsplit("/", 1)
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise _err(errno.ENOTDIR)
        if name == CONTROL_NAME and parent is self.root:
            raise _err(errno.EPERM)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> Node:
        """The node of an open handle if there is one, else of the path."""
        if fh:
            node = self.handles.get(fh)
            if node is None:  # a handle from before a power cut
                raise _err(errno.EIO)
            return node
        if path is None:
            raise _err(errno.EBADF)
        return self._lookup(path)

    def _new_fh(self, node: Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node
        return fh

    def _uid_gid(self) -> tuple[int, int]:
        uid, gid, _pid = fuse.fuse_get_context()
        return uid, gid

    # -- attributes -----------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        if path == CONTROL_PATH and not fh:
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 0}
        if fh in self.control_out:
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 0}
        node = self._node(path, fh)
        size = len(node.data) if not node.is_dir else 4096
        nlink = 2 + sum(c.is_dir for c in node.entries.values()) if node.is_dir else 1
        return {
            "st_mode": node.mode,
            "st_nlink": nlink,
            "st_size": size,
            "st_uid": node.uid,
            "st_gid": node.gid,
            "st_atime": node.atime,
            "st_mtime": node.mtime,
            "st_ctime": node.ctime,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 4096,
        }

    def access(self, path: str, amode: int) -> int:
        if path != CONTROL_PATH:
            self._lookup(path)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        node = self._lookup(path)
        node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        node.ctime = time.time_ns()
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        node = self._lookup(path)
        if uid != -1 and uid != 0xFFFFFFFF:
            node.uid = uid
        if gid != -1 and gid != 0xFFFFFFFF:
            node.gid = gid
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if path == CONTROL_PATH:
            return 0
        node = self._lookup(path)
        node.atime, node.mtime = times if times else (time.time_ns(),) * 2
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        blocks = 1 << 20  # 4 GiB of 4 KiB blocks, nearly all free: the tests stay far below
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": blocks,
            "f_bfree": blocks - 1,
            "f_bavail": blocks - 1,
            "f_files": 1 << 20,
            "f_ffree": 1 << 20,
            "f_namemax": 255,
        }

    # -- directories (names change volatile entries; fsyncdir makes them durable) --

    def opendir(self, path: str) -> int:
        node = self._lookup(path)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        return self._new_fh(node)

    def releasedir(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def readdir(self, path: str | None, fh: int) -> list[str]:
        return [".", "..", *self._node(path, fh).entries]

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        node.durable_entries = dict(node.entries)  # creates, renames, unlinks in it: durable
        self.counters["fsyncdirs"] += 1
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise _err(errno.EEXIST)
        parent.entries[name] = Node(stat.S_IFDIR | stat.S_IMODE(mode), *self._uid_gid())
        return 0

    def rmdir(self, path: str) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if node.entries:
            raise _err(errno.ENOTEMPTY)
        del parent.entries[name]
        return 0

    def unlink(self, path: str) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT)
        if node.is_dir:
            raise _err(errno.EISDIR)
        del parent.entries[name]  # open handles keep the node (and its data) alive
        return 0

    def rename(self, old: str, new: str) -> int:
        old_parent, old_name = self._parent(old)
        new_parent, new_name = self._parent(new)
        node = old_parent.entries.get(old_name)
        if node is None:
            raise _err(errno.ENOENT)
        target = new_parent.entries.get(new_name)
        if target is node:
            return 0
        if target is not None:
            if target.is_dir != node.is_dir:
                raise _err(errno.EISDIR if target.is_dir else errno.ENOTDIR)
            if target.is_dir and target.entries:
                raise _err(errno.ENOTEMPTY)
        del old_parent.entries[old_name]
        new_parent.entries[new_name] = node  # replaces target atomically, as rename(2) does
        return 0

    def link(self, target: str, source: str) -> int:
        raise _err(errno.EPERM)  # no hard links: the tree stays a tree

    def symlink(self, target: str, source: str) -> int:
        raise _err(errno.EPERM)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise _err(errno.EPERM)

    # -- files (writes change volatile data; fsync makes it durable) -----------

    def create(self, path: str, mode: int, flags: int) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            node = parent.entries[name] = Node(stat.S_IFREG | stat.S_IMODE(mode), *self._uid_gid())
        elif flags & os.O_EXCL:
            raise _err(errno.EEXIST)
        return self._open_node(node, flags)

    def open(self, path: str, flags: int) -> int:
        if path == CONTROL_PATH:
            fh = self.next_fh
            self.next_fh += 1
            self.control_out[fh] = b""
            return fh
        node = self._lookup(path)
        if node.is_dir:
            raise _err(errno.EISDIR)
        return self._open_node(node, flags)

    def _open_node(self, node: Node, flags: int) -> int:
        fh = self._new_fh(node)
        if flags & os.O_APPEND:
            self.append_fhs.add(fh)
        return fh

    def release(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        self.append_fhs.discard(fh)
        self.control_out.pop(fh, None)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close() is not a sync

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        if fh in self.control_out:
            return self.control_out[fh][offset : offset + size]
        node = self._node(path, fh)
        return bytes(node.data[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        if fh in self.control_out:
            self.control_out[fh] = self._control(data.decode())
            return len(data)
        node = self._node(path, fh)
        if fh in self.append_fhs:
            offset = len(node.data)  # O_APPEND: the end of the file as we know it
        self._write_at(node, offset, data)
        self.write_seq += 1
        self.unsynced_writes[node.ino] = (self.write_seq, node, offset, bytes(data))
        self.counters["writes"] += 1
        self.counters["bytes_written"] += len(data)
        return len(data)

    @staticmethod
    def _write_at(node: Node, offset: int, data: bytes) -> None:
        if offset > len(node.data):
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset : offset + len(data)] = data
        node.mtime = time.time_ns()

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if fh in self.control_out or (path == CONTROL_PATH and not fh):
            return 0
        node = self._node(path, fh)
        if node.is_dir:
            raise _err(errno.EISDIR)
        if length < len(node.data):
            del node.data[length:]
        else:
            node.data.extend(bytes(length - len(node.data)))
        node.mtime = time.time_ns()
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode != 0:  # only plain allocation (zero-fill up to offset+size), no punching holes
            raise _err(errno.EOPNOTSUPP)
        node = self._node(path, fh)
        if offset + size > len(node.data):
            node.data.extend(bytes(offset + size - len(node.data)))
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        node.durable_data = bytes(node.data)  # data and size, as of now
        self.unsynced_writes.pop(node.ino, None)
        self.counters["fdatasyncs" if datasync else "fsyncs"] += 1
        return 0

    # -- the power cut --------------------------------------------------------

    def power_cut(self, tear: bool, seed: int, keep: int | None = None) -> dict[str, object]:
        """Forgets everything not durable (see the module doc); returns what it dropped.

        `keep` fixes how many bytes of the torn write survive (for scripted
        tests); by default a random number from 0 to all of them.
        """
        rng = random.Random(seed)
        report: dict[str, object] = {"torn": None}
        if tear and self.unsynced_writes:
            _seq, node, offset, data = max(self.unsynced_writes.values(), key=lambda w: w[0])
            keep = rng.randint(0, len(data)) if keep is None else max(0, min(keep, len(data)))
            durable = bytearray(node.durable_data)
            if offset + keep > len(durable):
                durable.extend(bytes(offset + keep - len(durable)))
            durable[offset : offset + keep] = data[:keep]
            node.durable_data = bytes(durable)
            self.counters["torn_writes"] += 1
            report["torn"] = {"ino": node.ino, "offset": offset, "length": len(data), "kept": keep}
        files_reverted = names_reverted = 0
        stack = [self.root]
        while stack:  # walk the durable tree (a tree: there are no hard links)
            node = stack.pop()
            if node.is_dir:
                names_reverted += len(node.entries.keys() ^ node.durable_entries.keys()) + sum(
                    node.entries[n] is not c for n, c in node.durable_entries.items() if n in node.entries
                )
                node.entries = dict(node.durable_entries)
                stack.extend(node.entries.values())
            else:
                if node.data != node.durable_data:
                    files_reverted += 1
                    node.data = bytearray(node.durable_data)
        self.handles.clear()
        self.append_fhs.clear()
        self.unsynced_writes.clear()
        self.counters["cuts"] += 1
        report.update(files_reverted=files_reverted, names_reverted=names_reverted)
        return report

    def _control(self, command: str) -> bytes:
        words = command.split()
        try:
            if words and words[0] == "cut":
                opts = dict(w.split("=", 1) for w in words[1:])
                keep = int(opts["keep"]) if "keep" in opts else None
                result = self.power_cut(opts.get("tear", "0") == "1", int(opts.get("seed", "0")), keep)
            elif words == ["stats"]:
                result = dict(self.counters, open_handles=len(self.handles))
            else:
                result = {"error": f"unknown command {command!r}"}
        except Exception as e:  # answer, never take the filesystem down
            result = {"error": repr(e)}
        return (json.dumps(result) + "\n").encode()


def _die_with_parent() -> None:
    """Unmount (SIGTERM makes libfuse leave its loop) if the test process dies."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: syncfs.py MOUNTPOINT", file=sys.stderr)
        return 2
    _die_with_parent()
    fuse.FUSE(SyncFS(), argv[1], foreground=True, nothreads=True, fsname="syncfs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
