"""Signed playback URLs: HMAC-SHA256 over a session, a path in its recording and an expiry.

A playback URL (``/playback/<session_id>/<path>?expires=<unix seconds>&sig=<signature>``) is its
own credential: HLS players cannot send an API key, and whoever holds the URL may watch that one
recording until it expires, nothing else. The signature is

    base64url(HMAC-SHA256(secret, "v1\\n<session_id>\\n<path>\\n<expires>"))  (no padding)

``path`` is the name inside the session's recording (``index.m3u8``, ``seg000012.ts``), not the
URL's full path, so a reverse proxy that mounts the API under a prefix does not break
signatures. The fields are joined with newlines, which none of them may contain, so two
different triples never sign the same message. Comparison is constant-time
(``hmac.compare_digest``).

Rotation: the signer holds the current secret and, optionally, the previous one together with
the instant until which signatures made with it are still accepted (an absolute instant rather
than a grace period counted from start-up, so that restarting a replica or starting a new one
never extends it). New URLs are always signed with the current secret.

Pure logic: no I/O; the clock is injectable for tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from api.errors import SignatureExpired, SignatureInvalid

__all__ = ["EXPIRES_PARAM", "SIGNATURE_PARAM", "PlaybackSigner", "SignedPath"]

EXPIRES_PARAM = "expires"
SIGNATURE_PARAM = "sig"
_VERSION = "v1"
# An HMAC-SHA256 digest in unpadded base64url: 43 characters. Longer input is refused before
# any decoding work.
_SIGNATURE_LENGTH = 43
_MAX_EXPIRES_DIGITS = 12  # year 33658: far enough, and bounds int() on untrusted input

Clock = Callable[[], float]


@dataclass(frozen=True)
class SignedPath:
    """A path signed until ``expires`` (unix seconds), with its signature."""

    session_id: str
    path: str
    expires: int
    signature: str

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, UTC)

    def query(self) -> str:
        """The query string that carries the signature (the signature is URL-safe as is)."""
        return f"{EXPIRES_PARAM}={self.expires}&{SIGNATURE_PARAM}={self.signature}"


def _message(session_id: str, path: str, expires: int) -> bytes:
    for name, value in (("session_id", session_id), ("path", path)):
        if not value or "\n" in value:
            raise ValueError(f"{name} must be non-empty and on one line")
    return f"{_VERSION}\n{session_id}\n{path}\n{expires}".encode()


def _digest(secret: bytes, message: bytes) -> str:
    mac = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class PlaybackSigner:
    """Signs and verifies playback paths (see the module docstring).

    ``ttl_s``: lifetime of a new signature. ``previous_secret`` is accepted until
    ``previous_valid_until`` (unix seconds; ``None``: not at all).
    """

    secret: bytes = field(repr=False)
    ttl_s: float = 3600.0
    previous_secret: bytes | None = field(default=None, repr=False)
    previous_valid_until: float | None = None
    clock: Clock = time.time

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ValueError("the playback secret must have at least 16 bytes")
        if self.ttl_s <= 0:
            raise ValueError("ttl_s must be positive")

    def expiry(self) -> int:
        """The expiry of a signature made now: whole seconds, rounded up."""
        return math.ceil(self.clock() + self.ttl_s)

    def sign(self, session_id: str, path: str, expires: int | None = None) -> SignedPath:
        """Sign ``path`` of the session's recording until ``expires`` (default: now + ttl)."""
        until = self.expiry() if expires is None else expires
        return SignedPath(session_id, path, until, _digest(self.secret, _message(session_id, path, until)))

    def verify(self, session_id: str, path: str, expires: str | int | None, signature: str | None) -> int:
        """Check a presented signature; return its expiry.

        ``SignatureInvalid`` when anything is missing, malformed or does not match (with either
        accepted secret), ``SignatureExpired`` when it matches but its expiry has passed. The
        signature is checked before the expiry, so an expired answer tells only a holder of a
        once-valid URL that it expired.
        """
        if expires is None or signature is None:
            raise SignatureInvalid("this playback URL is not signed: get one from the signed-manifest route")
        until = _parse_expires(expires)
        if until is None or len(signature) != _SIGNATURE_LENGTH:
            raise SignatureInvalid("malformed playback signature")
        try:
            message = _message(session_id, path, until)
        except ValueError:
            raise SignatureInvalid("malformed playback URL") from None
        matched = hmac.compare_digest(_digest(self.secret, message), signature)
        if not matched and self.previous_secret is not None and self.previous_valid_until is not None:
            # Compared even when the grace ended, so timing does not tell which secret matched.
            previous_matched = hmac.compare_digest(_digest(self.previous_secret, message), signature)
            matched = previous_matched and self.clock() < self.previous_valid_until
        if not matched:
            raise SignatureInvalid("invalid playback signature")
        if self.clock() >= until:
            raise SignatureExpired(
                "this playback URL has expired: get a new one from the signed-manifest route",
                expired_at=datetime.fromtimestamp(until, UTC).isoformat(),
            )
        return until


def _parse_expires(value: str | int) -> int | None:
    if isinstance(value, int):
        return value if value >= 0 else None
    if not value.isascii() or not value.isdigit() or len(value) > _MAX_EXPIRES_DIGITS:
        return None
    return int(value)
