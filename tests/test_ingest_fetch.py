"""Fetch-level defences against fault-injecting HTTP sources, all on loopback.

The egress policy is switched on in these tests (``allow_private=False``) and every source is on
loopback, so a refusal shows as a source that saw no request. Allowed sources are admitted
through an allow list of one loopback address (127.0.0.2), and names resolve through an
injected resolver: no test here sends a packet beyond 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import logging
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ingest.encode import EncodedChunk
from ingest.errors import FetchError
from ingest.fetch import FetchPolicy, HttpFetcher
from ingest.session import IngestSession
from ingest.settings import IngestSettings
from livestream.egress import EgressPolicy, IPAddress
from livestream.stages import StageTimes
from schemas.records import ChunkRecord, IngestState, SessionLifecycle, StartSession

PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg0.ts\n"
ALLOWED_HOST = "127.0.0.2"  # on the allow list of the policies below; 127.0.0.1 is not

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Request"], Awaitable[None]]


@dataclass
class Request:
    path: str
    headers: dict[str, str]


@dataclass
class FaultServer:
    """A raw asyncio HTTP/1.1 server on one loopback address; records every request it reads."""

    host: str
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    routes: dict[str, Handler] = field(default_factory=dict)
    bytes_sent: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> FaultServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            request = Request(path=request_line.split(" ")[1], headers=headers)
            self.requests.append(request)
            handler = self.routes.get(request.path, _not_found)
            await handler(reader, writer, request)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: what several tests make it do
        finally:
            writer.close()

    def respond(self, status: str, body: bytes, headers: dict[str, str] | None = None) -> Handler:
        async def handler(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: Request) -> None:
            all_headers = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
            head = "".join(f"{k}: {v}\r\n" for k, v in all_headers.items())
            writer.write(f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body)
            self.bytes_sent += len(body)
            await writer.drain()

        return handler


async def _not_found(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: Request) -> None:
    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()


@pytest.fixture
async def local() -> AsyncIterator[FaultServer]:
    """A source on 127.0.0.1: the policies below refuse it."""
    server = await FaultServer("127.0.0.1").start()
    yield server
    await server.stop()


@pytest.fixture
async def allowed() -> AsyncIterator[FaultServer]:
    """A source on 127.0.0.2: the allow lists below admit it."""
    server = await FaultServer(ALLOWED_HOST).start()
    yield server
    await server.stop()


def refusing_policy(**overrides: object) -> FetchPolicy:
    values: dict[str, object] = {
        "retries": 0,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "egress": EgressPolicy.build(allow_private=False, allow=[f"{ALLOWED_HOST}/32"]),
    }
    values.update(overrides)
    return FetchPolicy(**values)  # type: ignore[arg-type]


@pytest.fixture
async def fetcher() -> AsyncIterator[HttpFetcher]:
    fetcher = HttpFetcher(refusing_policy())
    yield fetcher
    await fetcher.aclose()


class ScriptedResolver:
    """Answers each name with the next answer of its script (the last one repeats); counts the calls."""

    def __init__(self, script: dict[str, Sequence[Sequence[str]]]) -> None:
        self.script = script
        self.calls: dict[str, int] = {}

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        assert host in self.script, f"unexpected resolution of {host!r}"
        count = self.calls.get(host, 0)
        self.calls[host] = count + 1
        answers = self.script[host]
        return [ipaddress.ip_address(a) for a in answers[min(count, len(answers) - 1)]]


# ---------------------------------------------------------------------------- egress at connect time


SPELLINGS = [
    "http://127.0.0.1:{port}/live.m3u8",
    "http://127.1:{port}/live.m3u8",
    "http://2130706433:{port}/live.m3u8",
    "http://0x7f000001:{port}/live.m3u8",
    "http://0x7f.1:{port}/live.m3u8",
    "http://localhost:{port}/live.m3u8",
    "http://LocalHost.:{port}/live.m3u8",
    "http://[::ffff:127.0.0.1]:{port}/live.m3u8",
    "http://[::1]:{port}/live.m3u8",
    "http://good.example@127.0.0.1:{port}/live.m3u8",
    "http://user:pw@127.0.0.1:{port}/live.m3u8",
    "http://127.0.0.1.:{port}/live.m3u8",
    "http://127。0。0。1:{port}/live.m3u8",
    "http://%31%32%37.0.0.1:{port}/live.m3u8",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_policy_refuses_a_loopback_source_in_every_spelling(
    local: FaultServer, fetcher: HttpFetcher, spelling: str
) -> None:
    local.routes["/live.m3u8"] = local.respond("200 OK", PLAYLIST)
    with pytest.raises(FetchError) as refused:
        await fetcher.get(spelling.format(port=local.port))
    assert not refused.value.retryable
    assert any(why in refused.value.message for why in ("egress policy", "invalid URL", "not a valid host"))
    assert local.requests == []


async def test_allowed_source_is_fetched(allowed: FaultServer, fetcher: HttpFetcher) -> None:
    allowed.routes["/live.m3u8"] = allowed.respond(
        "200 OK", PLAYLIST, {"Content-Type": "application/x-mpegURL"}
    )
    fetched = await fetcher.get(allowed.url("/live.m3u8"))
    assert fetched.content == PLAYLIST
    assert fetched.content_type == "application/x-mpegURL"
    assert allowed.requests[0].headers["accept-encoding"] == "identity"


async def test_every_redirect_hop_is_checked(
    allowed: FaultServer, local: FaultServer, fetcher: HttpFetcher
) -> None:
    local.routes["/live.m3u8"] = local.respond("200 OK", PLAYLIST)
    allowed.routes["/live.m3u8"] = allowed.respond("302 Found", b"", {"Location": local.url("/live.m3u8")})
    with pytest.raises(FetchError, match="not on the allow list") as refused:
        await fetcher.get(allowed.url("/live.m3u8"))
    assert not refused.value.retryable
    assert len(allowed.requests) == 1
    assert local.requests == []


async def test_redirects_within_the_policy_are_followed_and_bounded(allowed: FaultServer) -> None:
    allowed.routes["/a.m3u8"] = allowed.respond("301 Moved Permanently", b"", {"Location": "/b/live.m3u8"})
    allowed.routes["/b/live.m3u8"] = allowed.respond("200 OK", PLAYLIST)
    allowed.routes["/loop"] = allowed.respond("307 Temporary Redirect", b"", {"Location": "/loop"})
    fetcher = HttpFetcher(refusing_policy(max_redirects=3))
    try:
        fetched = await fetcher.get(allowed.url("/a.m3u8"))
        assert fetched.url == allowed.url("/b/live.m3u8")  # relative URIs resolve against the last hop
        assert fetched.content == PLAYLIST
        with pytest.raises(FetchError, match="more than 3 redirects"):
            await fetcher.get(allowed.url("/loop"))
        assert sum(r.path == "/loop" for r in allowed.requests) == 4
    finally:
        await fetcher.aclose()


async def test_dns_rebinding_connects_to_the_checked_address() -> None:
    """The name is resolved once per connection; the connection goes to the answer that was checked,
    and a later answer that the policy refuses is refused, not connected to."""
    pinned = await FaultServer(ALLOWED_HOST).start()
    # The rebinding target listens on the same port, so only the address tells them apart.
    target = await FaultServer("127.0.0.1", port=pinned.port).start()
    resolver = ScriptedResolver({"rebind.test": [[ALLOWED_HOST], ["127.0.0.1"]]})
    fetcher = HttpFetcher(refusing_policy(), resolver=resolver)
    try:
        for server in (pinned, target):
            server.routes["/live.m3u8"] = server.respond("200 OK", PLAYLIST)
        url = f"http://rebind.test:{pinned.port}/live.m3u8"
        assert (await fetcher.get(url)).content == PLAYLIST
        assert [r.headers["host"] for r in pinned.requests] == [f"rebind.test:{pinned.port}"]
        assert resolver.calls == {"rebind.test": 1}
        # The server closed the connection: the next request connects again, resolves again,
        # and this time the answer is refused.
        with pytest.raises(FetchError, match="not on the allow list"):
            await fetcher.get(url)
        assert resolver.calls == {"rebind.test": 2}
        assert target.requests == []
        assert len(pinned.requests) == 1
    finally:
        await fetcher.aclose()
        await pinned.stop()
        await target.stop()


async def test_a_name_with_one_forbidden_address_is_refused(local: FaultServer) -> None:
    resolver = ScriptedResolver({"mixed.test": [[ALLOWED_HOST, "127.0.0.1"]]})
    fetcher = HttpFetcher(refusing_policy(), resolver=resolver)
    try:
        with pytest.raises(FetchError, match="not on the allow list"):
            await fetcher.get(f"http://mixed.test:{local.port}/live.m3u8")
    finally:
        await fetcher.aclose()
    assert local.requests == []


async def test_deny_list_wins_over_the_allow_list(allowed: FaultServer) -> None:
    egress = EgressPolicy.build(allow_private=True, allow=["127.0.0.0/8"], deny=[f"{ALLOWED_HOST}/32"])
    fetcher = HttpFetcher(refusing_policy(egress=egress))
    try:
        with pytest.raises(FetchError, match="deny list"):
            await fetcher.get(allowed.url("/live.m3u8"))
    finally:
        await fetcher.aclose()
    assert allowed.requests == []


# ---------------------------------------------------------------------------- limits while reading


async def _endless(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: Request) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")  # no length: the body never ends
    block = b"#" * 65536
    for _ in range(100_000):  # ~6.5 GB if the client kept reading
        writer.write(block)
        await writer.drain()


async def test_size_cap_stops_an_endless_body_while_it_arrives(allowed: FaultServer) -> None:
    allowed.routes["/live.m3u8"] = _endless
    fetcher = HttpFetcher(refusing_policy(playlist_max_bytes=1024**2))
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match=r"playlist too large: more than 1048576 bytes") as refused:
            await fetcher.get(allowed.url("/live.m3u8"))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await fetcher.aclose()
    assert time.monotonic() - started < 5
    assert peak < 16 * 1024**2
    assert not refused.value.retryable


async def test_announced_length_over_the_cap_is_refused_before_reading(allowed: FaultServer) -> None:
    async def huge(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: Request) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\nxx")
        await writer.drain()
        await asyncio.sleep(30)

    allowed.routes["/seg.ts"] = huge
    fetcher = HttpFetcher(refusing_policy(segment_max_bytes=1024**2))
    try:
        with pytest.raises(FetchError, match=r"segment too large: Content-Length 1000000000 bytes"):
            await asyncio.wait_for(fetcher.get(allowed.url("/seg.ts")), 5)
    finally:
        await fetcher.aclose()


async def test_trickling_server_is_cut_off_at_the_total_deadline(allowed: FaultServer) -> None:
    async def trickle(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: Request) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n")
        for _ in range(100_000):  # each byte well within the read timeout
            writer.write(b"#")
            await writer.drain()
            await asyncio.sleep(0.05)

    allowed.routes["/live.m3u8"] = trickle
    fetcher = HttpFetcher(refusing_policy(playlist_deadline=1.0, read_timeout=5.0))
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match=r"no complete playlist within 1s \(total deadline"):
            await fetcher.get(allowed.url("/live.m3u8"))
    finally:
        await fetcher.aclose()
    assert time.monotonic() - started < 3


async def test_compressed_bodies_are_refused_not_decompressed(
    allowed: FaultServer, fetcher: HttpFetcher
) -> None:
    bomb = gzip.compress(b"#EXTM3U\n" + b"#" * 10_000_000)
    allowed.routes["/live.m3u8"] = allowed.respond("200 OK", bomb, {"Content-Encoding": "gzip"})
    with pytest.raises(FetchError, match=r"compressed \(Content-Encoding: gzip\)") as refused:
        await fetcher.get(allowed.url("/live.m3u8"))
    assert not refused.value.retryable
    assert allowed.requests[0].headers["accept-encoding"] == "identity"


async def test_one_slow_source_does_not_starve_another_sessions_pool(allowed: FaultServer) -> None:
    async def stall(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: Request) -> None:
        await asyncio.sleep(10)

    allowed.routes["/slow.m3u8"] = stall
    allowed.routes["/fast.m3u8"] = allowed.respond("200 OK", PLAYLIST)
    shared = HttpFetcher(refusing_policy(max_connections_per_session=1, read_timeout=8.0))
    slow, fast = shared.for_session(), shared.for_session()
    try:
        stuck = asyncio.ensure_future(slow.get(allowed.url("/slow.m3u8")))
        await asyncio.sleep(0.2)
        fetched = await asyncio.wait_for(fast.get(allowed.url("/fast.m3u8")), 3)
        assert fetched.content == PLAYLIST
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
    finally:
        for fetcher in (slow, fast, shared):
            await fetcher.aclose()


async def test_timeouts_say_which_step_timed_out_and_are_retried(allowed: FaultServer) -> None:
    """The HTTP client's own timeouts are TimeoutErrors too: each reads as what timed out, not as
    the fetch's total deadline, and is retryable (a source that is slow for a moment)."""

    async def silent(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _req: Request) -> None:
        await asyncio.sleep(30)

    async def slow_name(host: str, port: int) -> list[IPAddress]:
        await asyncio.sleep(30)
        return [ipaddress.ip_address(ALLOWED_HOST)]

    allowed.routes["/live.m3u8"] = silent
    policy = refusing_policy(read_timeout=0.3, connect_timeout=0.3, playlist_deadline=20.0)
    for resolver, url, reason in (
        (None, allowed.url("/live.m3u8"), "timed out reading"),
        (slow_name, f"http://slow.test:{allowed.port}/live.m3u8", "timed out resolving the host"),
    ):
        fetcher = HttpFetcher(policy) if resolver is None else HttpFetcher(policy, resolver=resolver)
        started = time.monotonic()
        try:
            with pytest.raises(FetchError) as failed:
                await fetcher.get(url)
        finally:
            await fetcher.aclose()
        assert failed.value.message == reason and failed.value.retryable
        assert time.monotonic() - started < 5


async def test_per_session_fetchers_share_the_trusted_certificates() -> None:
    """Loading certifi's CAs costs ~30 ms of CPU: it is done once, not per session (a restart
    resumes every open session at once)."""
    shared = HttpFetcher(refusing_policy())
    sessions = [shared.for_session() for _ in range(3)]
    try:
        assert all(fetcher._ssl_context is shared._ssl_context for fetcher in sessions)
        assert shared._ssl_context.verify_mode is ssl.CERT_REQUIRED and shared._ssl_context.check_hostname
    finally:
        for fetcher in (*sessions, shared):
            await fetcher.aclose()


# ---------------------------------------------------------------------------- reasons


async def test_failure_reasons_never_echo_the_body_or_server_text(
    allowed: FaultServer, fetcher: HttpFetcher
) -> None:
    allowed.routes["/live.m3u8"] = allowed.respond(
        "404 SECRET-PHRASE", b"<html>SECRET-BODY</html>", {"Content-Type": "text/html"}
    )
    with pytest.raises(FetchError) as failed:
        await fetcher.get(allowed.url("/live.m3u8"))
    assert str(failed.value).startswith("HTTP 404 Not Found")
    assert "SECRET" not in str(failed.value)


async def test_malformed_responses_are_not_quoted(allowed: FaultServer, fetcher: HttpFetcher) -> None:
    async def garbage(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: Request) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nSECRET-HEADER-LINE-WITHOUT-COLON\r\n\r\n")
        await writer.drain()

    allowed.routes["/live.m3u8"] = garbage
    with pytest.raises(FetchError, match="not valid or complete HTTP") as failed:
        await fetcher.get(allowed.url("/live.m3u8"))
    assert "SECRET" not in str(failed.value)


async def test_credentials_in_urls_are_redacted_in_errors(allowed: FaultServer, fetcher: HttpFetcher) -> None:
    url = f"http://alice:hunter2@{ALLOWED_HOST}:{allowed.port}/live.m3u8?token=tok-123&quality=hd"
    with pytest.raises(FetchError) as failed:
        await fetcher.get(url)
    text = str(failed.value)
    assert "hunter2" not in text and "tok-123" not in text and "alice" not in text
    assert f"url=http://***@{ALLOWED_HOST}:{allowed.port}/live.m3u8?token=***&quality=hd" in text
    assert allowed.requests[0].headers["authorization"].startswith("Basic ")  # still sent to the source


async def test_ingest_logs_no_request_urls(allowed: FaultServer, caplog: pytest.LogCaptureFixture) -> None:
    """A source URL can carry a token: at any level, what a fetch logs (the HTTP client's lines and
    ingest's own retry lines) shows it redacted, never as it is."""
    url = f"http://{ALLOWED_HOST}:{allowed.port}/live.m3u8?token=tok-123"
    fetcher = HttpFetcher(refusing_policy(retries=1, backoff_seconds=0.01))
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(FetchError):
            await fetcher.get(url)
    finally:
        await fetcher.aclose()
    assert len(allowed.requests) == 2  # the retry line was written
    assert "live.m3u8?token=***" in caplog.text
    assert "tok-123" not in caplog.text


# ---------------------------------------------------------------------------- a session under the policy


class RecordingPublisher:
    def __init__(self) -> None:
        self.chunks: list[ChunkRecord] = []
        self.lifecycle: list[SessionLifecycle] = []

    async def publish_chunk(self, chunk: EncodedChunk, stages: StageTimes) -> None:
        self.chunks.append(chunk.record)

    async def publish_lifecycle(self, record: SessionLifecycle) -> None:
        self.lifecycle.append(record)


async def test_a_session_on_a_refused_source_fails_with_the_policys_reason(
    local: FaultServer, tmp_path: Path
) -> None:
    local.routes["/live.m3u8"] = local.respond("200 OK", PLAYLIST)
    settings = IngestSettings(storage_dir=tmp_path, allow_private_sources=False, http_retries=0)
    fetcher = HttpFetcher(FetchPolicy.of(settings))
    publisher = RecordingPublisher()
    command = StartSession(
        session_id="refused-1",
        stream_id="stream-refused-1",
        name="refused",
        source_url=f"http://user:pw@127.1:{local.port}/live.m3u8",
        rapid_review_query="cat",
    )
    try:
        report = await asyncio.wait_for(IngestSession(command, settings, fetcher, publisher).run(), 20)
    finally:
        await fetcher.aclose()
    assert report is not None and report.state is IngestState.FAILED
    assert report.reason is not None
    assert "refused by the egress policy" in report.reason
    assert "LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES=true" in report.reason
    assert "pw" not in report.reason.replace("pw@", "")  # the URL is shown redacted
    assert local.requests == []


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "gopher://127.0.0.2/x", "ftp://127.0.0.1/live.m3u8"]
)
async def test_redirects_to_other_schemes_are_refused(
    allowed: FaultServer, fetcher: HttpFetcher, location: str
) -> None:
    allowed.routes["/live.m3u8"] = allowed.respond("302 Found", b"", {"Location": location})
    with pytest.raises(FetchError) as refused:
        await fetcher.get(allowed.url("/live.m3u8"))
    assert not refused.value.retryable
    assert len(allowed.requests) == 1


async def test_settings_reach_the_fetch_policy(tmp_path: Path) -> None:
    settings = IngestSettings(
        storage_dir=tmp_path,
        allow_private_sources=False,
        source_allow="127.0.0.2/32",
        http_playlist_max_bytes=2048,
        http_segment_max_bytes=4096,
        http_playlist_deadline_seconds=3.0,
        http_max_redirects=2,
        http_max_connections_per_session=2,
    )
    policy = FetchPolicy.of(settings)
    assert policy.limits_of("playlist") == (2048, 3.0)
    assert policy.limits_of("segment") == (4096, 60.0)
    assert policy.max_redirects == 2 and policy.max_connections_per_session == 2
    assert policy.egress is not None and not policy.egress.allow_private
    assert policy.egress.allow.matches_address(ipaddress.ip_address("127.0.0.2"))


async def test_playlist_limits_apply_to_m3u8_paths_by_default(allowed: FaultServer) -> None:
    body = b"#EXTM3U\n" + b"#" * 5000
    allowed.routes["/live.m3u8"] = allowed.respond("200 OK", body)
    allowed.routes["/seg.ts"] = allowed.respond("200 OK", body)
    fetcher = HttpFetcher(refusing_policy(playlist_max_bytes=4096, segment_max_bytes=8192))
    try:
        with pytest.raises(FetchError, match="playlist too large"):
            await fetcher.get(allowed.url("/live.m3u8"))
        assert (await fetcher.get(allowed.url("/seg.ts"))).content == body
        with pytest.raises(FetchError, match="playlist too large"):
            await fetcher.get(allowed.url("/seg.ts"), kind="playlist")
    finally:
        await fetcher.aclose()
