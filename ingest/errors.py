"""Errors of the ingest service; each carries the context an operator needs (url, session_id...)."""

from __future__ import annotations

from livestream.errors import LivestreamError


class IngestError(LivestreamError):
    """Root of the ingest service's errors."""


class PlaylistError(IngestError):
    """A response that is not a usable M3U8 playlist (not M3U8, malformed tag, no variant...)."""


class FetchError(IngestError):
    """An HTTP request that failed after its retries (connection, DNS, timeout or HTTP status).

    ``status`` is the last HTTP status when the server answered, else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        attempts: int | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(message, url=url, status=status, attempts=attempts)
        self.url = url
        self.status = status
        self.retryable = retryable


class DecodeError(IngestError):
    """A segment whose bytes hold no decodable video."""


class DecodeRefusedError(DecodeError):
    """A segment ingest refuses to decode: frames too large, too many frames for its duration."""


class SessionQuarantinedError(IngestError):
    """A session whose runs crashed its ingest instance too many times; it is not resumed again."""


class SourceStalledError(IngestError):
    """A source that gave no video and then no new segment for longer than the outage tolerance
    (one that had worked simply ends, with the reason, instead)."""


class EncodeBudgetError(IngestError):
    """A chunk that cannot fit the record size budget even at the smallest JPEG setting."""


class StorageError(IngestError):
    """The local segment store could not be written."""


class BrokerOutageError(IngestError):
    """Broker errors lasted ``broker_outage_limit_s`` with no success in between: ingest stops
    (exit status 2) for its supervisor to restart it; running sessions resume from checkpoints."""
