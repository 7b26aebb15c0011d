"""A small storage interface for recordings (segments, manifests, thumbnails).

Ingest writes recordings and the API serves them; with the local backend both must run on one
machine, with the S3 backend they share a bucket. Everything above this package speaks only
``BlobStore``, so the backend is a setting (``BlobStoreSettings``, ``open_blob_store``).

The methods are synchronous (files and boto3 both block): async callers use
``asyncio.to_thread``.

Keys are relative, ``/``-separated paths of safe characters (``validate_key``): a key comes from
a URL the API serves, so it is checked before any backend turns it into a file path or object
name, and no key can name something outside the store.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from livestream.blobstore.errors import (
    BlobKeyError,
    BlobNotFound,
    BlobRangeError,
    BlobStoreError,
    BlobStoreUnavailable,
)

if TYPE_CHECKING:
    from livestream.blobstore.settings import BlobStoreSettings

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "Blob",
    "BlobInfo",
    "BlobKeyError",
    "BlobNotFound",
    "BlobRangeError",
    "BlobStore",
    "BlobStoreError",
    "BlobStoreUnavailable",
    "ByteRange",
    "content_type_for",
    "open_blob_store",
    "resolve_range",
    "validate_key",
    "validate_prefix",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Content types players expect for what recordings hold; other suffixes get the default.
CONTENT_TYPES: dict[str, str] = {
    ".ts": "video/mp2t",
    ".m2ts": "video/mp2t",
    ".m4s": "video/mp4",
    ".mp4": "video/mp4",
    ".aac": "audio/aac",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
}

MAX_KEY_LENGTH = 1024  # S3's limit on object names (bytes; our keys are ASCII)
_KEY_CHARACTERS = re.compile(r"^[A-Za-z0-9._/-]+$")

# Inclusive (start, end) like an HTTP Range header; end None: to the end of the blob.
ByteRange = tuple[int, int | None]


@dataclass(frozen=True)
class Blob:
    """A blob's bytes (all of them, or the requested range) and what a response needs to say.

    ``total_size`` is the size of the whole blob, so a range answer can build its
    ``Content-Range``; ``start`` is the offset of ``data`` within it.
    """

    data: bytes
    total_size: int
    content_type: str
    start: int = 0

    @property
    def end(self) -> int:
        """Inclusive offset of the last byte of ``data`` (``start - 1`` when empty)."""
        return self.start + len(self.data) - 1


@dataclass(frozen=True)
class BlobInfo:
    """What ``stat`` knows about a blob without reading it."""

    size: int
    content_type: str
    modified: datetime  # timezone-aware (UTC)


@runtime_checkable
class BlobStore(Protocol):
    """Where recordings are kept. Every method blocks; all raise ``BlobStoreError`` subclasses."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` whole (a reader sees the old or the new blob, never a mix)."""
        ...

    def get(self, key: str, byte_range: ByteRange | None = None) -> Blob:
        """The blob (or the inclusive ``byte_range`` of it); ``BlobNotFound`` if missing,
        ``BlobRangeError`` if the range starts past its end."""
        ...

    def stat(self, key: str) -> BlobInfo | None:
        """Size, content type and modification time; None if there is no such blob."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; a missing one is fine (deletions are retried after crashes)."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob whose key starts with ``prefix`` (a recording); return how many."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix``, in no promised order."""
        ...


def validate_key(key: str, *, backend: str | None = None) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``BlobKeyError``.

    Refused: empty keys, absolute ones, empty segments and segments starting with ``.`` (``..``
    and hidden names), backslashes, control
    characters and anything outside ``[A-Za-z0-9._/-]``. A key that passes cannot name a file
    outside a local store's root, whatever the platform (symlinks are checked by the backend).
    """
    if not isinstance(key, str) or not key:
        raise BlobKeyError("empty blob key", key=key, backend=backend)
    if len(key) > MAX_KEY_LENGTH:
        raise BlobKeyError(f"blob key longer than {MAX_KEY_LENGTH} characters", key=key[:80], backend=backend)
    if not _KEY_CHARACTERS.match(key):
        # Covers backslashes, control characters, spaces, '%', ':' and every non-ASCII character.
        raise BlobKeyError("blob key has characters outside [A-Za-z0-9._/-]", key=repr(key), backend=backend)
    if key.startswith("/"):
        raise BlobKeyError("blob key is absolute", key=key, backend=backend)
    if any(part == "" or part.startswith(".") for part in key.split("/")):
        # '.', '..' and hidden names: the local backend keeps its temporary files and metadata
        # in hidden names, which no key may address.
        raise BlobKeyError("blob key has an empty or '.'-prefixed segment", key=key, backend=backend)
    return key


def validate_prefix(prefix: str, *, backend: str | None = None) -> str:
    """A prefix for ``list``/``delete_prefix``: empty (everything), or a key, optionally ending
    with ``/`` (a "directory")."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix, backend=backend)
    return prefix


def content_type_for(key: str) -> str:
    """The content type a key's suffix implies (``DEFAULT_CONTENT_TYPE`` if unknown)."""
    name = key.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:].lower(), DEFAULT_CONTENT_TYPE) if dot > 0 else DEFAULT_CONTENT_TYPE


def resolve_range(byte_range: ByteRange | None, size: int, *, key: str, backend: str) -> tuple[int, int]:
    """Inclusive (start, end) offsets ``byte_range`` selects in a blob of ``size`` bytes.

    Like HTTP: an end past the blob is clipped; a start at or past the end (or a reversed or
    negative range) is unsatisfiable (``BlobRangeError``). No range: the whole blob (an empty
    blob gives (0, -1)).
    """
    if byte_range is None:
        return 0, size - 1
    start, end = byte_range
    if start < 0 or (end is not None and end < start) or start >= size:
        raise BlobRangeError(
            "unsatisfiable byte range", key=key, backend=backend, start=start, end=end, size=size
        )
    last = size - 1 if end is None else min(end, size - 1)
    return start, last


def open_blob_store(settings: BlobStoreSettings) -> BlobStore:
    """The store ``settings`` configure (imports boto3 only for the S3 backend)."""
    if settings.backend == "s3":
        from livestream.blobstore.s3 import S3BlobStore

        if not settings.s3_bucket:  # the settings validator refuses this already
            raise BlobStoreError("the s3 backend needs a bucket", backend="s3")
        return S3BlobStore(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            path_style=settings.s3_path_style,
        )
    from livestream.blobstore.local import LocalBlobStore

    return LocalBlobStore(settings.local_dir)
