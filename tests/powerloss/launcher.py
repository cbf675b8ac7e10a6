"""Starts and stops a SyncFS mount (syncfs.py) in a subprocess and drives its power cuts.

    with SyncFsMount(tmp_path / "mnt") as fs:
        ...processes write under fs.path...
        kill them (SIGKILL), then
        fs.power_cut(tear=True, seed=7)   # drops everything not fsynced

The filesystem runs in its own process (a single-threaded libfuse loop) so
that the test process can do blocking I/O on the mount without deadlocking
itself, and so that a crash of the filesystem cannot take pytest down.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

SYNCFS_PY = pathlib.Path(__file__).resolve().with_name("syncfs.py")
CONTROL_NAME = ".syncfs-control"


class FuseUnavailable(RuntimeError):
    """This machine cannot mount SyncFS; the message says what is missing and how to fix it."""


def fuse_problems() -> list[str]:
    """What is missing for a FUSE mount here (empty when all is in place)."""
    problems = []
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse does not exist (the kernel's FUSE device; a container needs --device /dev/fuse)")
    if shutil.which("fusermount3") is None:
        problems.append("fusermount3 is not on PATH (Debian package fuse3: apt-get install -y fuse3)")
    if ctypes.util.find_library("fuse3") is None:
        problems.append("libfuse3 is not installed (Debian package fuse3, which brings libfuse3-3)")
    if importlib.util.find_spec("mfusepy") is None:
        problems.append(f"the Python package mfusepy is not installed in {sys.prefix} (pip install mfusepy)")
    return problems


def require_fuse() -> None:
    problems = fuse_problems()
    if problems:
        raise FuseUnavailable("cannot run the power-loss harness: " + "; ".join(problems))


def eatmydata_library() -> str | None:
    """Path of Debian's libeatmydata.so (package eatmydata), or None."""
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        for name in ("libeatmydata.so", "libeatmydata.so.1"):
            p = os.path.join(d, name)
            if os.path.exists(p):
                return p
    return None


class SyncFsMount:
    """A SyncFS mounted at `mountpoint` for as long as the object is open."""

    def __init__(self, mountpoint: os.PathLike[str] | str, log_path: os.PathLike[str] | str | None = None) -> None:
        self.path = pathlib.Path(mountpoint).resolve()
        self.log_path = pathlib.Path(log_path) if log_path else self.path.with_name(self.path.name + ".syncfs.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> SyncFsMount:
        require_fuse()
        self.path.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.path):
            raise RuntimeError(f"{self.path} is already a mount point")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- open while mounted, closed in unmount
        self.proc = subprocess.Popen(
            [sys.executable, str(SYNCFS_PY), str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None:
                raise FuseUnavailable(
                    f"SyncFS exited with status {self.proc.returncode} before mounting {self.path}:\n" + self.log_text()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise FuseUnavailable(f"SyncFS did not mount {self.path} within {timeout}s:\n" + self.log_text())
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Unmounts and waits for the filesystem process; lazily if something still holds files."""
        if self.proc is None:
            return
        if os.path.ismount(self.path):
            r = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> SyncFsMount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- control --------------------------------------------------------------

    def control(self, command: str) -> dict[str, object]:
        """Sends one command to the filesystem through its control file; returns the answer."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("SyncFS is not running:\n" + self.log_text())
        with open(self.path / CONTROL_NAME, "r+b", buffering=0) as f:
            f.write(command.encode())
            f.seek(0)
            answer = json.loads(f.read(1 << 16))
        if "error" in answer:
            raise RuntimeError(f"SyncFS control {command!r}: {answer['error']}")
        return answer

    def power_cut(self, tear: bool = True, seed: int = 0, keep: int | None = None) -> dict[str, object]:
        """Drops every unsynced write and directory entry; with `tear`, keeps a random
        prefix of the most recent unsynced write (`keep` bytes of it, if given).
        Kill the writers first."""
        return self.control(f"cut tear={int(tear)} seed={seed}" + ("" if keep is None else f" keep={keep}"))

    def stats(self) -> dict[str, object]:
        return self.control("stats")
