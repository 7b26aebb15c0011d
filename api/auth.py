"""Authentication: which tenant and key a request comes from.

Every ``/api`` route takes the key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
(the ``nomadic`` SDK sends both). Query-string credentials end up in logs and browser history,
so they are refused everywhere except on the SSE routes, where a browser's ``EventSource``
cannot send headers: those accept ``?token=`` (a short-lived feed token, see ``api.tokens``)
and, unless ``LIVESTREAM_API_SSE_QUERY_API_KEY=false``, ``?api_key=``.

Keys are never stored in records or logs: sessions carry the key's fingerprint and tenant.
"""

from __future__ import annotations

from api.errors import AuthenticationFailed
from api.tenants import Caller, KeyRing, key_fingerprint
from api.tokens import FeedTokens

API_KEY_QUERY_PARAM = "api_key"
TOKEN_QUERY_PARAM = "token"
CREDENTIAL_QUERY_PARAMS = (API_KEY_QUERY_PARAM, TOKEN_QUERY_PARAM)

__all__ = ["API_KEY_QUERY_PARAM", "TOKEN_QUERY_PARAM", "Authenticator", "bearer_token", "key_fingerprint"]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Checks presented credentials against the key ring and the feed-token signer."""

    def __init__(self, keys: KeyRing, tokens: FeedTokens, *, sse_query_api_key: bool = True) -> None:
        self.keys = keys
        self.tokens = tokens
        self._sse_query_api_key = sse_query_api_key

    def _identify(self, candidates: list[str]) -> Caller:
        if not candidates:
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        for candidate in candidates:
            caller = self.keys.identify(candidate)
            if caller is not None:
                return caller
        raise AuthenticationFailed("invalid API key")

    def from_headers(self, *, authorization: str | None = None, x_api_key: str | None = None) -> Caller:
        """The caller of the first presented header key that is configured; else ``AuthenticationFailed``."""
        candidates = [c.strip() for c in (bearer_token(authorization), x_api_key) if c and c.strip()]
        return self._identify(candidates)

    def for_feed(
        self,
        *,
        authorization: str | None = None,
        x_api_key: str | None = None,
        query_api_key: str | None = None,
        token: str | None = None,
    ) -> Caller:
        """The caller of an SSE request: header keys, then ``?token=``, then ``?api_key=`` (if allowed)."""
        if authorization or x_api_key:
            return self.from_headers(authorization=authorization, x_api_key=x_api_key)
        if token:
            caller = self.tokens.verify(token)
            if not self.keys.is_current(caller):
                raise AuthenticationFailed("feed token of a key that is no longer configured")
            return caller
        if query_api_key:
            if not self._sse_query_api_key:
                raise AuthenticationFailed(
                    "?api_key= is disabled on this server: get a feed token from POST /api/live/feed-token "
                    "and pass it as ?token="
                )
            return self._identify([query_api_key.strip()])
        return self._identify([])
