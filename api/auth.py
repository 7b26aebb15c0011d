"""API-key authentication: pure key checks plus the FastAPI dependency that applies them.

A key is accepted from ``Authorization: Bearer <key>``, ``X-API-Key: <key>`` (the
``nomadic`` SDK sends both) or, for browsers whose EventSource cannot set headers, the
``api_key`` query parameter. Keys are never stored in records or logs: sessions carry
the key's short fingerprint instead.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from api.errors import AuthenticationFailed

API_KEY_QUERY_PARAM = "api_key"


def key_fingerprint(api_key: str) -> str:
    """Short, stable, non-reversible name of a key (``key-`` + 12 hex digits of its SHA-256)."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeyAuthenticator:
    """Checks presented credentials against the configured keys in constant time."""

    def __init__(self, api_keys: Iterable[str]) -> None:
        self._keys = tuple(key.encode() for key in api_keys if key)

    def _is_known(self, candidate: str) -> bool:
        presented = candidate.encode()
        # Compare against every key (no early exit) so timing says nothing about which matched.
        matches = [hmac.compare_digest(presented, key) for key in self._keys]
        return any(matches)

    def authenticate(
        self,
        *,
        authorization: str | None = None,
        x_api_key: str | None = None,
        query_api_key: str | None = None,
    ) -> str:
        """The fingerprint of the first presented credential that is a configured key.

        Raises ``AuthenticationFailed`` when no credential is presented or none matches.
        """
        candidates = [c for c in (bearer_token(authorization), x_api_key, query_api_key) if c]
        if not candidates:
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        for candidate in candidates:
            if self._is_known(candidate.strip()):
                return key_fingerprint(candidate.strip())
        raise AuthenticationFailed("invalid API key")
