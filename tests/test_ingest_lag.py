"""The overload policy: its pure parts (lag measurement, the policy state machine, report rate
limiting, the sampler's rate change, the aggregator copying the lag view into the header), and
one session against a real local HLS source with an in-memory publisher whose chunks nobody
commits (``test_lag_policy_stack`` runs the policy on the real stack)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

import ingest.session
from aggregator.reducer import fold
from ingest.checkpoint import START_MARK, build_checkpoint, mark_of
from ingest.chunker import Chunk
from ingest.encode import EncodedChunk
from ingest.fetch import FetchPolicy, HttpFetcher
from ingest.lag import (
    ChunkLag,
    LagPolicy,
    LagReport,
    LagState,
    next_state,
    overlap,
    report_due,
    source_edge,
)
from ingest.sampler import FrameSampler
from ingest.session import IngestSession
from ingest.settings import IngestSettings
from livestream.stages import StageTimes
from livestream.testsource import LiveHlsSource, short_script
from schemas.records import ChunkRecord, IngestState, SessionLifecycle, StartSession


def test_lag_counts_from_the_oldest_uncommitted_chunk() -> None:
    lag = ChunkLag()
    assert lag.lag(6.0) == 6.0  # nothing published yet: all of it is ahead of the analyzers
    for index in range(5):
        lag.published(1, 100 + index, index * 4.0, index * 4.0 + 4.0)
    assert lag.partitions == {1}
    assert lag.lag(22.0) == 22.0  # nothing committed
    lag.committed({1: 102})  # offsets 100, 101 done: chunk 2 (from 8 s) is the oldest left
    assert lag.pending == 3 and lag.lag(22.0) == 14.0
    lag.committed({1: 101, 0: 500})  # an older answer and another partition change nothing
    assert lag.lag(22.0) == 14.0
    lag.committed({1: 105})
    assert lag.pending == 0 and lag.lag(22.0) == 2.0  # edge minus the newest chunk's end
    assert lag.lag(10.0) == 0.0  # never negative


def test_the_source_edge_counts_media_made_while_ingest_is_overdue_for_a_reload() -> None:
    # Within one reload interval of the load, the listed edge is as fresh as HLS allows.
    assert source_edge(10.0, listed_at=100.0, reload_interval=2.0, now=101.5) == 10.0
    # Overdue by 5 s (ingest busy with what the load listed): a live source made 5 s more.
    assert source_edge(10.0, listed_at=100.0, reload_interval=2.0, now=107.0) == 15.0
    # The load listed nothing new, or the playlist ended: nothing says the source goes on.
    assert source_edge(10.0, listed_at=None, reload_interval=2.0, now=1000.0) == 10.0


def test_lag_without_an_answer_for_the_partition_keeps_chunks_pending() -> None:
    lag = ChunkLag(analysed_to=40.0)  # a resumed session: chunks before 40 s count as analysed
    assert lag.lag(44.0) == 4.0
    lag.published(2, 7, 40.0, 44.0)
    lag.committed({})
    assert lag.lag(50.0) == 10.0


def test_lag_is_bounded() -> None:
    lag = ChunkLag(max_pending=3)
    for index in range(5):
        lag.published(0, index, index * 1.0, index + 1.0)
    assert lag.pending == 3 and lag.analysed_to() == 2.0  # the oldest two are forgotten


SKIP = LagPolicy(policy="skip", max_lag_s=10.0, sample_fps=2.0)


def test_skip_starts_past_max_lag_and_ends_below_half_of_it() -> None:
    state = LagState.initial(SKIP)
    step = next_state(SKIP, state, 10.0, 0.0)
    assert step.action is None and not step.state.skipping  # at the limit: nothing yet
    step = next_state(SKIP, step.state, 10.5, 2.0)
    assert step.action == "skip" and step.state.skipping and step.state.actions == 1
    step = next_state(SKIP, step.state, 30.0, 4.0)
    assert step.action is None and step.state.actions == 1  # one action per skip
    step = next_state(SKIP, step.state, 6.0, 6.0)
    assert step.action is None and step.state.skipping  # hysteresis: not below 5 s yet
    step = next_state(SKIP, step.state, 4.0, 8.0)
    assert step.action == "resume" and not step.state.skipping and step.state.actions == 1
    assert step.state.sample_fps == 2.0


def test_queue_turns_into_its_fallback_past_max_lag() -> None:
    queue = LagPolicy(policy="queue", max_lag_s=10.0, fallback="skip")
    assert queue.action == "skip"
    assert LagPolicy(policy="queue").action == "thin"  # the default fallback
    assert LagPolicy().action == "thin"  # the default policy (the capacity benchmark's choice)
    assert next_state(queue, LagState.initial(queue), 9.0, 0.0).action is None
    assert next_state(queue, LagState.initial(queue), 11.0, 0.0).action == "skip"


THIN = LagPolicy(policy="thin", max_lag_s=10.0, sample_fps=2.0, thin_min_fps=0.5, thin_step_s=5.0)


def test_thin_halves_the_rate_down_to_the_floor_then_restores_it() -> None:
    step = next_state(THIN, LagState.initial(THIN), 12.0, 0.0)
    assert step.action == "thin" and step.state.sample_fps == 1.0 and step.state.actions == 1
    # Too soon for another halving, even though the lag grew.
    step = next_state(THIN, step.state, 14.0, 2.0)
    assert step.action is None and step.state.sample_fps == 1.0
    # Long enough, but the lag fell since the halving: the analyzers are catching up.
    assert next_state(THIN, step.state, 11.0, 6.0).action is None
    step = next_state(THIN, step.state, 15.0, 6.0)
    assert step.action == "thin" and step.state.sample_fps == 0.5 and step.state.actions == 2
    step = next_state(THIN, step.state, 40.0, 20.0)
    assert step.action is None and step.state.sample_fps == 0.5  # the floor
    step = next_state(THIN, step.state, 7.0, 22.0)
    assert step.action is None  # between half and max: hold
    step = next_state(THIN, step.state, 4.0, 24.0)
    assert step.action == "restore" and step.state.sample_fps == 2.0 and step.state.actions == 2
    # Thinning starts over from the full rate.
    assert next_state(THIN, step.state, 11.0, 25.0).state.sample_fps == 1.0


def test_thin_floor_above_the_rate_never_thins() -> None:
    policy = LagPolicy(policy="thin", max_lag_s=10.0, sample_fps=0.5, thin_min_fps=1.0)
    assert next_state(policy, LagState.initial(policy), 100.0, 0.0).action is None


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        LagPolicy(max_lag_s=0)


def test_reports_are_material_and_rate_limited() -> None:
    quiet = LagReport(lag_s=3.0, skipped_s=0.0, sample_fps=2.0, lag_actions=0)
    assert not report_due(None, quiet, 60.0, 5.0, 6.0)  # a healthy session's wobble
    lagging = LagReport(lag_s=20.0, skipped_s=0.0, sample_fps=2.0, lag_actions=0)
    assert report_due(None, lagging, 60.0, 5.0, 6.0)
    assert not report_due(None, lagging, 4.0, 5.0, 6.0)  # at most every 5 s
    skipped = LagReport(lag_s=20.0, skipped_s=4.0, sample_fps=2.0, lag_actions=1)
    assert report_due(lagging, skipped, 5.0, 5.0, 6.0)
    assert not report_due(skipped, skipped, 100.0, 5.0, 6.0)
    assert report_due(skipped, LagReport(20.0, 4.0, 1.0, 1), 5.0, 5.0, 6.0)
    assert report_due(skipped, LagReport(20.0, 4.0, 2.0, 1, skipping=True), 5.0, 5.0, 6.0)


def test_overlap_of_skipped_spans() -> None:
    spans = [(2.0, 4.0), (4.0, 6.0), (9.0, 10.0)]
    assert overlap(spans, 0.0, 4.0) == 2.0
    assert overlap(spans, 4.0, 8.0) == 2.0
    assert overlap(spans, 8.0, 12.0) == 1.0
    assert overlap([], 0.0, 4.0) == 0.0


def test_sampler_rate_change_keeps_time_moving_forward() -> None:
    sampler = FrameSampler(2.0)
    times = [i / 10 for i in range(0, 40)]  # 10 fps for 4 s
    kept = [t for t in times[:20] if sampler.accept(t)]
    assert kept == [0.0, 0.5, 1.0, 1.5]
    sampler.set_fps(0.5)  # one frame every 2 s from here on, on the new grid
    kept = [t for t in times[20:] if sampler.accept(t)]
    assert kept == [2.0]  # slot 1 of the 0.5 fps grid (1.5 was in slot 0)
    assert not sampler.accept(3.9) and sampler.accept(4.0)
    sampler.set_fps(2.0)
    assert not sampler.accept(4.1) and sampler.accept(4.5)
    with pytest.raises(ValueError):
        sampler.set_fps(0)


def _start() -> StartSession:
    return StartSession(
        session_id="sess-lag",
        stream_id="stream-1",
        name="lag",
        source_url="http://example.com/live.m3u8",
        requested_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def _report(state: IngestState = IngestState.ACTIVE, **lag: float) -> SessionLifecycle:
    return SessionLifecycle(session_id="sess-lag", stream_id="stream-1", state=state, **lag)  # type: ignore[arg-type]


def test_the_header_shows_ingest_lag_and_never_loses_totals() -> None:
    now = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    header = fold(None, _start(), now).header
    header = fold(header, _report(), now).header
    assert header is not None and header.ingest_lag_s is None and header.skipped_time_s is None
    lagging = _report(lag_s=31.5, skipped_s=8.0, sample_fps=2.0, lag_actions=1, skipping=True)
    header = fold(header, lagging, now).header
    assert header is not None and header.ingest_skipping is True
    assert (header.ingest_lag_s, header.skipped_time_s, header.sample_fps, header.lag_actions) == (
        31.5,
        8.0,
        2.0,
        1,
    )
    # A resumed run restarts its totals from a checkpoint a little behind: they do not go back.
    resumed = fold(header, _report(lag_s=3.0, skipped_s=6.0, sample_fps=1.0, lag_actions=1), now).header
    assert resumed is not None
    assert (resumed.ingest_lag_s, resumed.skipped_time_s, resumed.sample_fps, resumed.lag_actions) == (
        3.0,
        8.0,
        1.0,
        1,
    )
    # A report without the fields (an older ingest) keeps them.
    same = fold(resumed, _report(), now)
    assert not same.changed
    ended = fold(resumed, _report(IngestState.ENDED, lag_s=0.5, skipped_s=12.0, lag_actions=2), now).header
    assert ended is not None and ended.skipped_time_s == 12.0 and ended.lag_actions == 2


# --------------------------------------------------------------------------- one session, no Kafka


class LaggingPublisher:
    """Acks chunks at growing offsets of partition 0 that nobody ever commits, and measures the
    session's lag after each one (where the service would, every ``lag_check_interval_s``)."""

    def __init__(self) -> None:
        self.chunks: list[ChunkRecord] = []
        self.lifecycle: list[SessionLifecycle] = []
        self.session: IngestSession | None = None

    async def publish_chunk(self, chunk: EncodedChunk, stages: StageTimes) -> tuple[int, int]:
        self.chunks.append(chunk.record)
        return 0, len(self.chunks) - 1

    async def publish_lifecycle(self, record: SessionLifecycle) -> None:
        self.lifecycle.append(record)

    def measure(self) -> None:
        assert self.session is not None
        self.session.observe_lag({0: 0}, float(len(self.chunks)))


@pytest.fixture(scope="module")
def ended_source() -> Iterator[LiveHlsSource]:
    """6 s in 1 s segments, ended, every segment listed: stream time 6 s is the edge at once."""
    with LiveHlsSource(short_script(2.0), segment_seconds=1.0, realtime=False, window=100) as source:
        assert source.wait_finished(timeout=60)
        yield source


async def _run(
    source: LiveHlsSource, tmp_path: Path, **policy: object
) -> tuple[IngestSession, LaggingPublisher]:
    settings = IngestSettings(
        storage_dir=tmp_path,
        chunk_seconds=2.0,
        sample_fps=2.0,
        max_lag_s=1.0,
        **policy,  # type: ignore[arg-type]
    )
    publisher = LaggingPublisher()
    fetcher = HttpFetcher(FetchPolicy(retries=1, backoff_seconds=0.05, connect_timeout=2, read_timeout=5))
    session = IngestSession(
        StartSession(session_id="sess-lag", stream_id="stream-lag", name="lag", source_url=source.url),
        settings,
        fetcher,
        publisher,
    )
    publisher.session = session
    publish = session._publish

    async def publish_then_measure(chunks: list[Chunk], stages: StageTimes | None = None) -> None:
        await publish(chunks, stages)
        if chunks:
            publisher.measure()

    session._publish = publish_then_measure  # type: ignore[method-assign]
    try:
        final = await asyncio.wait_for(session.run(), timeout=60)
    finally:
        await fetcher.aclose()
    assert final is not None and final.state is IngestState.ENDED
    return session, publisher


async def test_skip_leaves_empty_chunks_and_gaps_that_say_so(
    ended_source: LiveHlsSource, tmp_path: Path
) -> None:
    session, publisher = await _run(ended_source, tmp_path, lag_policy="skip")
    chunks = publisher.chunks
    assert [c.chunk_index for c in chunks] == [0, 1, 2]  # contiguous through the skip
    assert len(chunks[0].frames) == 4 and chunks[0].skipped_s == 0.0
    # After chunk 0 the lag (6 s edge, nothing committed) is past 1 s: segments 2..5 are skipped.
    assert [(len(c.frames), c.skipped_s) for c in chunks[1:]] == [(0, 2.0), (0, 2.0)]
    final = publisher.lifecycle[-1]
    assert final.skipped_s == 4.0 and final.lag_actions == 1 and final.skipping is True
    assert final.lag_s is not None and final.lag_s > 1.0
    manifest = session.store.manifest_path.read_text()
    assert manifest.count("#EXT-X-GAP") == 4


async def test_thin_halves_the_sampling_rate_of_a_lagging_session(
    ended_source: LiveHlsSource, tmp_path: Path
) -> None:
    _session, publisher = await _run(
        ended_source, tmp_path, lag_policy="thin", thin_step_s=0.0, thin_min_fps=0.5
    )
    chunks = publisher.chunks
    assert [(len(c.frames), c.sample_fps) for c in chunks] == [(4, 2.0), (2, 1.0), (1, 0.5)]
    assert all(c.skipped_s == 0.0 for c in chunks)
    final = publisher.lifecycle[-1]
    assert final.sample_fps == 0.5 and final.lag_actions == 2 and final.skipped_s == 0.0


async def test_a_resumed_session_keeps_the_policy_totals(tmp_path: Path) -> None:
    command = StartSession(session_id="sess-r", stream_id="stream-r", name="r", source_url="http://x/l.m3u8")
    mark = replace(START_MARK, media_sequence=5, stream_time=8.0, skipped_s=4.0)
    checkpoint = build_checkpoint(command, 4, 2.0, mark, 1, lag_actions=2)
    assert (checkpoint.skipped_s, checkpoint.lag_actions) == (4.0, 2)
    assert mark_of(checkpoint).skipped_s == 4.0
    fetcher = HttpFetcher(FetchPolicy())
    try:
        session = IngestSession(
            command, IngestSettings(storage_dir=tmp_path), fetcher, LaggingPublisher(), resume_from=checkpoint
        )
    finally:
        await fetcher.aclose()
    assert session.skipped_s == 4.0 and session.lag_state.actions == 2
    # Chunks of the interrupted run count as analysed: the lag counts from the resume point on.
    assert session.chunk_lag.analysed_to() == 8.0


async def test_a_session_behind_its_live_source_counts_what_it_has_not_listed_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest reloads a playlist once it is through what the last load listed. While one
    segment's decoding holds the session (a machine short of CPU), the live source goes on
    publishing, and the lag counts that (``ingest.lag.source_edge``); measured from the listed
    edge alone it stayed at one segment."""
    decoding, release = threading.Event(), threading.Event()
    real_decode = ingest.session.decode_segment

    def held_decode(*args: object, **kwargs: object) -> object:
        decoding.set()
        release.wait(timeout=30)
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest.session, "decode_segment", held_decode)
    with LiveHlsSource(short_script(20.0), segment_seconds=1.0, window=100) as source:
        settings = IngestSettings(storage_dir=tmp_path, chunk_seconds=2.0, live_edge_segments=1)
        fetcher = HttpFetcher(FetchPolicy(retries=1, backoff_seconds=0.05, connect_timeout=2, read_timeout=5))
        session = IngestSession(
            StartSession(session_id="sess-behind", stream_id="s", name="behind", source_url=source.url),
            settings,
            fetcher,
            LaggingPublisher(),
        )
        run = asyncio.create_task(session.run())
        try:
            assert await asyncio.to_thread(decoding.wait, 30)
            # The one load so far listed one segment (the newest): stream time 0-1 s is it.
            assert session.tracker.stream_time == 1.0
            joined_at = session.tracker.last_media_sequence
            assert joined_at is not None
            await asyncio.sleep(4.0)
            lag = session.observe_lag({}, asyncio.get_running_loop().time())  # nothing committed
            # The source's edge in the session's stream time (media sequences count from 0).
            real_edge = source.segments_published - joined_at
            assert real_edge >= 4.0
            # The source's media runs up to a segment (1 s) past its last published one; the lag
            # leaves out the reload interval (1 s) within which the listed edge is fresh anyway.
            assert real_edge - 2.0 <= lag <= real_edge + 1.0
        finally:
            release.set()
            session.request_stop()
            await asyncio.wait_for(run, timeout=30)
            await fetcher.aclose()
