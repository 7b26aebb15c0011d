"""Short-lived signed feed tokens: what a browser's EventSource passes instead of an API key.

``POST /api/live/feed-token`` (authenticated by header) issues one; the SSE routes accept it
as ``?token=``. A token is ``<payload>.<signature>``, both URL-safe base64: the payload is
the JSON ``[tenant, key_id, expires_at_unix]`` and the signature its HMAC-SHA256 under a
secret that is random per process unless ``LIVESTREAM_API_FEED_TOKEN_SECRET`` sets one (needed
when several API replicas sit behind one address). A token names no key, only its tenant and
fingerprint, and stops working when it expires or its key is no longer configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from api.errors import AuthenticationFailed
from api.tenants import Caller

MAX_TOKEN_LENGTH = 512
INVALID = "invalid feed token: ask POST /api/live/feed-token for a new one"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: float  # unix seconds


class FeedTokens:
    """Issues and verifies feed tokens; ``clock`` returns unix seconds."""

    def __init__(
        self, ttl_seconds: float, secret: bytes | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._ttl = ttl_seconds
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock

    def _sign(self, payload: str) -> str:
        return _b64encode(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, caller: Caller) -> IssuedToken:
        expires_at = int(self._clock() + self._ttl)
        payload = _b64encode(json.dumps([caller.tenant, caller.key_id, expires_at]).encode())
        return IssuedToken(f"{payload}.{self._sign(payload)}", float(expires_at))

    def verify(self, token: str) -> Caller:
        """The caller a token was issued to; ``AuthenticationFailed`` when forged, garbled or expired."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationFailed(INVALID)
        payload, _, signature = token.strip().partition(".")
        # Bytes: compare_digest refuses str with non-ASCII characters.
        if not hmac.compare_digest(self._sign(payload).encode(), signature.encode()):
            raise AuthenticationFailed(INVALID)
        try:
            tenant, key_id, expires_at = json.loads(_b64decode(payload))
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as exc:
            raise AuthenticationFailed(INVALID) from exc
        if not isinstance(expires_at, int) or self._clock() >= expires_at:
            raise AuthenticationFailed("expired feed token: ask POST /api/live/feed-token for a new one")
        return Caller(str(tenant), str(key_id))
