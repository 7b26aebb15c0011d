"""A real S3-compatible server for tests: moto's standalone server, run as a subprocess.

``moto_s3_server()`` starts ``python -m moto.server`` on 127.0.0.1 and a free port (package
``moto[server]``, in the ``dev`` extra), waits until it answers, creates a bucket and yields its
address; the process is killed afterwards. It speaks the S3 REST API over HTTP, so the code under
test runs exactly as against MinIO or AWS (boto3, signatures, ranges, paging).

boto3 needs credentials even for a local server: ``dummy_aws_credentials()`` sets fake ones for
the duration of a test and shuts off every other source of AWS configuration (config files,
profiles, the instance metadata service), so a test never reaches beyond loopback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
from botocore.client import BaseClient
from botocore.config import Config

from livestream.blobstore.errors import BlobStoreError
from livestream.blobstore.s3 import S3BlobStore

HOST = "127.0.0.1"
REGION = "us-east-1"
DUMMY_AWS_ENV: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_CLEARED_AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class S3TestServerError(BlobStoreError):
    """The test S3 server did not start or answer."""


@dataclass(frozen=True)
class S3TestServer:
    """A running test server and the bucket made on it."""

    endpoint_url: str
    bucket: str

    def store(self, prefix: str | None = None) -> S3BlobStore:
        """A store on the bucket under a fresh prefix (tests sharing a server do not meet)."""
        chosen = f"t{uuid.uuid4().hex[:12]}/" if prefix is None else prefix
        return S3BlobStore(
            self.bucket, chosen, endpoint_url=self.endpoint_url, region=REGION, path_style=True
        )

    def object_names(self, prefix: str = "") -> list[str]:
        """Every object name of the bucket under ``prefix``, sorted (to check what a test left)."""
        client = _client(self.endpoint_url)
        names: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            names.extend(item["Key"] for item in page.get("Contents", ()))
        return sorted(names)


@contextlib.contextmanager
def dummy_aws_credentials() -> Iterator[None]:
    """Fake AWS credentials and no other AWS configuration, restored afterwards."""
    saved = {name: os.environ.get(name) for name in (*DUMMY_AWS_ENV, *_CLEARED_AWS_ENV)}
    try:
        for name in _CLEARED_AWS_ENV:
            os.environ.pop(name, None)
        os.environ.update(DUMMY_AWS_ENV)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def moto_s3_server(
    bucket: str = "livestream-test", startup_timeout_s: float = 60.0
) -> Iterator[S3TestServer]:
    """Run moto's S3 server on loopback with ``bucket`` created (use inside
    ``dummy_aws_credentials``)."""
    port = _free_port()
    endpoint = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="moto-s3-") as directory:
        log_path = Path(directory) / "moto.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **DUMMY_AWS_ENV},
            )
            try:
                _wait_until_answering(endpoint, process, log_path, startup_timeout_s)
                _client(endpoint).create_bucket(Bucket=bucket)
                yield S3TestServer(endpoint, bucket)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


def _client(endpoint_url: str) -> BaseClient:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _wait_until_answering(
    endpoint: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise S3TestServerError(
                f"moto server exited with {process.returncode}: {_tail(log)}", endpoint_url=endpoint
            )
        try:
            if httpx.get(endpoint, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise S3TestServerError(
        f"moto server did not answer within {timeout_s:.0f}s: {_tail(log)}", endpoint_url=endpoint
    )


def _tail(log: Path, size: int = 2000) -> str:
    try:
        return log.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"
