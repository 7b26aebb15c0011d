"""The blob store as an S3-compatible bucket (AWS S3, MinIO, Ceph, ...), through boto3.

Ingest and the API can then run on different machines and share recordings. A key ``k`` is the
object ``<prefix>k`` of the bucket; the prefix lets several stacks share one bucket.

Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, instance roles), never from our settings, so they are not printed with them.
``endpoint_url`` points it at a server other than AWS; such servers usually need path-style
addressing (``endpoint/bucket/key``), and some reject the CRC checksums recent boto3 sends by
default, so checksums are only sent where an operation requires them.

What each call costs: one request per ``put``/``get``/``stat``/``delete``, one per 1000 keys for
``list``, two per 1000 keys for ``delete_prefix`` (list, then one DeleteObjects).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from livestream.blobstore import (
    DEFAULT_CONTENT_TYPE,
    Blob,
    BlobInfo,
    ByteRange,
    resolve_range,
    validate_key,
    validate_prefix,
)
from livestream.blobstore.errors import (
    BlobNotFound,
    BlobRangeError,
    BlobStoreError,
    BlobStoreUnavailable,
)

BACKEND = "s3"
DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_RANGE_CODES = {"416", "InvalidRange"}


class S3BlobStore:
    """Blobs as objects of ``bucket`` under ``prefix`` (empty, or ending with '/')."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        client: BaseClient | None = None,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            raise BlobStoreError("an S3 key prefix must end with '/'", prefix=prefix, backend=BACKEND)
        if prefix:
            validate_prefix(prefix, backend=BACKEND)
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        config = Config(
            s3={"addressing_style": "path" if path_style else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of its own: boto3's default session is shared module state; clients are
        # thread-safe, so one serves every worker thread.
        self._client: BaseClient = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint_url!r})"

    # ------------------------------------------------------------------ BlobStore

    def put(self, key: str, data: bytes, content_type: str) -> None:
        name = self._name(key)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=name, Body=data, ContentType=content_type or DEFAULT_CONTENT_TYPE
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._error("write", key, exc) from exc

    def get(self, key: str, byte_range: ByteRange | None = None) -> Blob:
        name = self._name(key)
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if byte_range is not None:
            start, end = byte_range
            # S3 ignores a malformed Range header and answers the whole object: refuse it here.
            if start < 0 or (end is not None and end < start):
                raise BlobRangeError(
                    "unsatisfiable byte range", key=key, backend=BACKEND, start=start, end=end
                )
            arguments["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            response = self._client.get_object(**arguments)
            with contextlib.closing(response["Body"]) as body:
                data = body.read()
        except (BotoCoreError, ClientError) as exc:
            raise self._error("read", key, exc, byte_range=byte_range) from exc
        content_type = response.get("ContentType") or DEFAULT_CONTENT_TYPE
        match = _CONTENT_RANGE.match(response.get("ContentRange") or "")
        if match:
            start, total = int(match.group(1)), int(match.group(3))
        else:
            # Whole object; an empty one with a range is refused like the local backend does.
            start, total = 0, len(data)
            if byte_range is not None:
                start, end = resolve_range(byte_range, total, key=key, backend=BACKEND)
                data = data[start : end + 1]
        return Blob(data=data, total_size=total, content_type=content_type, start=start)

    def stat(self, key: str) -> BlobInfo | None:
        name = self._name(key)
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES:
                return None
            raise self._error("stat", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("stat", key, exc) from exc
        return BlobInfo(
            size=int(response["ContentLength"]),
            content_type=response.get("ContentType") or DEFAULT_CONTENT_TYPE,
            modified=response["LastModified"].astimezone(UTC),
        )

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=name)  # a missing object is no error
        except (BotoCoreError, ClientError) as exc:
            raise self._error("delete", key, exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        batch: list[str] = []
        for name in self._names(prefix):
            batch.append(name)
            if len(batch) == DELETE_BATCH:
                deleted += self._delete_batch(batch, prefix)
                batch = []
        if batch:
            deleted += self._delete_batch(batch, prefix)
        return deleted

    def list(self, prefix: str) -> Iterator[str]:
        for name in self._names(prefix):
            yield name[len(self.prefix) :]

    # ------------------------------------------------------------------ helpers

    def _name(self, key: str) -> str:
        return self.prefix + validate_key(key, backend=BACKEND)

    def _names(self, prefix: str) -> Iterator[str]:
        """Object names under ``prefix``, page by page (1000 per ListObjectsV2 request)."""
        validate_prefix(prefix, backend=BACKEND)
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", ()):
                    yield item["Key"]
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list", prefix, exc) from exc

    def _delete_batch(self, names: list[str], prefix: str) -> int:
        try:
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": name} for name in names], "Quiet": True}
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._error("delete", prefix, exc) from exc
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise BlobStoreUnavailable(
                f"cannot delete {len(errors)} of {len(names)} blobs: {first.get('Code')}: "
                f"{first.get('Message')}",
                key=first.get("Key"),
                backend=BACKEND,
                bucket=self.bucket,
            )
        return len(names)

    def _error(
        self, action: str, key: str, exc: BotoCoreError | ClientError, byte_range: ByteRange | None = None
    ) -> BlobStoreError:
        code = _code(exc) if isinstance(exc, ClientError) else None
        if code in _NOT_FOUND_CODES and action in ("read", "stat"):
            return BlobNotFound("no such blob", key=key, backend=BACKEND, bucket=self.bucket)
        if code in _RANGE_CODES:
            start, end = byte_range if byte_range is not None else (None, None)
            return BlobRangeError(
                "unsatisfiable byte range", key=key, backend=BACKEND, bucket=self.bucket, start=start, end=end
            )
        return BlobStoreUnavailable(
            f"cannot {action} blob: {exc}", key=key, backend=BACKEND, bucket=self.bucket, code=code
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
