"""Ingest sessions survive restarts and failover through checkpoints on a compacted topic.

Pure parts first (checkpoint -> resume position, rejoin gaps, the stored manifest on resume),
then the service on a real broker: a session is suspended by a clean stop, resumed by a second
instance of the same group, that instance "crashes" (its session task is killed, nothing is
flushed), a third one resumes it and the user ends it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ingest.checkpoint import (
    START_MARK,
    SegmentMark,
    build_checkpoint,
    mark_of,
    open_checkpoints,
    rejoin_gap_seconds,
    resume_mark,
    wall_clock_gap,
)
from ingest.playlist import MediaPlaylist, Segment
from ingest.service import IngestService, read_open_checkpoints
from ingest.settings import IngestSettings
from ingest.storage import SegmentStore, manifest_entries
from ingest.tracker import PlaylistTracker
from livestream.kafka.serde import decode_value, encode_key, encode_value
from livestream.testsource import LiveHlsSource, short_script
from schemas.records import (
    ChunkRecord,
    EndSession,
    IngestCheckpoint,
    IngestState,
    SessionLifecycle,
    StartSession,
)
from schemas.topics import Topics

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
URL = "http://origin.test/live.m3u8"
COMMAND = StartSession(session_id="s1", stream_id="st1", name="n", source_url=URL)


def mark(sequence: int, end: float, **extra: object) -> SegmentMark:
    values: dict[str, object] = {
        "media_sequence": sequence,
        "stream_time": end,
        "program_date_time": T0 + timedelta(seconds=end),
        "ingested_at": T0 + timedelta(seconds=end + 1),
        "segments_decoded": sequence + 1,
        "manifest_entries": sequence + 1,
        "segments_yielded": sequence + 1,
    }
    values.update(extra)
    return SegmentMark(**values)  # type: ignore[arg-type]


def window(first: int, count: int, *, duration: float = 2.0, dated: bool = True) -> MediaPlaylist:
    segments = tuple(
        Segment(
            media_sequence=n,
            uri=f"http://origin.test/s{n}.ts",
            duration=duration,
            program_date_time=T0 + timedelta(seconds=n * duration) if dated else None,
        )
        for n in range(first, first + count)
    )
    return MediaPlaylist(URL, duration, first, segments)


# --------------------------------------------------------------------------- pure logic


def test_resume_mark_is_the_last_segment_ending_within_the_covered_time() -> None:
    marks = [mark(0, 1.5), mark(1, 3.0), mark(2, 4.5), mark(3, 6.0)]
    assert resume_mark(marks, 4.0) == marks[1]  # segment 2 straddles 4.0: ingest it again
    assert resume_mark(marks, 6.0) == marks[3]
    assert resume_mark(marks, 1.0) == START_MARK  # nothing ended yet: from the start
    assert resume_mark([], 4.0) == START_MARK


def test_checkpoint_round_trips_its_resume_point() -> None:
    point = mark(4, 9.0)
    checkpoint = build_checkpoint(COMMAND, chunks_published=5, chunk_seconds=2.0, mark=point)
    assert (checkpoint.next_chunk_index, checkpoint.chunks_published) == (5, 5)
    assert checkpoint.covered_time == 10.0
    assert checkpoint.command == COMMAND and checkpoint.session_id == "s1"
    again = IngestCheckpoint.model_validate_json(checkpoint.to_bytes())
    assert mark_of(again, segments_yielded=point.segments_yielded) == point
    assert wall_clock_gap(again, T0 + timedelta(seconds=40)) == pytest.approx(30.0)


def test_open_checkpoints_keep_the_latest_value_and_drop_tombstones() -> None:
    def value(session_id: str, index: int) -> bytes:
        command = COMMAND.model_copy(update={"session_id": session_id})
        return build_checkpoint(command, index, 2.0, START_MARK).to_bytes()

    records = [
        (b"a", value("a", 1)),
        (b"b", value("b", 1)),
        (b"a", value("a", 3)),
        (b"b", None),  # b ended
        (b"c", value("c", 2)),
        (b"c", b"{not json"),  # poison: ignored, c's older checkpoint stays
        (None, value("d", 1)),
    ]
    opened = open_checkpoints(records)
    assert sorted(opened) == ["a", "c"]
    assert opened["a"].next_chunk_index == 3 and opened["c"].next_chunk_index == 2


def test_rejoin_gap_prefers_program_date_time_and_falls_back_to_wall_clock() -> None:
    after = T0 + timedelta(seconds=25)
    assert rejoin_gap_seconds(T0, after, wall_clock_seconds=27, target_duration=2) == pytest.approx(25)
    # No date on one side, a date going backwards, or one far off the wall clock: wall clock.
    assert rejoin_gap_seconds(None, after, 27, 2) == pytest.approx(27)
    assert rejoin_gap_seconds(T0, T0 - timedelta(seconds=5), 27, 2) == pytest.approx(27)
    assert rejoin_gap_seconds(T0, T0 + timedelta(days=1), 27, 2) == pytest.approx(27)
    assert rejoin_gap_seconds(None, None, -3, 2) == 0.0


def test_resumed_tracker_continues_after_its_segment_when_the_playlist_still_lists_it() -> None:
    tracker = PlaylistTracker(live_edge_segments=2)
    tracker.resume(mark(4, 10.0), wall_clock_gap=30.0)
    update = tracker.update(window(2, 6))  # segments 2..7: 5, 6, 7 are new
    assert [s.media_sequence for s in update.new_segments] == [5, 6, 7]
    assert [s.stream_start for s in update.new_segments] == [10.0, 12.0, 14.0]
    assert update.new_segments[0].missed_duration_before == 0.0
    assert update.new_segments[0].ordinal == 5


def test_resumed_tracker_counts_segments_that_slid_out_as_a_gap() -> None:
    tracker = PlaylistTracker(live_edge_segments=2)
    tracker.resume(mark(4, 10.0), wall_clock_gap=30.0)
    update = tracker.update(window(9, 3))  # 5..8 slid out (8 s by PROGRAM-DATE-TIME)
    first = update.new_segments[0]
    assert first.media_sequence == 9 and first.discontinuity
    assert first.missed_duration_before == pytest.approx(8.0)
    assert first.stream_start == pytest.approx(18.0)


def test_resumed_tracker_rejoins_a_restarted_source_at_its_live_edge_after_a_gap() -> None:
    by_wall_clock = PlaylistTracker(live_edge_segments=2)
    by_wall_clock.resume(mark(40, 10.0), wall_clock_gap=30.0)
    update = by_wall_clock.update(window(0, 5, dated=False))  # sequence reset, no dates
    assert [s.media_sequence for s in update.new_segments] == [3, 4]
    assert update.new_segments[0].missed_duration_before == pytest.approx(30.0)
    assert update.new_segments[0].stream_start == pytest.approx(40.0)
    assert update.new_segments[0].discontinuity

    # Nothing ingested before, but chunks published (a segment longer than a chunk): rejoin
    # after the wall-clock gap too.
    fresh = PlaylistTracker(live_edge_segments=2)
    fresh.resume(START_MARK, wall_clock_gap=12.0)
    first = fresh.update(window(0, 5, dated=False)).new_segments[0]
    assert first.stream_start == pytest.approx(12.0)
    # Nothing to bridge at all: a plain start at stream time 0.
    plain = PlaylistTracker(live_edge_segments=2)
    plain.resume(START_MARK, wall_clock_gap=None)
    assert plain.update(window(0, 5)).new_segments[0].stream_start == 0.0


def test_store_resume_keeps_the_checkpointed_entries_or_pads_with_a_gap(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "s1")
    store.open()
    store.add_segment(b"a", 2.0, "http://x/a.ts")
    store.add_gap(2.0)
    store.add_segment(b"b", 2.0, "http://x/b.ts", discontinuity=True)
    store.add_segment(b"c", 2.0, "http://x/c.ts")  # after the checkpoint: ingested again on resume
    resumed = SegmentStore(tmp_path, "s1")
    resumed.open(resume_entries=3, resume_duration=6.0)
    entries = manifest_entries(resumed.manifest_path.read_text())
    assert [(e.duration, e.gap, e.discontinuity) for e in entries] == [
        (2.0, False, False),
        (2.0, True, True),
        (2.0, False, True),
    ]
    resumed.add_segment(b"c2", 2.0, "http://x/c.ts")
    assert resumed.entry_count == 4 and (tmp_path / "s1" / "seg000003.ts").read_bytes() == b"c2"

    elsewhere = SegmentStore(tmp_path / "other-machine", "s1")
    elsewhere.open(resume_entries=3, resume_duration=6.0)
    text = elsewhere.manifest_path.read_text()
    assert "#EXT-X-GAP" in text
    assert [(e.duration, e.gap) for e in manifest_entries(text)] == [(6.0, True)]


# --------------------------------------------------------------------------- on a real broker

CHUNK_SECONDS = 2.0


class Observer:
    """Reads the session's chunks and lifecycle reports back, in topic order."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.chunks: list[ChunkRecord] = []
        self.lifecycle: list[SessionLifecycle] = []
        self.consumer = AIOKafkaConsumer(
            topics.chunks, topics.session_lifecycle, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )

    async def read_until(self, done: object, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out: {len(self.chunks)} chunks, {self.lifecycle}"
            for messages in (await self.consumer.getmany(timeout_ms=200)).values():
                for message in messages:
                    if message.topic == self.topics.chunks:
                        self.chunks.append(decode_value(ChunkRecord, message.value))
                    else:
                        self.lifecycle.append(decode_value(SessionLifecycle, message.value))

    def finals(self) -> list[SessionLifecycle]:
        return [r for r in self.lifecycle if r.state is not IngestState.ACTIVE]


async def open_checkpoint_ids(bootstrap: str, topics: Topics) -> set[str]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await reader.start()
    try:
        opened = await read_open_checkpoints(
            reader, topics.ingest_checkpoints, list(range(topics.partitions))
        )
        return {checkpoint.session_id for _, checkpoint in opened}
    finally:
        await reader.stop()


@pytest.mark.kafka
async def test_session_survives_clean_stop_and_crash_of_ingest_instances(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    settings = IngestSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topics.prefix,
        group_id=f"ingest-resume-{uuid.uuid4().hex[:8]}",
        storage_dir=tmp_path,
        chunk_seconds=CHUNK_SECONDS,
        http_retries=1,
        http_backoff_seconds=0.05,
        shutdown_timeout_seconds=5,
    )
    session_id = f"resumed-{uuid.uuid4().hex[:6]}"
    command = StartSession(
        session_id=session_id, stream_id="st", name="resume", source_url="", rapid_review_query="q"
    )
    observer = Observer(kafka_bootstrap, topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    source = LiveHlsSource(short_script(2.0), segment_seconds=1.0, loop=True)
    await producer.start()
    await observer.consumer.start()
    await asyncio.to_thread(source.start)

    async def send(record: StartSession | EndSession) -> None:
        await producer.send_and_wait(
            topics.session_commands, key=encode_key(session_id), value=encode_value(record)
        )

    try:
        # 1. Instance A runs the session, then stops cleanly: no final report, checkpoint kept.
        async with IngestService(settings) as first:
            stop = asyncio.Event()
            running = asyncio.create_task(first.run(stop))
            await send(command.model_copy(update={"source_url": source.url}))
            await observer.read_until(lambda: len(observer.chunks) >= 3)
            stop.set()
            await running
        assert observer.finals() == []
        assert session_id in await open_checkpoint_ids(kafka_bootstrap, topics)
        published_by_first = len(observer.chunks)

        # 2. Instance B (same group) resumes it; then it "crashes": the session task is killed
        #    without flushing, reporting or suspending, as if the process died.
        async with IngestService(settings) as second:
            stop = asyncio.Event()
            running = asyncio.create_task(second.run(stop))
            await observer.read_until(lambda: len(observer.chunks) >= published_by_first + 3)
            assert session_id in second.sessions
            for task in list(second._tasks.values()):
                task.cancel()
            await asyncio.gather(*second._tasks.values(), return_exceptions=True)
            stop.set()
            await running
        assert observer.finals() == []
        published_by_second = len(observer.chunks)

        # 3. Instance C resumes it from B's last checkpoint; the user ends it there. A replayed
        #    StartSession does not start a second copy.
        async with IngestService(settings) as third:
            stop = asyncio.Event()
            running = asyncio.create_task(third.run(stop))
            await observer.read_until(lambda: len(observer.chunks) >= published_by_second + 2)
            await send(command.model_copy(update={"source_url": source.url}))
            await send(EndSession(session_id=session_id, stream_id="st"))
            await observer.read_until(lambda: bool(observer.finals()))
            await third.wait_idle()
            stop.set()
            await running
        await asyncio.sleep(0.5)
        await observer.read_until(lambda: True)
    finally:
        await asyncio.to_thread(source.stop)
        await observer.consumer.stop()
        await producer.stop()

    # Exactly one final report, ENDED by the user, counting every chunk index.
    finals = observer.finals()
    assert len(finals) == 1 and finals[0].state is IngestState.ENDED and finals[0].ended_by == "user"
    indexes = [c.chunk_index for c in observer.chunks]
    assert sorted(set(indexes)) == list(range(finals[0].chunks_published))
    # In topic order each chunk is the next index, or (at a resume) the same index again.
    steps = [later - earlier for earlier, later in itertools.pairwise(indexes)]
    assert set(steps) <= {0, 1} and steps.count(0) <= 2, indexes
    by_index = {c.chunk_index: c for c in observer.chunks}
    for index, chunk in by_index.items():
        assert chunk.start_time == pytest.approx(index * CHUNK_SECONDS)
    frame_times = [f.stream_time for i in sorted(by_index) for f in by_index[i].frames]
    assert frame_times == sorted(frame_times) and len(set(frame_times)) == len(frame_times)
    # Quick resumes continue right after the checkpointed segment: no chunk lost its frames.
    assert all(by_index[i].frames for i in sorted(by_index)[:-1])
    # The recording covers the session's stream time once: no segment listed twice.
    assert finals[0].manifest_path is not None
    entries = manifest_entries(await asyncio.to_thread(Path(finals[0].manifest_path).read_text))
    assert sum(e.duration for e in entries) == pytest.approx(observer.chunks[-1].end_time, abs=0.05)
    assert session_id not in await open_checkpoint_ids(kafka_bootstrap, topics)
