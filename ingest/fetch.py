"""HTTP fetching of playlists and segments: egress policy, limits, retries, typed errors.

Every request obeys the egress policy (``livestream.egress``) at connect time: the host is
resolved once, every address is checked, and the connection goes to a checked address (the TLS
handshake still verifies the certificate for the URL's host name), so a DNS answer that changes
after the check (rebinding) is never connected to. Redirects are followed here, not by the
HTTP client (aiohttp), so every hop is checked the same way, up to ``max_redirects`` hops.

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
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Literal

import aiohttp
import aiohttp.abc
import certifi
import httpx
import yarl
from aiohttp.helpers import is_ip_address

from ingest.errors import FetchError
from ingest.settings import IngestSettings
from livestream.egress import (
    EgressError,
    EgressPolicy,
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


class PinnedResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver for host names: the egress policy's checked addresses, nothing else.

    The connector connects to what this returns and hands TLS the URL's host name separately
    (``server_hostname``), so certificate verification stays on the original name. aiohttp does
    not ask a resolver about IP literals: ``HttpFetcher`` checks those itself before each request.
    """

    def __init__(self, egress: EgressPolicy, resolver: Resolver, timeout: float) -> None:
        self._egress = egress
        self._resolver = resolver
        self._timeout = timeout

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        try:
            async with asyncio.timeout(self._timeout):
                addresses = await resolve_checked(host, port, self._egress, self._resolver)
        except TimeoutError as exc:
            # Not a TimeoutError: that would read as the fetch's total deadline.
            raise _ResolveTimeoutError(f"resolving {host!r} timed out") from exc
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses  # every one of them passed the policy
        ]

    async def close(self) -> None:
        pass


class _ResolveTimeoutError(Exception):
    """Name resolution outlasted the connect timeout (mapped to a retryable ``FetchError``)."""


# ---------------------------------------------------------------------------- the fetcher


class HttpFetcher:
    """GETs through one pooled ``aiohttp.ClientSession`` whose every connection obeys the egress policy.

    aiohttp rather than httpx: 0.52 ms of CPU a request through this class, everything it does
    included, against 2.15 for a bare ``httpx.AsyncClient`` (a playlist or a 250 KB segment,
    ``bench/bench_fetch.py``), and ingest makes about two a segment of every stream. URLs are
    still parsed, joined and checked with ``parse_source_url`` (the API's parser); aiohttp gets
    the result as already-encoded text, so what goes on the wire is that parse.
    """

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        resolver: Resolver = system_resolver,
        max_connections: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context``: the certificates trusted (None: certifi's CAs, as browsers ship them)."""
        policy = policy or FetchPolicy()
        egress = policy.egress_policy()
        self.policy = replace(policy, egress=egress)
        self._egress = egress
        self._resolver = resolver
        # Shared with its per-session fetchers: loading certifi's CAs costs ~30 ms of CPU, and a
        # restart resumes every open session at once.
        self._ssl_context = ssl_context or ssl.create_default_context(cafile=certifi.where())
        self._max_connections = max_connections or self.policy.max_connections
        # Built on first use: aiohttp binds a session to the running event loop.
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def for_session(self) -> HttpFetcher:
        """A fetcher with the same policy and a pool of its own (``max_connections_per_session``);
        the caller closes it when the session ends."""
        return HttpFetcher(
            self.policy,
            resolver=self._resolver,
            max_connections=self.policy.max_connections_per_session,
            ssl_context=self._ssl_context,
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("HttpFetcher is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                use_dns_cache=False,  # every new connection resolves and checks again
                resolver=PinnedResolver(self._egress, self._resolver, self.policy.connect_timeout),
                ssl=self._ssl_context,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # ``connect`` includes the wait for a free connection of this (bounded) pool.
                timeout=aiohttp.ClientTimeout(
                    total=None,  # the fetch's own deadline (_get_once) covers redirects too
                    connect=self.policy.read_timeout + self.policy.connect_timeout,
                    sock_connect=self.policy.connect_timeout,
                    sock_read=self.policy.read_timeout,
                ),
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                auto_decompress=False,  # compressed bodies are refused (_check_response)
                trust_env=False,  # a proxy from the environment would bypass the connect-time policy
            )
        return self._session

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
                await self._check_literal_host(target)
                wire_url = yarl.URL(str(target), encoded=True)
                async with self._client().get(wire_url, allow_redirects=False) as response:
                    if response.status in REDIRECT_STATUSES and "location" in response.headers:
                        current = str(target.join(response.headers["location"]))
                        continue  # the next hop is parsed and checked like the first one
                    _check_response(response, kind, max_bytes, current, attempt)
                    content = await _read_capped(
                        response.content.iter_any(), kind, max_bytes, current, attempt
                    )
                    return Fetched(
                        url=str(target),
                        status=response.status,
                        content=content,
                        content_type=_header_text(response.headers.get("content-type")),
                    )
        raise FetchError(
            f"more than {self.policy.max_redirects} redirects",
            url=redact_url(url),
            attempts=attempt,
            retryable=False,
        )

    async def _check_literal_host(self, target: httpx.URL) -> None:
        """The policy's check of an IP-literal host, which aiohttp connects to without asking
        the resolver (names are checked there, at connect time)."""
        host = target.host
        if is_ip_address(host):
            port = target.port or (443 if target.scheme == "https" else 80)
            await resolve_checked(host, port, self._egress, self._resolver)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()


def _kind_of(url: str) -> FetchKind:
    try:
        path = httpx.URL(url).path.lower()
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return "segment"
    return "playlist" if path.endswith(PLAYLIST_SUFFIXES) else "segment"


def _check_response(
    response: aiohttp.ClientResponse, kind: FetchKind, max_bytes: int, url: str, attempt: int
) -> None:
    """Status, content encoding and announced length, before any body byte is read."""
    status = response.status
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
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(
                f"{kind} too large: more than {max_bytes} bytes (download stopped)",
                url=redact_url(url),
                attempts=attempt,
                retryable=False,
            )
    return b"".join(parts)  # one copy of the body


@contextmanager
def _mapped_errors(url: str, attempt: int) -> Iterator[None]:
    """Transport and policy errors as ``FetchError``; messages never carry response bytes."""
    shown = redact_url(url)
    try:
        yield
    except EgressError as exc:
        raise FetchError(exc.message, url=shown, attempts=attempt, retryable=False) from exc
    except _ResolveTimeoutError as exc:
        raise FetchError("timed out resolving the host", url=shown, attempts=attempt) from exc
    except aiohttp.ConnectionTimeoutError as exc:  # before ClientConnectorError and TimeoutError
        raise FetchError("timed out connecting", url=shown, attempts=attempt) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise FetchError("timed out reading", url=shown, attempts=attempt) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS
        raise FetchError(f"cannot connect: {_reason(exc)}", url=shown, attempts=attempt) from exc
    except aiohttp.InvalidURL as exc:
        raise FetchError("invalid URL", url=shown, attempts=attempt, retryable=False) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        # The parser's messages can quote the bytes it choked on: say only what kind of failure it was.
        raise FetchError(
            "the server's response is not valid or complete HTTP", url=shown, attempts=attempt
        ) from exc
    except aiohttp.ClientError as exc:  # a reset mid-body, a timeout of another kind, ...
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
        # aiohttp's connect errors copy the errno of what they wrap (an SSL error's is OpenSSL's).
        if isinstance(cause, aiohttp.ClientConnectorCertificateError):
            cause = cause.certificate_error
            continue
        if isinstance(cause, aiohttp.ClientConnectorError):
            cause = cause.os_error
            continue
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
