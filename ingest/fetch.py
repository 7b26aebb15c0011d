"""HTTP fetching of playlists and segments: egress policy, limits, retries, typed errors.

Every request obeys the egress policy (``livestream.egress``) at connect time: the host is
resolved once, every address is checked, and the connection goes to a checked address (the TLS
handshake still verifies the certificate for the URL's host name), so a DNS answer that changes
after the check (rebinding) is never connected to. Redirects are followed here, not by httpx,
so every hop is checked the same way, up to ``max_redirects`` hops.

Limits hold while the body arrives: a playlist or segment larger than its cap stops the
download at the cap (raw bytes, no transparent decompression: only ``identity`` is accepted),
and one fetch (redirects and body) has a total deadline, so a server that trickles bytes is
cut off even though each read is quick. Each fetcher has its own bounded connection pool;
``for_session`` gives a session a pool of its own, so one slow source cannot hold the
connections another session needs.

Transient failures (connection refused, DNS, timeouts, HTTP 4xx/5xx) are retried: a live
origin often answers 404 or 503 for a moment while a segment or playlist is being published.
What retrying cannot fix (refused by the policy, too large, compressed, too many redirects,
an invalid URL) fails at once. A ``FetchError`` says what was wrong (status, size, content
encoding) and never includes response body bytes; URLs in it are redacted (``redact_url``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Literal

import httpcore
import httpx

from ingest.errors import FetchError
from ingest.settings import IngestSettings
from livestream.egress import (
    EgressError,
    EgressPolicy,
    IPAddress,
    Resolver,
    parse_source_url,
    resolve_checked,
    system_resolver,
)
from livestream.redact import redact_url

log = logging.getLogger(__name__)

MIB = 1024**2
FetchKind = Literal["playlist", "segment"]
PLAYLIST_SUFFIXES = (".m3u8", ".m3u")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "livestream-analytics-ingest/0.1"


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    retries: int = 3
    backoff_seconds: float = 0.5
    max_redirects: int = 5
    playlist_max_bytes: int = 8 * MIB
    segment_max_bytes: int = 64 * MIB
    playlist_deadline: float = 20.0
    segment_deadline: float = 60.0
    # The pool of a fetcher shared by all sessions, and of each ``for_session`` fetcher.
    max_connections: int = 100
    max_connections_per_session: int = 4
    # None: built from the environment (IngestSettings), so a fetcher never runs without a policy.
    egress: EgressPolicy | None = field(default=None)

    @classmethod
    def of(cls, settings: IngestSettings) -> FetchPolicy:
        return cls(
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            retries=settings.http_retries,
            backoff_seconds=settings.http_backoff_seconds,
            max_redirects=settings.http_max_redirects,
            playlist_max_bytes=settings.http_playlist_max_bytes,
            segment_max_bytes=settings.http_segment_max_bytes,
            playlist_deadline=settings.http_playlist_deadline_seconds,
            segment_deadline=settings.http_segment_deadline_seconds,
            max_connections_per_session=settings.http_max_connections_per_session,
            egress=EgressPolicy.from_settings(settings),
        )

    def egress_policy(self) -> EgressPolicy:
        return self.egress if self.egress is not None else EgressPolicy.from_settings(IngestSettings())

    def limits_of(self, kind: FetchKind) -> tuple[int, float]:
        """(max body bytes, total deadline in seconds) of one fetch of this kind."""
        if kind == "playlist":
            return self.playlist_max_bytes, self.playlist_deadline
        return self.segment_max_bytes, self.segment_deadline


@dataclass(frozen=True)
class Fetched:
    url: str  # final URL after redirects: relative URIs resolve against it
    status: int
    content: bytes
    content_type: str | None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------- connect-time policy


class PinnedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host once through the egress policy and connects to the checked addresses.

    httpcore hands TLS the URL's host name separately (``server_hostname``), so connecting to an
    IP here keeps SNI and certificate verification on the original name.
    """

    def __init__(self, egress: EgressPolicy, resolver: Resolver) -> None:
        self._egress = egress
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def _resolve(self, host: str, port: int, limit: float | None) -> list[IPAddress]:
        try:
            async with asyncio.timeout(limit):
                return await resolve_checked(host, port, self._egress, self._resolver)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from exc
        except OSError as exc:  # socket.gaierror and friends; _reason() renders the cause
            raise httpcore.ConnectError(f"cannot resolve {host!r}") from exc

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        last_error: Exception | None = None
        for address in addresses:  # every one of them passed the policy
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # resolve_checked never returns an empty list
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not sources")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool whose connections go through the policy.

    httpx does not take a network backend, so the pool it builds is replaced by an equivalent
    one that has ours; the rest (request/response mapping, error mapping) is httpx's own.
    """

    def __init__(
        self,
        egress: EgressPolicy,
        resolver: Resolver,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedNetworkBackend(egress, resolver),
        )


# ---------------------------------------------------------------------------- the fetcher


class HttpFetcher:
    """GETs through one pooled ``httpx.AsyncClient`` whose every connection obeys the egress policy."""

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        resolver: Resolver = system_resolver,
        max_connections: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context``: the certificates trusted (None: httpx's default, certifi's CAs)."""
        policy = policy or FetchPolicy()
        egress = policy.egress_policy()
        self.policy = replace(policy, egress=egress)
        self._resolver = resolver
        self._ssl_context = ssl_context
        connections = max_connections or self.policy.max_connections
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        # The pool timeout bounds the wait for a free connection of this (bounded) pool.
        timeout = httpx.Timeout(
            self.policy.read_timeout, connect=self.policy.connect_timeout, pool=self.policy.read_timeout
        )
        self._client = httpx.AsyncClient(
            transport=PinnedTransport(egress, resolver, limits, ssl_context),
            timeout=timeout,
            follow_redirects=False,  # each hop is re-checked in _fetch
            trust_env=False,  # a proxy from the environment would bypass the connect-time policy
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    def for_session(self) -> HttpFetcher:
        """A fetcher with the same policy and a pool of its own (``max_connections_per_session``);
        the caller closes it when the session ends."""
        return HttpFetcher(
            self.policy,
            resolver=self._resolver,
            max_connections=self.policy.max_connections_per_session,
            ssl_context=self._ssl_context,
        )

    async def get(self, url: str, *, retries: int | None = None, kind: FetchKind | None = None) -> Fetched:
        """GET ``url`` within the limits of ``kind`` (None: "playlist" for a ``.m3u8``/``.m3u`` path,
        else "segment"); retried with backoff; ``FetchError`` once it cannot succeed."""
        kind = kind or _kind_of(url)
        attempts = 1 + (self.policy.retries if retries is None else retries)
        delay = self.policy.backoff_seconds
        last_error: FetchError | None = None
        for attempt in range(1, attempts + 1):
            try:
                return await self._get_once(url, kind, attempt)
            except FetchError as exc:
                last_error = exc
                if not exc.retryable:
                    break
                if attempt < attempts:
                    log.debug("GET %s failed (attempt %d/%d): %s", redact_url(url), attempt, attempts, exc)
                    await asyncio.sleep(delay)
                    delay *= 2
        assert last_error is not None
        raise last_error

    async def _get_once(self, url: str, kind: FetchKind, attempt: int) -> Fetched:
        max_bytes, deadline = self.policy.limits_of(kind)
        try:
            async with asyncio.timeout(deadline):
                return await self._fetch(url, kind, max_bytes, attempt)
        except TimeoutError as exc:
            raise FetchError(
                f"no complete {kind} within {deadline:g}s (total deadline of one fetch)",
                url=redact_url(url),
                attempts=attempt,
            ) from exc

    async def _fetch(self, url: str, kind: FetchKind, max_bytes: int, attempt: int) -> Fetched:
        current = url
        for _hop in range(self.policy.max_redirects + 1):
            with _mapped_errors(current, attempt):
                target = parse_source_url(current)
                async with self._client.stream("GET", target) as response:
                    if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                        current = str(response.url.join(response.headers["location"]))
                        continue  # the next hop is parsed and checked like the first one
                    _check_response(response, kind, max_bytes, current, attempt)
                    content = await _read_capped(response.aiter_raw(), kind, max_bytes, current, attempt)
                    return Fetched(
                        url=str(response.url),
                        status=response.status_code,
                        content=content,
                        content_type=_header_text(response.headers.get("content-type")),
                    )
        raise FetchError(
            f"more than {self.policy.max_redirects} redirects",
            url=redact_url(url),
            attempts=attempt,
            retryable=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _kind_of(url: str) -> FetchKind:
    try:
        path = httpx.URL(url).path.lower()
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return "segment"
    return "playlist" if path.endswith(PLAYLIST_SUFFIXES) else "segment"


def _check_response(
    response: httpx.Response, kind: FetchKind, max_bytes: int, url: str, attempt: int
) -> None:
    """Status, content encoding and announced length, before any body byte is read."""
    status = response.status_code
    if not 200 <= status < 300:
        # The standard phrase, not the server's: nothing the server wrote ends up in a reason.
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "unknown status"
        redirect = " without a Location" if status in REDIRECT_STATUSES else ""
        raise FetchError(
            f"HTTP {status} {phrase}{redirect}", url=redact_url(url), status=status, attempts=attempt
        )
    encoding = (response.headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise FetchError(
            f"{kind} response is compressed (Content-Encoding: {_header_text(encoding)}) although only "
            "identity was accepted; compressed bodies are refused",
            url=redact_url(url),
            status=status,
            attempts=attempt,
            retryable=False,
        )
    length = response.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise FetchError(
            f"{kind} too large: Content-Length {int(length)} bytes, limit {max_bytes}",
            url=redact_url(url),
            status=status,
            attempts=attempt,
            retryable=False,
        )


async def _read_capped(
    chunks: AsyncIterator[bytes], kind: FetchKind, max_bytes: int, url: str, attempt: int
) -> bytes:
    """The raw body, stopped as soon as it passes ``max_bytes`` (memory stays bounded)."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(
                f"{kind} too large: more than {max_bytes} bytes (download stopped)",
                url=redact_url(url),
                attempts=attempt,
                retryable=False,
            )
    return bytes(body)


@contextmanager
def _mapped_errors(url: str, attempt: int) -> Iterator[None]:
    """Transport and policy errors as ``FetchError``; messages never carry response bytes."""
    shown = redact_url(url)
    try:
        yield
    except EgressError as exc:
        raise FetchError(exc.message, url=shown, attempts=attempt, retryable=False) from exc
    except httpx.ConnectError as exc:
        raise FetchError(f"cannot connect: {_reason(exc)}", url=shown, attempts=attempt) from exc
    except httpx.TimeoutException as exc:
        raise FetchError(f"timed out ({type(exc).__name__})", url=shown, attempts=attempt) from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise FetchError("invalid URL", url=shown, attempts=attempt, retryable=False) from exc
    except httpx.ProtocolError as exc:
        # h11's messages can quote the bytes it choked on: say only what kind of failure it was.
        raise FetchError(
            "the server's response is not valid or complete HTTP", url=shown, attempts=attempt
        ) from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"HTTP request failed: {_reason(exc)}", url=shown, attempts=attempt) from exc


def _header_text(value: str | None, limit: int = 100) -> str | None:
    """A response header as it may appear in a reason: printable ASCII, bounded."""
    if value is None:
        return None
    cleaned = "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in value)
    return cleaned[:limit]


def _reason(exc: BaseException) -> str:
    """The most telling cause of a transport error: "Connection refused", a DNS failure..."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve host ({cause.strerror or cause})"
        # Before OSError: SSL errors are OSErrors whose errno is OpenSSL's, not the system's.
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS failed (certificate: {cause.verify_message or 'not verified'})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or type(cause).__name__})"
        if isinstance(cause, OSError) and cause.errno is not None and cause.errno > 0:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__
