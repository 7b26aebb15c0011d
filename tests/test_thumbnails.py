"""Event thumbnails, pure parts: drawing, the best frame, merging, what gets deleted (no Kafka)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aggregator.merge import grown, unreferenced_thumbnails
from aggregator.reducer import fold
from aggregator.thumbnails import ThumbnailJanitor, delete_thumbnails
from analyzer.scoring import FrameDetections, ScoringPolicy, score_chunk
from analyzer.thumbnails import BOX_COLOR, ThumbnailWriter, annotate, pixel_box, thumbnail_frame
from ingest.storage import thumbnail_key, thumbnail_name
from livestream.blobstore import BlobStoreUnavailable
from livestream.blobstore.local import LocalBlobStore
from schemas.records import (
    ChunkRecord,
    ChunkResult,
    EndSession,
    Event,
    Frame,
    IngestState,
    SessionDeadline,
    SessionHeader,
    SessionLifecycle,
    Severity,
    StartSession,
    chunk_id_for,
    describe_event,
    event_id_for,
    format_mmss,
)

SESSION = "sess-thumbs"
STREAM = "stream-thumbs"
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
WIDTH, HEIGHT = 320, 180
GRAY = (120, 120, 120)


def jpeg(color: tuple[int, int, int] = GRAY, size: tuple[int, int] = (WIDTH, HEIGHT)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG", quality=95)
    return out.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


# --------------------------------------------------------------------------- drawing


def test_annotation_draws_the_box_on_a_frame_of_the_same_size() -> None:
    box = (0.25, 0.25, 0.75, 0.75)
    drawn = decode(annotate(jpeg(), box, "cat", 0.93))
    raw = decode(jpeg())
    assert drawn.shape == (HEIGHT, WIDTH, 3)
    left, top, right, bottom = pixel_box(box, WIDTH, HEIGHT)
    # The box's edges are the box colour (JPEG blurs a little: compare loosely)...
    # (the line is drawn inwards from the box's edge: look one pixel inside)
    for y, x in [
        ((top + bottom) // 2, left + 1),
        ((top + bottom) // 2, right - 1),
        (bottom - 1, (left + right) // 2),
    ]:
        assert np.abs(drawn[y, x] - np.array(BOX_COLOR)).max() < 60, (y, x, drawn[y, x])
    # ... the inside and the far corners of the frame are the frame.
    assert np.abs(drawn[(top + bottom) // 2, (left + right) // 2] - raw[0, 0]).max() < 8
    assert np.abs(drawn[HEIGHT - 2, WIDTH - 2] - raw[0, 0]).max() < 8
    # The label sits above the box: a filled strip of the box colour with lighter text in it.
    strip = drawn[max(0, top - 8) : top, left : left + 20]
    assert np.abs(strip.mean(axis=(0, 1)) - np.array(BOX_COLOR)).max() < 70


def test_a_box_at_the_top_edge_gets_its_label_inside_and_everything_stays_in_the_frame() -> None:
    drawn = decode(annotate(jpeg(), (0.9, 0.0, 1.2, 0.4), "person", 0.5))
    assert drawn.shape == (HEIGHT, WIDTH, 3)
    assert pixel_box((0.9, 0.0, 1.2, 0.4), WIDTH, HEIGHT) == (287, 0, 319, 72)
    assert pixel_box((0.8, 0.6, 0.2, 0.1), WIDTH, HEIGHT) == (64, 18, 255, 107)  # reversed: sorted


def test_annotation_of_a_frame_that_is_not_a_jpeg_raises_pillows_error() -> None:
    with pytest.raises(OSError):
        annotate(b"not a jpeg", (0.1, 0.1, 0.2, 0.2), "cat", 0.9)


# --------------------------------------------------------------------------- the best frame


@dataclass(frozen=True)
class Det:
    label: str
    score: float
    box: tuple[float, float, float, float] = (0.1, 0.1, 0.5, 0.5)


def chunk(frame_times: list[float], index: int = 0) -> ChunkRecord:
    return ChunkRecord(
        session_id=SESSION,
        stream_id=STREAM,
        chunk_id=chunk_id_for(SESSION, index),
        chunk_index=index,
        start_time=frame_times[0],
        end_time=frame_times[-1] + 0.5,
        hls_cumulative_offset=frame_times[0],
        capture_time=frame_times[0],
        captured_at=T0,
        media_sequences=[0],
        rapid_review_query="a cat",
        frames=[
            Frame(stream_time=t, width=WIDTH, height=HEIGHT, jpeg=jpeg((10 * i, 0, 0)))
            for i, t in enumerate(frame_times)
        ],
    )


def test_the_thumbnail_frame_is_the_one_of_the_most_confident_detection() -> None:
    times = [4.0, 4.5, 5.0, 5.5]
    best_box = (0.2, 0.3, 0.6, 0.9)
    frames = [
        FrameDetections(4.0, [Det("cat", 0.7)]),
        FrameDetections(4.5, [Det("cat", 0.95, best_box), Det("cat", 0.6)]),
        FrameDetections(5.0, [Det("cat", 0.8)]),
        FrameDetections(5.5, []),
    ]
    record = chunk(times)
    [event] = score_chunk(record, frames, ["cat"], "a", ScoringPolicy())
    assert event.thumbnail_time == 4.5 and event.box == best_box and event.confidence == 0.95
    assert event.thumbnail_event_id is None  # named only once the thumbnail is stored
    frame = thumbnail_frame(record.frames, event)
    assert frame is not None and frame.stream_time == 4.5


def test_on_a_tie_the_earlier_frame_is_the_thumbnail() -> None:
    frames = [FrameDetections(t, [Det("cat", 0.8)]) for t in (1.0, 1.5, 2.0)]
    [event] = score_chunk(chunk([1.0, 1.5, 2.0]), frames, ["cat"], "a", ScoringPolicy())
    assert event.thumbnail_time == 1.0


class FailingStore(LocalBlobStore):
    def put(self, key: str, data: bytes, content_type: str) -> None:
        raise BlobStoreUnavailable("bucket unreachable", key=key, backend="test")


def scored(record: ChunkRecord) -> ChunkResult:
    frames = [
        FrameDetections(f.stream_time, [Det("cat", 0.6 + 0.1 * i)]) for i, f in enumerate(record.frames)
    ]
    events = score_chunk(record, frames, ["cat"], "a", ScoringPolicy())
    return ChunkResult(
        session_id=SESSION,
        stream_id=STREAM,
        chunk_id=record.chunk_id,
        chunk_index=record.chunk_index,
        analysis_id="a",
        start_time=record.start_time,
        end_time=record.end_time,
        frame_count=len(record.frames),
        status="ok",
        model="m",
        targets=["cat"],
        events=events,
        inference_ms=1.0,
    )


def test_the_writer_stores_each_thumbnail_under_the_event_id_then_names_it(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    record = chunk([0.0, 0.5, 1.0])
    result = scored(record)
    attached = ThumbnailWriter(store).attach(record, result)
    [event] = attached.events
    assert event.thumbnail_event_id == event.event_id and event.thumbnail_time == 1.0
    key = thumbnail_key(SESSION, event.event_id)
    assert key == f"{SESSION}/thumbs/{event.event_id}.jpg" and thumbnail_name("x") == "thumbs/x.jpg"
    blob = store.get(key)
    assert blob.content_type == "image/jpeg"
    assert decode(blob.data).shape == (HEIGHT, WIDTH, 3)
    # Re-analysing the chunk (a redelivery) rewrites the same key with the same bytes.
    again = ThumbnailWriter(store).attach(record, scored(record))
    assert [e.thumbnail_event_id for e in again.events] == [event.event_id]
    assert store.get(key).data == blob.data
    assert sorted(store.list("")) == [key]


def test_a_store_failure_sends_the_event_without_a_thumbnail(tmp_path: Path) -> None:
    record = chunk([0.0, 0.5])
    [event] = ThumbnailWriter(FailingStore(tmp_path)).attach(record, scored(record)).events
    assert event.thumbnail_event_id is None


# --------------------------------------------------------------------------- merging


def raw(start: float, end: float, confidence: float, chunk_index: int, *, thumbnail: bool = True) -> Event:
    event_id = event_id_for(SESSION, chunk_index, "cat", start)
    return Event(
        event_id=event_id,
        session_id=SESSION,
        stream_id=STREAM,
        type="detection",
        label="cat",
        description=describe_event("cat", start, end, confidence),
        severity=Severity.HIGH,
        confidence=confidence,
        stream_time=start,
        start_time=start,
        end_time=end,
        capture_time=start,
        captured_at=T0,
        chunk_index=chunk_index,
        chunk_relative_time=0.0,
        hls_cumulative_offset=0.0,
        t_start=format_mmss(start),
        t_end=format_mmss(end),
        analysis_id="a",
        chunk_id=chunk_id_for(SESSION, chunk_index),
        box=(0.1, 0.1, 0.2, 0.2),
        thumbnail_event_id=event_id if thumbnail else None,
        thumbnail_time=start + 0.5,
    )


def test_the_merged_thumbnail_follows_the_maximum_confidence() -> None:
    first, better, worse = raw(0, 4, 0.7, 0), raw(4, 8, 0.9, 1), raw(8, 12, 0.8, 2)
    merged = grown(first, better)
    assert merged.event_id == first.event_id  # identity stays
    assert (merged.thumbnail_event_id, merged.thumbnail_time) == (better.event_id, better.thumbnail_time)
    assert unreferenced_thumbnails(first, better, merged) == [first.event_id]
    merged_again = grown(merged, worse)
    assert merged_again.thumbnail_event_id == better.event_id
    assert unreferenced_thumbnails(merged, worse, merged_again) == [worse.event_id]


def test_a_tie_keeps_the_earlier_thumbnail_and_a_detection_without_one_never_takes_it() -> None:
    first = raw(0, 4, 0.8, 0)
    tie = raw(4, 8, 0.8, 1)
    assert grown(first, tie).thumbnail_event_id == first.event_id
    no_picture = raw(4, 8, 0.99, 1, thumbnail=False)
    merged = grown(first, no_picture)
    assert merged.confidence == 0.99 and merged.thumbnail_event_id == first.event_id
    assert unreferenced_thumbnails(first, no_picture, merged) == []


def start_command() -> StartSession:
    return StartSession(
        session_id=SESSION,
        stream_id=STREAM,
        name="n",
        source_url="https://example.test/a.m3u8",
        requested_at=T0,
    )


def chunk_result(index: int, events: list[Event]) -> ChunkResult:
    return ChunkResult(
        session_id=SESSION,
        stream_id=STREAM,
        chunk_id=chunk_id_for(SESSION, index),
        chunk_index=index,
        analysis_id="a",
        start_time=index * 4.0,
        end_time=(index + 1) * 4.0,
        frame_count=8,
        status="ok",
        model="m",
        targets=["cat"],
        events=events,
        inference_ms=1.0,
    )


def test_folding_names_exactly_the_thumbnails_merged_away() -> None:
    header: SessionHeader | None = fold(None, start_command(), T0).header
    # Chunks 0-2: one cat across three chunks (0.7, then 0.9, then 0.8); chunk 4: a new cat
    # after a gap, its own event.
    detections = {
        0: [raw(0, 4, 0.7, 0)],
        1: [raw(4, 8, 0.9, 1)],
        2: [raw(8, 12, 0.8, 2)],
        3: [],
        4: [raw(17, 20, 0.6, 4)],
    }
    discarded: list[str] = []
    latest: dict[int, Event] = {}
    for index, events in detections.items():
        folded = fold(header, chunk_result(index, events), T0)
        header = folded.header
        discarded += folded.discarded_thumbnails
        latest.update({record.number: record.event for record in folded.events})
    shown = {event.thumbnail_event_id for event in latest.values()}
    assert shown == {detections[1][0].event_id, detections[4][0].event_id}
    assert discarded == [detections[0][0].event_id, detections[2][0].event_id]
    # Redelivering a folded chunk's result discards nothing again (and changes nothing).
    again = fold(header, chunk_result(1, detections[1]), T0)
    assert again.discarded_thumbnails == () and not again.changed


# --------------------------------------------------------------------------- deleting


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalBlobStore]:
    yield LocalBlobStore(tmp_path)


def test_the_janitor_deletes_discarded_thumbnails_after_its_delay(store: LocalBlobStore) -> None:
    keep, drop = "11111111-1111-5111-8111-111111111111", "22222222-2222-5222-8222-222222222222"
    for event_id in (keep, drop):
        store.put(thumbnail_key(SESSION, event_id), jpeg(), "image/jpeg")

    async def run() -> None:
        janitor = ThumbnailJanitor(store, delete_delay_s=0.2)
        janitor.discard(SESSION, [drop])
        janitor.discard(SESSION, [])
        await asyncio.sleep(0.05)
        assert store.stat(thumbnail_key(SESSION, drop)) is not None  # the grace
        assert janitor.pending == 1
        for _ in range(100):
            if janitor.pending == 0:
                break
            await asyncio.sleep(0.05)
        assert janitor.pending == 0

    asyncio.run(run())
    assert sorted(store.list("")) == [thumbnail_key(SESSION, keep)]
    # Deleting again (a replayed batch) is fine.
    assert delete_thumbnails(store, [thumbnail_key(SESSION, drop)]) == 0


def test_a_failed_deletion_is_counted_not_raised(tmp_path: Path) -> None:
    class Broken(LocalBlobStore):
        def delete(self, key: str) -> None:
            raise BlobStoreUnavailable("down", key=key, backend="test")

    assert delete_thumbnails(Broken(tmp_path), ["a/thumbs/x.jpg", "a/thumbs/y.jpg"]) == 2


def test_results_the_ended_session_cannot_fold_give_up_their_thumbnails() -> None:
    header: SessionHeader | None = fold(None, start_command(), T0).header
    first = [raw(0, 4, 0.7, 0)]
    header = fold(header, chunk_result(0, first), T0).header
    # Ingest published 2 chunks; chunk 1's result does not come before the ending timeout.
    header = fold(header, EndSession(session_id=SESSION, stream_id=STREAM, requested_at=T0), T0).header
    report = SessionLifecycle(
        session_id=SESSION, stream_id=STREAM, state=IngestState.ENDED, chunks_published=2
    )
    header = fold(header, report, T0).header
    later = datetime(2026, 1, 1, 13, 0, tzinfo=UTC)
    header = fold(
        header, SessionDeadline(session_id=SESSION, stream_id=STREAM, requested_at=later), later
    ).header
    assert header is not None and header.status.terminal and header.missing_chunks == [1]
    late = [raw(4, 8, 0.9, 1)]
    folded = fold(header, chunk_result(1, late), later)
    assert folded.discarded_thumbnails == (late[0].event_id,) and not folded.changed
    # A redelivered result of a chunk that was folded keeps its thumbnails (a merged event shows one).
    assert fold(header, chunk_result(0, first), later).discarded_thumbnails == ()


def test_a_merge_keeps_what_the_more_confident_detection_saw() -> None:
    first = raw(0, 4, 0.7, 0).model_copy(
        update={"description": describe_event("cat", 0, 4, 0.7) + "; cat 0.70; must last more than 10 s"}
    )
    better = raw(4, 8, 0.9, 1).model_copy(
        update={"description": describe_event("cat", 4, 8, 0.9) + "; cat 0.90"}
    )
    merged = grown(first, better)
    assert merged.description == describe_event("cat", 0, 8, 0.9) + "; cat 0.90"
    plain = grown(raw(0, 4, 0.7, 0), raw(4, 8, 0.6, 1))  # no detail on either side: the sentence only
    assert plain.description == describe_event("cat", 0, 8, 0.7)
