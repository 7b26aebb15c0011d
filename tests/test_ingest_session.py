"""One ingest session end to end against a real local HLS source (HTTP, PyAV), without Kafka.

Records go to an in-memory ``RecordPublisher`` (the session's output interface); the Kafka
publisher and the command flow are covered by ``test_ingest_kafka``.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import ingest.session
from ingest.decode import DecodedSegment
from ingest.encode import EncodedChunk
from ingest.errors import FetchError
from ingest.fetch import FetchPolicy, HttpFetcher
from ingest.playlist import MediaPlaylist, parse_playlist
from ingest.session import IngestSession
from ingest.settings import IngestSettings
from livestream.stages import StageTimes
from livestream.testsource import HlsHttpServer, LiveHlsSource, short_script
from schemas.records import ChunkRecord, IngestState, SessionLifecycle, StartSession

SEGMENT_SECONDS = 1.0


class RecordingPublisher:
    def __init__(self) -> None:
        self.chunks: list[ChunkRecord] = []
        self.lifecycle: list[SessionLifecycle] = []
        self.stages: list[StageTimes] = []

    async def publish_chunk(self, chunk: EncodedChunk, stages: StageTimes) -> None:
        self.chunks.append(chunk.record)
        self.stages.append(stages)

    async def publish_lifecycle(self, record: SessionLifecycle) -> None:
        self.lifecycle.append(record)


@pytest.fixture(scope="module")
def ended_source() -> Iterator[LiveHlsSource]:
    """6 s (cat, gray, cup), already ended, every segment still listed."""
    with LiveHlsSource(
        short_script(2.0), segment_seconds=SEGMENT_SECONDS, realtime=False, window=100
    ) as source:
        assert source.wait_finished(timeout=60)
        yield source


def settings_for(tmp_path: Path, **overrides: object) -> IngestSettings:
    values: dict[str, object] = {
        "storage_dir": tmp_path,
        "chunk_seconds": 2.0,
        "sample_fps": 2.0,
        "http_retries": 1,
        "http_backoff_seconds": 0.05,
        "stall_target_durations": 2.0,
        "outage_tolerance_s": 2.0,
        "outage_poll_max_s": 0.5,
    }
    values.update(overrides)
    return IngestSettings(**values)  # type: ignore[arg-type]


def start_command(url: str, session_id: str = "sess-1") -> StartSession:
    return StartSession(
        session_id=session_id,
        stream_id=f"stream-{session_id}",
        name="test",
        source_url=url,
        rapid_review_query="cat",
    )


async def run_session(
    url: str, tmp_path: Path, **overrides: object
) -> tuple[SessionLifecycle, RecordingPublisher]:
    publisher = RecordingPublisher()
    fetcher = HttpFetcher(FetchPolicy(retries=1, backoff_seconds=0.05, connect_timeout=2, read_timeout=5))
    try:
        session = IngestSession(start_command(url), settings_for(tmp_path, **overrides), fetcher, publisher)
        final = await asyncio.wait_for(session.run(), timeout=60)
    finally:
        await fetcher.aclose()
    return final, publisher


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_ended_stream_via_master_playlist_is_chunked_on_stream_time(
    ended_source: LiveHlsSource, tmp_path: Path
) -> None:
    final, published = await run_session(ended_source.master_url, tmp_path)

    assert [r.state for r in published.lifecycle] == [IngestState.ACTIVE, IngestState.ENDED]
    assert final.ended_by == "stream" and final.reason is None
    assert final.chunks_published == len(published.chunks) == 3
    chunks = published.chunks
    assert [c.chunk_index for c in chunks] == [0, 1, 2]
    assert [c.chunk_id for c in chunks] == ["sess-1-c000000", "sess-1-c000001", "sess-1-c000002"]
    assert [(c.start_time, c.end_time) for c in chunks] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    assert [c.media_sequences for c in chunks] == [[0, 1], [2, 3], [4, 5]]
    for chunk in chunks:
        assert chunk.rapid_review_query == "cat"
        assert [f.stream_time for f in chunk.frames] == pytest.approx(
            [chunk.start_time + k * 0.5 for k in range(4)], abs=0.05
        )
    # Stream time matches the script: 2-4 s is the plain gray scene, 0-2 s the cat photo.
    gray = [np.asarray(Image.open(io.BytesIO(f.jpeg))) for f in chunks[1].frames]
    cat = [np.asarray(Image.open(io.BytesIO(f.jpeg))) for f in chunks[0].frames]
    assert all(abs(float(img.mean()) - 128) < 6 and float(img.std()) < 6 for img in gray)
    assert all(float(img.std()) > 20 for img in cat)
    assert (chunks[0].frames[0].width, chunks[0].frames[0].height) == (640, 360)
    # captured_at comes from PROGRAM-DATE-TIME: stream time 0 is the source's start;
    # capture_time is the first frame's stream time.
    assert ended_source.started_at is not None
    assert abs(chunks[0].captured_at - ended_source.started_at) < timedelta(milliseconds=50)
    assert chunks[0].capture_time == chunks[0].frames[0].stream_time
    # Every chunk was completed by a decoded segment: its stamps are ingest's four, in order.
    for stages in published.stages:
        assert [stage for stage, _ in stages.stamps] == [
            "segment_listed",
            "segment_fetched",
            "segment_decoded",
            "chunk_published",
        ]
        times = [when for _, when in stages.stamps]
        assert times == sorted(times) and times[-1] - times[0] < 30

    assert final.manifest_path is not None
    manifest = Path(final.manifest_path)
    recorded = parse_playlist(await asyncio.to_thread(manifest.read_text), manifest.as_uri())
    assert isinstance(recorded, MediaPlaylist) and recorded.ended
    assert len(recorded.segments) == 6
    assert sum(s.duration for s in recorded.segments) == pytest.approx(6.0, abs=0.01)
    assert all((manifest.parent / Path(s.uri).name).stat().st_size > 0 for s in recorded.segments)


@pytest.mark.parametrize(("setting", "thread_type"), [(None, "NONE"), ("frame", "FRAME")])
async def test_the_decoder_threads_setting_reaches_the_decoder(
    ended_source: LiveHlsSource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
    thread_type: str,
) -> None:
    seen: list[str] = []
    decode = ingest.session.decode_segment

    def recording(*args: Any, **kwargs: Any) -> DecodedSegment:
        seen.append(kwargs["thread_type"])
        return decode(*args, **kwargs)

    monkeypatch.setattr(ingest.session, "decode_segment", recording)
    overrides = {} if setting is None else {"decode_threads": setting}
    final, published = await run_session(ended_source.master_url, tmp_path, **overrides)
    assert final.ended_by == "stream" and len(published.chunks) == 3
    assert seen == [thread_type] * 6  # every segment, decoded as configured (default: no threads)


async def test_live_join_starts_at_the_live_edge(ended_source: LiveHlsSource, tmp_path: Path) -> None:
    # Serve the same segments as a live playlist (no ENDLIST) that then stalls.
    live_dir = tmp_path / "origin"
    assert ended_source.out_dir is not None
    shutil.copytree(ended_source.out_dir, live_dir)
    playlist_path = live_dir / "live.m3u8"
    playlist_path.write_text(playlist_path.read_text().replace("#EXT-X-ENDLIST\n", ""))
    server = HlsHttpServer(live_dir)
    server.start()
    try:
        final, published = await run_session(f"{server.base_url}/live.m3u8", tmp_path / "store")
    finally:
        server.stop()
    # Joined at the last 2 segments (4-6 s of the script), which become stream time 0-2 s. The
    # playlist then stops growing: past the outage tolerance the stream is over (it had worked).
    assert [r.state for r in published.lifecycle] == [IngestState.ACTIVE, IngestState.ENDED]
    assert final.ended_by == "stream"
    assert final.reason is not None and "source stopped: nothing new for" in final.reason
    assert "longer than the outage tolerance of 2s" in final.reason
    assert [c.chunk_index for c in published.chunks] == [0]
    assert published.chunks[0].media_sequences == [4, 5]
    assert final.chunks_published == 1


async def test_unreachable_source_fails_with_a_readable_reason(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/x.m3u8"
    final, published = await run_session(url, tmp_path)
    assert [r.state for r in published.lifecycle] == [IngestState.FAILED]
    assert final.reason is not None and url in final.reason
    assert "cannot connect: Connection refused" in final.reason
    assert final.chunks_published == 0 and published.chunks == []


async def test_non_playlist_and_missing_playlist_fail(ended_source: LiveHlsSource, tmp_path: Path) -> None:
    not_a_playlist, _ = await run_session(f"{ended_source.base_url}/segment_000000.ts", tmp_path / "a")
    assert not_a_playlist.state is IngestState.FAILED
    assert not_a_playlist.reason is not None
    assert "not an HLS playlist: no #EXTM3U header" in not_a_playlist.reason
    assert "content_type=video/mp2t" in not_a_playlist.reason
    missing, _ = await run_session(f"{ended_source.base_url}/nope.m3u8", tmp_path / "b")
    assert missing.state is IngestState.FAILED
    assert missing.reason is not None and "HTTP 404" in missing.reason


async def test_fetcher_retries_then_raises_with_status(ended_source: LiveHlsSource) -> None:
    fetcher = HttpFetcher(FetchPolicy(retries=2, backoff_seconds=0.01))
    try:
        with pytest.raises(FetchError) as caught:
            await fetcher.get(f"{ended_source.base_url}/missing.ts")
        assert caught.value.status == 404
        assert caught.value.context["attempts"] == 3
        fetched = await fetcher.get(ended_source.url)
        assert fetched.status == 200 and fetched.text.startswith("#EXTM3U")
    finally:
        await fetcher.aclose()
