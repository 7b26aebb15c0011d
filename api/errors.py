"""Errors of the HTTP API service."""

from __future__ import annotations

from livestream.errors import LivestreamError
from schemas.interpretation import Interpretation


class ApiError(LivestreamError):
    """Root of the API service's errors."""


class AuthenticationFailed(ApiError):
    """No API key, or one that is not configured (HTTP 401)."""


class NotSessionOwner(ApiError):
    """The caller's key did not start the session it tries to end (HTTP 403)."""


class SessionNotFound(ApiError):
    """No session with that id, or it belongs to another stream (HTTP 404)."""


class ServiceNotReady(ApiError):
    """Kafka clients not started yet, or the session view has not caught up (HTTP 503)."""


class CommandPublishError(ApiError):
    """The broker did not acknowledge a session command in time (HTTP 503)."""


class BrokerOutageError(ApiError):
    """Broker errors outlasted ``broker_outage_limit_s``: the API process stops (exit status 2)."""


class QueryRefused(ApiError):
    """A query the models cannot honestly answer (HTTP 422, with its interpretation)."""

    def __init__(self, message: str, interpretation: Interpretation) -> None:
        super().__init__(message)
        self.interpretation = interpretation


class InvalidCursor(ApiError):
    """A paging cursor the API did not issue or cannot read (HTTP 422)."""


class StoreError(ApiError):
    """The embedded SQLite store failed; the session view cannot be trusted (HTTP 503)."""


class LimitExceeded(ApiError):
    """A per-key or per-tenant limit was reached (HTTP 429); ``retry_after`` in seconds."""

    def __init__(self, message: str, *, retry_after: int, **context: object) -> None:
        super().__init__(message, **context)
        self.retry_after = retry_after


class RateLimited(LimitExceeded):
    """The key sent more requests than its token bucket allows."""


class TooManyFeeds(LimitExceeded):
    """The key has as many SSE feeds open as it may."""


class TooManySessions(LimitExceeded):
    """The key or its tenant has as many sessions running as it may."""


class PlaybackDenied(ApiError):
    """A playback URL whose signature does not verify: tampered, foreign or expired (HTTP 403)."""


class SignatureInvalid(PlaybackDenied):
    """The signature does not match the session, path and expiry it came with."""


class SignatureExpired(PlaybackDenied):
    """The signature was valid, but its expiry has passed."""


class RecordingNotFound(ApiError):
    """The session has no recorded segment yet, or the requested part of it does not exist (HTTP 404)."""


class RangeNotSatisfiable(ApiError):
    """A ``Range`` header that selects no byte of the resource (HTTP 416); ``size`` in bytes."""

    def __init__(self, message: str, *, size: int, **context: object) -> None:
        super().__init__(message, size=size, **context)
        self.size = size
