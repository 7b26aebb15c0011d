"""Hostile and broken sources: the playlist parser's limits (property-based), decoding limits,
sessions fed by fault-injecting loopback origins (records go to memory), outages, and the
service on a real broker: healthy after bad sources, quarantining a session that keeps crashing
its instance (crashes simulated by killing the session's task without any stop).

Every case ends the way the README's bad-input table says: refused, FAILED with a named reason,
or survived; none hangs, spins or kills the process.
"""

from __future__ import annotations

import asyncio
import io
import math
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import session as session_module
from ingest.decode import decode_segment, frame_budget
from ingest.encode import EncodedChunk
from ingest.errors import DecodeError, DecodeRefusedError, PlaylistError
from ingest.fetch import FetchPolicy, HttpFetcher
from ingest.playlist import (
    MasterPlaylist,
    MediaPlaylist,
    PlaylistLimits,
    parse_attributes,
    parse_playlist,
)
from ingest.service import IngestService, read_open_checkpoints
from ingest.session import IngestSession
from ingest.settings import IngestSettings
from ingest.storage import manifest_entries
from livestream.kafka.serde import decode_value, encode_key, encode_value
from livestream.stages import StageTimes
from livestream.testsource import LiveHlsSource, short_script
from schemas.records import ChunkRecord, IngestCheckpoint, IngestState, SessionLifecycle, StartSession
from schemas.topics import Topics

URL = "http://origin.test/live/index.m3u8"
SECRET = "s3cr3t-token-in-the-body"

# --------------------------------------------------------------------------- parser properties

TAGS = [
    "#EXT-X-TARGETDURATION",
    "#EXT-X-MEDIA-SEQUENCE",
    "#EXTINF",
    "#EXT-X-PROGRAM-DATE-TIME",
    "#EXT-X-DISCONTINUITY",
    "#EXT-X-ENDLIST",
    "#EXT-X-PLAYLIST-TYPE",
    "#EXT-X-STREAM-INF",
    "#EXT-X-KEY",
]
NUMBERS = st.sampled_from(
    [
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e999",
        "-1",
        "0",
        "2",
        "4.5",
        "1e308",
        "9" * 25,
        "9223372036854775808",
        "²",
        "٣",
    ]
)
ATTRIBUTE_TEXT = st.text(alphabet='ABCRESOLUTIONBANDWIDTH0123456789x=,"- ', max_size=80)
LINE = st.one_of(
    st.builds(lambda tag, value: f"{tag}:{value}", st.sampled_from(TAGS), NUMBERS),
    st.builds(lambda tag, value: f"{tag}:{value}", st.sampled_from(TAGS), ATTRIBUTE_TEXT),
    st.builds(
        lambda value: f"#EXT-X-PROGRAM-DATE-TIME:{value}",
        st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00", "2024-05-01T12:00:00+14:00", "x"]),
    ),
    st.sampled_from(["seg.ts", "http://[::1", "//", "a b.ts", "\x00", "#", ""]),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, max_size=30))
def test_the_parser_raises_nothing_but_playlist_errors(lines: list[str]) -> None:
    text = "\n".join(["#EXTM3U", *lines])
    try:
        parsed = parse_playlist(text, URL)
    except PlaylistError as exc:
        assert SECRET not in str(exc)
        return
    if isinstance(parsed, MediaPlaylist):
        assert math.isfinite(parsed.target_duration) and 0 < parsed.target_duration <= 300
        for segment in parsed.segments:
            assert math.isfinite(segment.duration) and segment.duration >= 0
            assert 0 <= segment.media_sequence < 2**63
    else:
        assert isinstance(parsed, MasterPlaylist) and parsed.variants


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_raises_a_playlist_error(text: str) -> None:
    for candidate in (text, "#EXTM3U\n" + text):
        try:
            parse_playlist(candidate, URL)
        except PlaylistError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='AB=,"x ', max_size=200))
def test_attribute_lists_never_raise_and_keep_valid_names(text: str) -> None:
    attributes = parse_attributes(text)
    assert all(name and set(name) <= set("AB") for name in attributes)


@settings(max_examples=100, deadline=None)
@given(NUMBERS.filter(lambda v: v.lower() in {"nan", "inf", "-inf", "1e999"}))
def test_non_finite_durations_are_refused(value: str) -> None:
    with pytest.raises(PlaylistError, match="not finite"):
        parse_playlist(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:{value},\na.ts\n", URL)
    with pytest.raises(PlaylistError, match="not finite"):
        parse_playlist(f"#EXTM3U\n#EXT-X-TARGETDURATION:{value}\n#EXTINF:2,\na.ts\n", URL)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("#EXT-X-TARGETDURATION:0\n", r"TARGETDURATION 0 is outside \(0, 300\]"),
        ("#EXT-X-TARGETDURATION:86400\n", "TARGETDURATION 86400 is outside"),
        ("#EXT-X-TARGETDURATION:-2\n", "TARGETDURATION is negative"),
        ("#EXT-X-TARGETDURATION:2\n#EXTINF:-1,\na.ts\n", "#EXTINF duration is negative"),
        ("#EXT-X-TARGETDURATION:2\n#EXTINF:3600,\na.ts\n", "#EXTINF duration 3600 s is far beyond"),
        ("#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:-5\n", "MEDIA-SEQUENCE is not a decimal integer"),
        ("#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:9223372036854775808\n", r"larger than 2\*\*63"),
        ("#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:" + "9" * 5000 + "\n", "not a decimal integer"),
        (
            "#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:9223372036854775807\n#EXTINF:2,\na.ts\n#EXTINF:2,\nb.ts\n",
            "media sequence number overflows",
        ),
    ],
)
def test_absurd_values_are_refused_with_a_reason(body: str, message: str) -> None:
    with pytest.raises(PlaylistError, match=message):
        parse_playlist("#EXTM3U\n" + body, URL)


def test_a_long_extinf_is_fine_within_three_target_durations_or_thirty_seconds() -> None:
    parsed = parse_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:29.5,\na.ts\n", URL)
    assert isinstance(parsed, MediaPlaylist) and parsed.segments[0].duration == 29.5
    parsed = parse_playlist("#EXTM3U\n#EXT-X-TARGETDURATION:20\n#EXTINF:59,\na.ts\n", URL)
    assert isinstance(parsed, MediaPlaylist)


def test_entries_and_line_lengths_are_limited() -> None:
    many = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + "#EXTINF:2,\na.ts\n" * 11
    with pytest.raises(PlaylistError, match="more than 10 segments"):
        parse_playlist(many, URL, PlaylistLimits(max_entries=10))
    assert isinstance(parse_playlist(many, URL, PlaylistLimits(max_entries=11)), MediaPlaylist)
    variants = "#EXTM3U\n" + "#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n" * 3
    with pytest.raises(PlaylistError, match="more than 2 variants"):
        parse_playlist(variants, URL, PlaylistLimits(max_entries=2))
    long_uri = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n" + "a" * 2000 + ".ts\n"
    with pytest.raises(PlaylistError, match="line 4 is longer than 1024 bytes"):
        parse_playlist(long_uri, URL, PlaylistLimits(max_line_bytes=1024))
    # Bytes, not characters: 400 three-byte characters are 1200 bytes.
    with pytest.raises(PlaylistError, match="longer than 1024 bytes"):
        parse_playlist(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n" + "€" * 400 + "\n", URL, PlaylistLimits(1, 1024)
        )


def huge_attribute_line(size: int = 400_000) -> str:
    """The kind of line that froze a backtracking attribute regex: many commas, quotes, '='."""
    unit = 'A=,"B=x,'
    return "#EXT-X-STREAM-INF:BANDWIDTH=1," + unit * (size // len(unit))


def test_a_400_kb_attribute_line_parses_in_linear_time() -> None:
    line = huge_attribute_line()
    started = time.perf_counter()
    parse_attributes(line.split(":", 1)[1])
    parse_attributes("A=" + "," * 400_000)
    parse_attributes('A="' + "x" * 400_000)
    parse_attributes("a" * 400_000)
    parse_attributes("A" * 400_000 + "=1")
    parsed = parse_playlist(f"#EXTM3U\n{line}\nv.m3u8\n", URL, PlaylistLimits(max_line_bytes=1_000_000))
    assert isinstance(parsed, MasterPlaylist)
    # Not a speed goal (those live in bench/): a guard against catastrophic backtracking, which
    # takes minutes on such input; a linear scan takes well under a second even on a busy machine.
    assert time.perf_counter() - started < 10.0
    # With the default limits such a line is refused before it is scanned.
    with pytest.raises(PlaylistError, match="line 2 is longer than 16384 bytes"):
        parse_playlist(f"#EXTM3U\n{line}\nv.m3u8\n", URL)


@pytest.mark.parametrize(
    ("body", "described"),
    [
        ("", "empty response"),
        (f"<html><body>{SECRET}</body></html>", "50 bytes of text"),
        ("\x00\x01\x02" + SECRET, "27 bytes, binary"),
    ],
)
def test_a_non_playlist_is_described_never_quoted(body: str, described: str) -> None:
    with pytest.raises(PlaylistError) as caught:
        parse_playlist(body, URL)
    assert str(caught.value) == (
        f"the source is not an HLS playlist: no #EXTM3U header ({described}) (url={URL})"
    )
    with pytest.raises(PlaylistError) as malformed:
        parse_playlist(f"#EXTM3U\n#EXT-X-TARGETDURATION:{SECRET}\n", URL)
    assert SECRET not in str(malformed.value)
    assert "line 2: #EXT-X-TARGETDURATION is not a number" in str(malformed.value)


# --------------------------------------------------------------------------- decoding limits


def ts_segment(width: int, height: int, frames: int, fps: int, codec: str = "libx264") -> bytes:
    """A real MPEG-TS segment of ``frames`` gray frames."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mpegts") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        image = np.full((height, width, 3), 128, dtype=np.uint8)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = 10 * fps + index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def oversized_segment() -> bytes:
    return ts_segment(4320, 2160, 1, 2, codec="mpeg2video")  # 9.3 Mpx: over the 4096x2160 default


@pytest.fixture(scope="module")
def flood_segment() -> bytes:
    return ts_segment(16, 16, 600, 100)  # 6 s of 100 fps: a flood for a segment declared 1 s long


def test_decoding_refuses_frames_too_large(oversized_segment: bytes) -> None:
    with pytest.raises(DecodeRefusedError, match="frames of 4320x2160 exceed the decoding limit of 8847360"):
        decode_segment(oversized_segment, lambda _: True, max_pixels=IngestSettings().decode_max_pixels)
    assert decode_segment(oversized_segment, lambda _: False, max_pixels=4320 * 2160).decoded_count == 1


def test_decoding_refuses_a_frame_flood(flood_segment: bytes) -> None:
    assert frame_budget(1.0, 120) == 480 and frame_budget(0.01, 120) == 480 and frame_budget(2.0, 30) == 240
    with pytest.raises(DecodeRefusedError, match="more than 480 video frames"):
        decode_segment(flood_segment, lambda _: False, max_frames=frame_budget(1.0, 120))
    assert decode_segment(flood_segment, lambda _: False, max_frames=600).decoded_count == 600


def test_decoding_reads_mpeg_ts_only() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:  # a real video, in another container
        stream = container.add_stream("libx264", rate=2)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(2):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8))))
        container.mux(stream.encode(None))
    for data in (buffer.getvalue(), b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://x/a.ts\n"):
        with pytest.raises(DecodeError, match="MPEG-TS") as caught:
            decode_segment(data, lambda _: True)
        assert not isinstance(caught.value, DecodeRefusedError)


# --------------------------------------------------------------------------- sessions on bad origins


class FaultOrigin:
    """A loopback HTTP origin a test controls while sessions read it: fixed answers per path
    (``serve``; ``serve_sequence`` answers each GET with the next body, the last one sticks),
    everything else proxied to ``upstream``; ``fail_with(503)`` answers every request with that
    status, ``go_away()`` closes the listening socket (connection refused) until ``come_back()``."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[bytes, str]]] = {}
        self.upstream: str | None = None
        self.failing_status: int | None = None
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(
        self, path: str, body: str | bytes, content_type: str = "application/vnd.apple.mpegurl"
    ) -> None:
        self.serve_sequence(path, [body], content_type)

    def serve_sequence(
        self, path: str, bodies: list[str] | list[bytes], content_type: str = "application/vnd.apple.mpegurl"
    ) -> None:
        with self._lock:
            self.routes[path] = [(b.encode() if isinstance(b, str) else b, content_type) for b in bodies]

    def fail_with(self, status: int | None) -> None:
        self.failing_status = status

    def go_away(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = None

    def come_back(self) -> None:
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = origin._answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        with self._lock:
            self.requests.append(path)
            if self.failing_status is not None:
                return self.failing_status, "text/html", b"<html>origin trouble</html>"
            bodies = self.routes.get(path)
            if bodies is not None:
                body, content_type = bodies.pop(0) if len(bodies) > 1 else bodies[0]
                return 200, content_type, body
        if self.upstream is None:
            return 404, "text/plain", b"not found"
        try:
            with urllib.request.urlopen(self.upstream + path, timeout=5) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, "text/plain", b""

    def __enter__(self) -> FaultOrigin:
        self.come_back()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.go_away()


class RecordingPublisher:
    def __init__(self) -> None:
        self.chunks: list[ChunkRecord] = []
        self.lifecycle: list[SessionLifecycle] = []
        self.checkpoints: list[IngestCheckpoint] = []

    async def publish_chunk(self, chunk: EncodedChunk, stages: StageTimes) -> None:
        self.chunks.append(chunk.record)

    async def publish_lifecycle(self, record: SessionLifecycle) -> None:
        self.lifecycle.append(record)

    async def save_checkpoint(self, checkpoint: IngestCheckpoint) -> None:
        self.checkpoints.append(checkpoint)

    async def delete_checkpoint(self, session_id: str) -> None:
        pass


def hardening_settings(tmp_path: Path, **overrides: object) -> IngestSettings:
    values: dict[str, object] = {
        "storage_dir": tmp_path,
        "chunk_seconds": 2.0,
        "sample_fps": 2.0,
        "http_retries": 0,
        "http_backoff_seconds": 0.05,
        "http_connect_timeout": 1.0,
        "http_read_timeout": 2.0,
        "stall_target_durations": 2.0,
        "outage_tolerance_s": 3.0,
        "outage_poll_max_s": 0.5,
    }
    values.update(overrides)
    return IngestSettings(**values)  # type: ignore[arg-type]


def command(url: str, session_id: str = "hard-1") -> StartSession:
    return StartSession(session_id=session_id, stream_id=f"st-{session_id}", name="t", source_url=url)


async def run_session(
    url: str,
    tmp_path: Path,
    *,
    resume_from: IngestCheckpoint | None = None,
    within_s: float = 30,
    **overrides: object,
) -> tuple[SessionLifecycle | None, RecordingPublisher]:
    publisher = RecordingPublisher()
    settings_ = hardening_settings(tmp_path, **overrides)
    fetcher = HttpFetcher(FetchPolicy(retries=0, backoff_seconds=0.05, connect_timeout=1, read_timeout=2))
    try:
        session = IngestSession(
            command(url), settings_, fetcher, publisher, checkpoints=publisher, resume_from=resume_from
        )
        final = await asyncio.wait_for(session.run(), timeout=within_s)
    finally:
        await fetcher.aclose()
    return final, publisher


@pytest.fixture
def origin() -> Iterator[FaultOrigin]:
    with FaultOrigin() as server:
        yield server


def media_playlist(segments: list[tuple[float, str]], *, sequence: int = 0, ended: bool = True) -> str:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{sequence}"]
    for duration, uri in segments:
        lines += [f"#EXTINF:{duration},", uri]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def good_segment() -> bytes:
    return ts_segment(64, 48, 24, 12)  # 2 s


async def test_nan_extinf_fails_the_session_with_a_reason(origin: FaultOrigin, tmp_path: Path) -> None:
    origin.serve("/live.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:nan,\na.ts\n")
    final, published = await run_session(f"{origin.base_url}/live.m3u8", tmp_path)
    assert final is not None and final.state is IngestState.FAILED
    assert final.reason == (
        f"malformed playlist line 3: #EXTINF duration is not finite (url={origin.base_url}/live.m3u8, "
        "content_type=application/vnd.apple.mpegurl)"
    )
    assert published.chunks == []


async def test_a_400_kb_attribute_line_fails_the_session_quickly(origin: FaultOrigin, tmp_path: Path) -> None:
    origin.serve("/master.m3u8", f"#EXTM3U\n{huge_attribute_line()}\nv.m3u8\n")
    started = time.monotonic()
    final, _ = await run_session(f"{origin.base_url}/master.m3u8", tmp_path)
    assert final is not None and final.state is IngestState.FAILED
    assert final.reason is not None and "playlist line 2 is longer than 16384 bytes" in final.reason
    assert time.monotonic() - started < 5


async def test_a_huge_sequence_jump_is_one_bounded_gap(
    origin: FaultOrigin, tmp_path: Path, good_segment: bytes
) -> None:
    origin.serve("/s.ts", good_segment, content_type="video/mp2t")
    leap = 2**62
    origin.serve_sequence(
        "/live.m3u8",
        [
            media_playlist([(2.0, "s.ts")] * 2, sequence=0, ended=False),
            media_playlist([(2.0, "s.ts")] * 2, sequence=leap, ended=True),
        ],
    )
    final, published = await run_session(f"{origin.base_url}/live.m3u8", tmp_path, live_edge_segments=2)
    assert final is not None and final.state is IngestState.ENDED and final.ended_by == "stream"
    # 2 segments, a gap of about the time between the two refreshes (not 2**62 x 2 s), 2 segments.
    assert final.manifest_path is not None
    entries = manifest_entries(await asyncio.to_thread(Path(final.manifest_path).read_text))
    assert [e.gap for e in entries] == [False, False, True, False, False]
    gap = entries[2].duration
    assert 0 < gap < 10
    assert len(published.chunks) == final.chunks_published <= math.ceil((8 + gap) / 2) + 1
    assert published.chunks[-1].end_time == pytest.approx(8 + gap, abs=0.01)


@pytest.mark.parametrize("which", ["oversized", "flood"])
async def test_segments_decoding_cannot_afford_fail_the_session_with_a_reason(
    which: str, origin: FaultOrigin, tmp_path: Path, oversized_segment: bytes, flood_segment: bytes
) -> None:
    origin.serve(
        "/bad.ts", oversized_segment if which == "oversized" else flood_segment, content_type="video/mp2t"
    )
    origin.serve("/live.m3u8", media_playlist([(1.0, "bad.ts")] * 3))
    final, published = await run_session(f"{origin.base_url}/live.m3u8", tmp_path)
    assert final is not None and final.state is IngestState.FAILED
    assert final.reason is not None and final.reason.startswith(
        "segments refused: 3 segment(s) in a row failed"
    )
    expected = "exceed the decoding limit" if which == "oversized" else "more than 480 video frames"
    assert expected in final.reason
    assert published.chunks == [] or all(not c.frames for c in published.chunks)


async def test_an_unexpected_error_ends_the_session_failed_with_a_final_report(
    origin: FaultOrigin, tmp_path: Path, good_segment: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin.serve("/s.ts", good_segment, content_type="video/mp2t")
    origin.serve("/live.m3u8", media_playlist([(2.0, "s.ts")] * 3))
    calls = 0

    def budget_then_bug(duration: float, max_fps: float, slack: float = 4.0) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ZeroDivisionError("a bug in ingest")
        return 1000

    monkeypatch.setattr("ingest.session.frame_budget", budget_then_bug)
    final, published = await run_session(f"{origin.base_url}/live.m3u8", tmp_path)
    assert final is not None and final.state is IngestState.FAILED
    assert final.reason == (
        "internal ingest error (ZeroDivisionError) while ingesting the source; "
        "see the ingest log for session hard-1"
    )
    # The first segment's chunk was published and counted; the final report says so.
    assert final.chunks_published == len(published.chunks) >= 1
    assert [r.state for r in published.lifecycle] == [IngestState.ACTIVE, IngestState.FAILED]


async def test_a_quarantined_session_is_not_resumed(origin: FaultOrigin, tmp_path: Path) -> None:
    origin.serve("/live.m3u8", media_playlist([(2.0, "s.ts")]))
    crashed = IngestCheckpoint(
        session_id="hard-1",
        stream_id="st-hard-1",
        command=command(f"{origin.base_url}/live.m3u8"),
        next_chunk_index=4,
        chunks_published=4,
        covered_time=8.0,
        crash_resumes=3,
    )
    final, _ = await run_session(crashed.command.source_url, tmp_path, resume_from=crashed)
    assert final is not None and final.state is IngestState.FAILED
    assert final.reason is not None and final.reason.startswith("crashed ingest 3 times")
    assert final.chunks_published == 4
    assert origin.requests == []  # nothing fetched, nothing decoded


async def test_the_crash_count_is_raised_before_work_and_reset_past_the_crash(
    origin: FaultOrigin, tmp_path: Path, good_segment: bytes
) -> None:
    origin.serve("/s.ts", good_segment, content_type="video/mp2t")
    origin.serve("/live.m3u8", media_playlist([(2.0, "s.ts")] * 4))
    crashed_once = IngestCheckpoint(
        session_id="hard-1",
        stream_id="st-hard-1",
        command=command(f"{origin.base_url}/live.m3u8"),
        crash_resumes=2,
    )
    final, published = await run_session(crashed_once.command.source_url, tmp_path, resume_from=crashed_once)
    assert final is not None and final.state is IngestState.ENDED
    counts = [c.crash_resumes for c in published.checkpoints]
    # First write (before the first request): 2 crashes + this run. Once chunk 0 (where the last
    # run died) is complete, the count restarts at this run alone.
    assert counts[0] == 3 and counts[-1] == 1
    first_past = next(i for i, c in enumerate(published.checkpoints) if c.next_chunk_index >= 1)
    assert counts[:first_past] == [3] * first_past and set(counts[first_past:]) == {1}


async def test_a_checkpoint_is_written_when_the_resume_point_moves_not_per_segment(
    origin: FaultOrigin, tmp_path: Path, good_segment: bytes
) -> None:
    origin.serve("/s.ts", good_segment, content_type="video/mp2t")
    origin.serve("/live.m3u8", media_playlist([(2.0, "s.ts")] * 6))
    final, published = await run_session(f"{origin.base_url}/live.m3u8", tmp_path, chunk_seconds=4.0)
    assert final is not None and final.state is IngestState.ENDED and final.chunks_published == 3
    # Until chunk 0 is acked the resume point is the start, which has no ingestion time: those
    # checkpoints are all written (a resume reads their updated_at). Past it, 6 segments of
    # 2 s in 4 s chunks move the resume point every other segment, and only then is one written.
    moved = [c for c in published.checkpoints if c.resume_ingested_at is not None]
    assert [(c.next_chunk_index, c.resume_stream_time) for c in moved] == [(1, 4.0), (2, 8.0), (3, 12.0)]
    assert all(c.resume_stream_time == 0.0 for c in published.checkpoints[: -len(moved)])


# --------------------------------------------------------------------------- outages


async def wait_until(condition: Any, what: str, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
def live_source() -> Iterator[LiveHlsSource]:
    """A looping live stream of 1 s segments whose playlist lists only the last 2."""
    source = LiveHlsSource(short_script(2.0), segment_seconds=1.0, window=2, loop=True)
    source.start()
    try:
        yield source
    finally:
        source.stop()


def start_session(
    url: str, tmp_path: Path, **overrides: object
) -> tuple[IngestSession, RecordingPublisher, HttpFetcher]:
    publisher = RecordingPublisher()
    fetcher = HttpFetcher(FetchPolicy(retries=0, backoff_seconds=0.05, connect_timeout=1, read_timeout=2))
    values: dict[str, object] = {"live_edge_segments": 1, **overrides}
    session = IngestSession(
        command(url), hardening_settings(tmp_path, **values), fetcher, publisher, checkpoints=publisher
    )
    return session, publisher, fetcher


@pytest.mark.parametrize("how", ["HTTP 503", "connection refused"])
async def test_an_outage_shorter_than_the_tolerance_is_survived_as_a_gap(
    how: str, origin: FaultOrigin, live_source: LiveHlsSource, tmp_path: Path
) -> None:
    origin.upstream = live_source.base_url
    session, published, fetcher = start_session(
        f"{origin.base_url}/live.m3u8", tmp_path, outage_tolerance_s=10.0
    )
    running = asyncio.create_task(session.run())
    try:
        await wait_until(lambda: len(published.chunks) >= 2, "chunks before the outage")
        if how == "HTTP 503":
            origin.fail_with(503)
        else:
            origin.go_away()
        await asyncio.sleep(4.0)  # 4 segments made meanwhile; the playlist lists 2 at a time
        if how == "HTTP 503":
            origin.fail_with(None)
        else:
            origin.come_back()
        before = len(published.chunks)
        await wait_until(lambda: len(published.chunks) >= before + 3, "chunks after the outage")
        session.request_stop("user")
        final = await asyncio.wait_for(running, timeout=10)
    finally:
        running.cancel()
        await fetcher.aclose()
    assert final is not None and [r.state for r in published.lifecycle] == [
        IngestState.ACTIVE,
        IngestState.ENDED,
    ]
    assert final.ended_by == "user" and final.reason is None
    chunks = published.chunks
    assert [c.chunk_index for c in chunks] == list(range(len(chunks))) and final.chunks_published == len(
        chunks
    )
    # The recording lists the media missed during the outage as one gap.
    assert final.manifest_path is not None
    entries = manifest_entries(await asyncio.to_thread(Path(final.manifest_path).read_text))
    gaps = [e.duration for e in entries if e.gap]
    assert len(gaps) == 1 and 1.0 <= gaps[0] <= 5.0
    assert sum(e.duration for e in entries) == pytest.approx(chunks[-1].end_time, abs=0.05)
    # Stream time stays on the source's timeline: stream time minus PROGRAM-DATE-TIME is the same
    # before and after the outage (no drift), and it moved on by the missed media.
    offsets = [(f.stream_time, c.captured_at) for c in chunks for f in c.frames[:1]]
    assert len(offsets) >= 4
    first_time, first_capture = offsets[0]
    for stream_time, capture in offsets:
        drift = (capture - first_capture).total_seconds() - (stream_time - first_time)
        assert abs(drift) < 0.05, offsets


async def test_an_outage_longer_than_the_tolerance_ends_the_stream_with_a_reason(
    origin: FaultOrigin, live_source: LiveHlsSource, tmp_path: Path
) -> None:
    origin.upstream = live_source.base_url
    session, published, fetcher = start_session(
        f"{origin.base_url}/live.m3u8", tmp_path, outage_tolerance_s=2.0
    )
    running = asyncio.create_task(session.run())
    try:
        await wait_until(lambda: len(published.chunks) >= 1, "a chunk")
        origin.go_away()
        gone_at = time.monotonic()
        final = await asyncio.wait_for(running, timeout=15)
    finally:
        running.cancel()
        await fetcher.aclose()
    assert 1.5 < time.monotonic() - gone_at < 8
    assert final is not None and final.state is IngestState.ENDED and final.ended_by == "stream"
    assert final.reason is not None and final.reason.startswith("source stopped: nothing new for ")
    assert "last playlist refresh failed: cannot connect" in final.reason
    assert "longer than the outage tolerance of 2s" in final.reason
    assert final.chunks_published == len(published.chunks) >= 1


async def test_a_source_that_never_gave_video_fails_after_the_tolerance(
    origin: FaultOrigin, tmp_path: Path
) -> None:
    origin.serve("/live.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n")
    started = time.monotonic()
    final, published = await run_session(f"{origin.base_url}/live.m3u8", tmp_path, outage_tolerance_s=2.0)
    assert 1.5 < time.monotonic() - started < 8
    assert final is not None and [r.state for r in published.lifecycle] == [
        IngestState.ACTIVE,
        IngestState.FAILED,
    ]
    assert final.reason is not None and final.reason.startswith("source stopped: nothing new for ")
    assert "no video was ever ingested" in final.reason
    # Polled with backoff, not in a busy loop: 2 s at 0.5 s, 1 s, 1 s... (capped at 0.5 s here).
    assert 3 <= len(origin.requests) <= 10


async def test_a_resumed_session_waits_for_its_source_to_come_back(
    origin: FaultOrigin, live_source: LiveHlsSource, tmp_path: Path
) -> None:
    origin.upstream = live_source.base_url
    origin.fail_with(503)
    checkpoint = IngestCheckpoint(
        session_id="hard-1", stream_id="st-hard-1", command=command(f"{origin.base_url}/live.m3u8")
    )
    session, published, fetcher = start_session(
        checkpoint.command.source_url, tmp_path, outage_tolerance_s=10.0
    )
    session = IngestSession(
        checkpoint.command,
        session.settings,
        fetcher,
        published,
        checkpoints=published,
        resume_from=checkpoint,
    )
    running = asyncio.create_task(session.run())
    try:
        await asyncio.sleep(1.5)
        assert not published.lifecycle  # still waiting, not FAILED
        origin.fail_with(None)
        await wait_until(lambda: len(published.chunks) >= 1, "a chunk once the source is back")
        session.request_stop("user")
        final = await asyncio.wait_for(running, timeout=10)
    finally:
        running.cancel()
        await fetcher.aclose()
    assert final is not None and final.state is IngestState.ENDED and final.ended_by == "user"


# --------------------------------------------------------------------------- the service, on a real broker


class Observed:
    """What ingest published, read back from the topics."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.lifecycle: dict[str, list[SessionLifecycle]] = defaultdict(list)
        self.chunks: dict[str, list[ChunkRecord]] = defaultdict(list)
        self.consumer = AIOKafkaConsumer(
            topics.session_lifecycle, topics.chunks, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )

    def final(self, session_id: str) -> SessionLifecycle | None:
        reports = [r for r in self.lifecycle[session_id] if r.state is not IngestState.ACTIVE]
        return reports[-1] if reports else None

    async def read_until(self, done: Callable[[], bool], within_s: float = 30) -> None:
        deadline = time.monotonic() + within_s
        while not done():
            assert time.monotonic() < deadline, f"timed out; lifecycle so far: {dict(self.lifecycle)}"
            for messages in (await self.consumer.getmany(timeout_ms=200)).values():
                for message in messages:
                    if message.topic == self.topics.chunks:
                        chunk = decode_value(ChunkRecord, message.value)
                        self.chunks[chunk.session_id].append(chunk)
                    else:
                        report = decode_value(SessionLifecycle, message.value)
                        self.lifecycle[report.session_id].append(report)


def service_settings(bootstrap: str, topics: Topics, tmp_path: Path, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "topic_prefix": topics.prefix,
        "group_id": f"ingest-hard-{uuid.uuid4().hex[:8]}",
        "storage_dir": tmp_path,
        "chunk_seconds": 2.0,
        "http_retries": 0,
        "http_backoff_seconds": 0.05,
        "shutdown_timeout_seconds": 5,
        "outage_tolerance_s": 3.0,
        "outage_poll_max_s": 0.5,
    }
    values.update(overrides)
    return IngestSettings(**values)


def start_command(session_id: str, url: str) -> StartSession:
    return StartSession(session_id=session_id, stream_id=f"st-{session_id}", name=session_id, source_url=url)


@pytest.mark.kafka
async def test_ingest_stays_healthy_after_bad_sources(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, origin: FaultOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment = await asyncio.to_thread(ts_segment, 64, 48, 24, 12)  # 2 s
    origin.serve("/s.ts", segment, content_type="video/mp2t")
    origin.serve("/bug/s.ts", segment, content_type="video/mp2t")
    origin.serve("/nan.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:nan,\ns.ts\n")
    origin.serve("/huge.m3u8", f"#EXTM3U\n{huge_attribute_line()}\nv.m3u8\n")
    origin.serve("/bug/live.m3u8", media_playlist([(2.0, "s.ts")] * 3))
    origin.serve("/good.m3u8", media_playlist([(2.0, "s.ts")] * 3))

    real_decode = session_module.decode_segment

    def decode_with_a_bug(data: bytes, keep: Any, **options: Any) -> Any:
        if "/bug/" in str(options.get("url")):
            raise KeyError("a bug in ingest")
        return real_decode(data, keep, **options)

    monkeypatch.setattr(session_module, "decode_segment", decode_with_a_bug)
    run_id = uuid.uuid4().hex[:6]
    nan_id, huge_id, bug_id, good_id = (f"{name}-{run_id}" for name in ("nan", "huge", "bug", "good"))
    observed = Observed(kafka_bootstrap, topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    await observed.consumer.start()
    stop = asyncio.Event()
    try:
        async with IngestService(service_settings(kafka_bootstrap, topics, tmp_path)) as service:
            running = asyncio.create_task(service.run(stop))
            for session_id, path in (
                (nan_id, "/nan.m3u8"),
                (huge_id, "/huge.m3u8"),
                (bug_id, "/bug/live.m3u8"),
            ):
                command = start_command(session_id, origin.base_url + path)
                await producer.send_and_wait(
                    topics.session_commands, key=encode_key(session_id), value=encode_value(command)
                )
            await observed.read_until(lambda: all(observed.final(s) for s in (nan_id, huge_id, bug_id)))
            # Started afterwards, on the same instance: it gets its chunks.
            command = start_command(good_id, origin.base_url + "/good.m3u8")
            await producer.send_and_wait(
                topics.session_commands, key=encode_key(good_id), value=encode_value(command)
            )
            await observed.read_until(lambda: observed.final(good_id) is not None)
            await service.wait_idle()
            stop.set()
            await asyncio.wait_for(running, timeout=10)
    finally:
        await observed.consumer.stop()
        await producer.stop()

    reasons = {s: observed.final(s) for s in (nan_id, huge_id, bug_id)}
    assert all(r is not None and r.state is IngestState.FAILED for r in reasons.values())
    assert "#EXTINF duration is not finite" in (reasons[nan_id].reason or "")  # type: ignore[union-attr]
    assert "line 2 is longer than 16384 bytes" in (reasons[huge_id].reason or "")  # type: ignore[union-attr]
    assert (reasons[bug_id].reason or "").startswith("internal ingest error (KeyError)")  # type: ignore[union-attr]
    good = observed.final(good_id)
    assert good is not None and good.state is IngestState.ENDED and good.ended_by == "stream"
    assert good.chunks_published == len(observed.chunks[good_id]) == 3


async def crash_counts(reader: AIOKafkaConsumer, topics: Topics) -> dict[str, int]:
    """``crash_resumes`` of each open checkpoint (``reader``: a started group-less consumer)."""
    opened = await read_open_checkpoints(reader, topics.ingest_checkpoints, list(range(topics.partitions)))
    return {checkpoint.session_id: checkpoint.crash_resumes for _, checkpoint in opened}


async def wait_for_count(reader: AIOKafkaConsumer, topics: Topics, session_id: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while (await crash_counts(reader, topics)).get(session_id) != count:
        assert time.monotonic() < deadline, f"checkpoint never counted {count} crash(es)"
        await asyncio.sleep(0.2)


@pytest.mark.kafka
async def test_a_session_that_keeps_crashing_its_instance_is_quarantined(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    # Long chunks: the crashes below come before a resumed run completes the chunk the previous
    # run died in (which would reset the count).
    settings = service_settings(kafka_bootstrap, topics, tmp_path, chunk_seconds=30.0, max_crash_resumes=2)
    session_id = f"poison-{uuid.uuid4().hex[:6]}"
    observed = Observed(kafka_bootstrap, topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None)
    source = LiveHlsSource(short_script(2.0), segment_seconds=1.0, loop=True)
    await producer.start()
    await observed.consumer.start()
    await reader.start()
    await asyncio.to_thread(source.start)

    async def run_instance(then: str, expected_count: int | None) -> None:
        async with IngestService(settings) as service:
            stop = asyncio.Event()
            running = asyncio.create_task(service.run(stop))
            if expected_count is not None:
                await wait_for_count(reader, topics, session_id, expected_count)
            if then == "crash":  # the process dies: no suspension, no final report
                for task in list(service._tasks.values()):
                    task.cancel()
                await asyncio.gather(*service._tasks.values(), return_exceptions=True)
            elif then == "quarantine":
                await observed.read_until(lambda: observed.final(session_id) is not None)
                await service.wait_idle()
            stop.set()  # "stop": a clean shutdown suspends the session
            await asyncio.wait_for(running, timeout=10)

    try:
        command = start_command(session_id, source.url)
        await producer.send_and_wait(
            topics.session_commands, key=encode_key(session_id), value=encode_value(command)
        )
        await run_instance("stop", expected_count=1)  # the run counts itself ahead...
        # ...and a clean stop takes it back.
        assert (await crash_counts(reader, topics))[session_id] == 0
        await run_instance("crash", expected_count=1)
        await run_instance("crash", expected_count=2)
        await run_instance("quarantine", expected_count=None)
        remaining = await crash_counts(reader, topics)
    finally:
        await asyncio.to_thread(source.stop)
        await reader.stop()
        await observed.consumer.stop()
        await producer.stop()

    final = observed.final(session_id)
    assert final is not None and final.state is IngestState.FAILED
    assert final.reason is not None and final.reason.startswith("crashed ingest 2 times")
    assert session_id not in remaining  # its checkpoint is tombstoned: nobody resumes it again
