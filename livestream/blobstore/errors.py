"""Errors of the blob store; each names the key (or prefix) and the backend."""

from __future__ import annotations

from livestream.errors import LivestreamError


class BlobStoreError(LivestreamError):
    """Root of the blob store's errors: the store could not do what was asked."""


class BlobKeyError(BlobStoreError):
    """A key that is not a safe relative key (empty, absolute, '..', odd characters, or one that
    resolves outside a local store's root)."""


class BlobNotFound(BlobStoreError):
    """No blob under this key."""


class BlobRangeError(BlobStoreError):
    """A byte range that selects nothing of the blob (HTTP 416)."""


class BlobStoreUnavailable(BlobStoreError):
    """The backend failed (disk error, S3 unreachable or refusing); the operation may be retried."""
