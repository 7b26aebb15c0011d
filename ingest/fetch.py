"""HTTP fetching of playlists and segments: timeouts, retries with exponential backoff, typed errors.

Every failure (connection refused, DNS, timeout, HTTP 4xx/5xx) is retried: a live origin
often answers 404 or 503 for a moment while a segment or playlist is being published. After
the last retry a ``FetchError`` carries the URL, the last HTTP status and a readable reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

import httpx

from ingest.errors import FetchError

log = logging.getLogger(__name__)

# Playlists and segments are small; a body past this is not HLS (or is hostile).
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    retries: int = 3
    backoff_seconds: float = 0.5


@dataclass(frozen=True)
class Fetched:
    url: str  # final URL after redirects: relative URIs resolve against it
    status: int
    content: bytes
    content_type: str | None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class HttpFetcher:
    """GETs over one shared ``httpx.AsyncClient`` (connection pooling across sessions)."""

    def __init__(self, policy: FetchPolicy | None = None, client: httpx.AsyncClient | None = None) -> None:
        self.policy = policy or FetchPolicy()
        timeout = httpx.Timeout(self.policy.read_timeout, connect=self.policy.connect_timeout)
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=True,
            headers={"User-Agent": "livestream-analytics-ingest/0.1"},
        )

    async def get(self, url: str, *, retries: int | None = None) -> Fetched:
        attempts = 1 + (self.policy.retries if retries is None else retries)
        delay = self.policy.backoff_seconds
        last_error: FetchError | None = None
        for attempt in range(1, attempts + 1):
            try:
                return await self._get_once(url, attempt)
            except FetchError as exc:
                last_error = exc
                if not exc.retryable:
                    break
                if attempt < attempts:
                    log.debug("GET %s failed (attempt %d/%d): %s", url, attempt, attempts, exc)
                    await asyncio.sleep(delay)
                    delay *= 2
        assert last_error is not None
        raise last_error

    async def _get_once(self, url: str, attempt: int) -> Fetched:
        try:
            response = await self._client.get(url)
        except httpx.ConnectError as exc:
            raise FetchError(f"cannot connect: {_reason(exc)}", url=url, attempts=attempt) from exc
        except httpx.TimeoutException as exc:
            raise FetchError(f"timed out ({type(exc).__name__})", url=url, attempts=attempt) from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise FetchError(f"invalid URL: {exc}", url=url, attempts=attempt, retryable=False) from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"HTTP request failed: {_reason(exc)}", url=url, attempts=attempt) from exc
        if response.status_code >= 400:
            raise FetchError(
                f"HTTP {response.status_code} {response.reason_phrase}",
                url=url,
                status=response.status_code,
                attempts=attempt,
            )
        if len(response.content) > MAX_BODY_BYTES:
            raise FetchError(
                f"response larger than {MAX_BODY_BYTES} bytes", url=url, status=response.status_code
            )
        return Fetched(
            url=str(response.url),
            status=response.status_code,
            content=response.content,
            content_type=response.headers.get("content-type"),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _reason(exc: BaseException) -> str:
    """The most telling cause of a transport error: "Connection refused", a DNS failure..."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve host ({cause.strerror or cause})"
        if isinstance(cause, OSError) and cause.errno is not None and cause.errno > 0:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    text = str(exc) or type(exc).__name__
    # httpx renders OS errors like "[Errno 111] Connection refused": keep the readable part.
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text
