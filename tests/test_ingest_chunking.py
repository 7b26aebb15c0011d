"""Sampler grid and chunker boundaries, empty chunks, flush and the ChunkRecord built from a chunk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from ingest.chunker import Chunker, SampledFrame, build_chunk_record
from ingest.picture import picture_from_rgb
from ingest.sampler import FrameSampler
from schemas.records import Frame, StartSession

WALL = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PICTURE = picture_from_rgb(np.zeros((4, 4, 3), dtype=np.uint8))


def frame(t: float, sequence: int = 0) -> SampledFrame:
    return SampledFrame(t, WALL + timedelta(seconds=t), PICTURE, sequence)


def test_sampler_keeps_first_frame_of_each_grid_slot() -> None:
    sampler = FrameSampler(fps=2.0)
    times = [i / 30 for i in range(90)]  # 3 s of 30 fps
    kept = [times[i] for i in sampler.select(times)]
    assert kept == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_sampler_grid_is_independent_of_segment_boundaries() -> None:
    # 25 fps frames split into segments of odd lengths: the same grid slots are kept.
    all_times = [i / 25 for i in range(250)]
    whole = FrameSampler(2.0)
    expected = [all_times[i] for i in whole.select(all_times)]
    split = FrameSampler(2.0)
    kept: list[float] = []
    for start, end in [(0, 37), (37, 100), (100, 181), (181, 250)]:
        kept += [t for t in all_times[start:end] if split.accept(t)]
    assert kept == expected
    assert len(kept) == 20


def test_sampler_keeps_every_frame_of_a_slow_source_and_absorbs_float_noise() -> None:
    sampler = FrameSampler(fps=2.0)
    assert [sampler.accept(t) for t in [0.0, 1.0, 2.0, 3.0]] == [True] * 4
    noisy = FrameSampler(fps=2.0)
    assert noisy.accept(0.0) and noisy.accept(0.49999999999) and not noisy.accept(0.7)


def test_chunks_cover_fixed_intervals_and_are_emitted_when_a_later_frame_arrives() -> None:
    chunker = Chunker(chunk_seconds=4.0)
    chunker.add_segment(0, 0.0, 6.0)
    emitted = []
    for t in [0.0, 1.0, 3.9]:
        emitted += chunker.add(frame(t))
    assert emitted == []
    emitted += chunker.add(frame(4.0))  # exactly at the end of chunk 0
    assert len(emitted) == 1
    chunk = emitted[0]
    assert (chunk.index, chunk.start_time, chunk.end_time) == (0, 0.0, 4.0)
    assert [f.stream_time for f in chunk.frames] == [0.0, 1.0, 3.9]
    assert (chunk.capture_time, chunk.captured_at) == (0.0, WALL)
    assert chunk.media_sequences == (0,)


def test_advance_to_segment_end_emits_complete_chunks_including_empty_ones() -> None:
    chunker = Chunker(chunk_seconds=2.0)
    chunker.add_segment(7, 0.0, 2.0)
    chunker.add(frame(0.5, 7))
    chunker.add_segment(9, 6.0, 8.0)  # segment 8 (2..6 s) was missed
    emitted = chunker.add(frame(6.5, 9))
    assert [c.index for c in emitted] == [0, 1, 2]
    assert [len(c.frames) for c in emitted] == [1, 0, 0]
    assert [c.media_sequences for c in emitted] == [(7,), (), ()]
    # An empty chunk is dated from the last known frame's clock.
    assert emitted[1].capture_time == 2.0
    assert emitted[1].captured_at == WALL + timedelta(seconds=2.0)
    assert [c.index for c in chunker.advance_to(8.0)] == [3]


def test_flush_emits_the_partial_last_chunk_ending_at_the_stream_end() -> None:
    chunker = Chunker(chunk_seconds=4.0)
    chunker.add_segment(0, 0.0, 4.0)
    chunker.add_segment(1, 4.0, 9.5)
    emitted = []
    for t in [0.0, 2.0, 4.0, 6.0, 8.0, 9.0]:
        emitted += chunker.add(frame(t, 0 if t < 4 else 1))
    assert [c.index for c in emitted] == [0, 1]
    assert [c.media_sequences for c in emitted] == [(0,), (1,)]
    last = chunker.flush(9.5)
    assert [(c.index, c.start_time, c.end_time, len(c.frames)) for c in last] == [(2, 8.0, 9.5, 2)]
    assert last[0].media_sequences == (1,)
    assert chunker.flush(9.5) == []  # nothing left


def test_flush_at_a_chunk_boundary_emits_no_zero_length_chunk() -> None:
    chunker = Chunker(chunk_seconds=2.0)
    chunker.add(frame(1.0))
    assert [(c.index, c.end_time) for c in chunker.flush(2.0)] == [(0, 2.0)]


def test_a_frame_overshooting_into_an_emitted_chunk_is_kept_in_the_open_one() -> None:
    chunker = Chunker(chunk_seconds=2.0)
    chunker.add(frame(2.01))  # the previous segment's last frame ran past its EXTINF
    emitted = chunker.add(frame(1.99))  # the next segment starts "earlier"
    assert emitted == []
    (chunk,) = chunker.flush(4.0)
    assert [f.stream_time for f in chunk.frames] == [2.01, 2.0]
    assert chunker.clamped_frames == 1


def test_build_chunk_record_fills_ids_times_and_the_query() -> None:
    chunker = Chunker(chunk_seconds=4.0)
    chunker.add_segment(41, 3.0, 7.0)
    chunker.add(frame(4.5, 41))
    (chunk,) = chunker.flush(6.0)
    command = StartSession(
        session_id="s-1", stream_id="st-1", name="n", source_url="http://x", rapid_review_query="cats"
    )
    jpeg = b"\xff\xd8fake"
    record = build_chunk_record(chunk, command, [Frame(stream_time=4.5, width=4, height=4, jpeg=jpeg)])
    assert record.chunk_id == "s-1-c000001"
    assert (record.chunk_index, record.start_time, record.end_time) == (1, 4.0, 6.0)
    assert record.hls_cumulative_offset == 4.0
    assert record.capture_time == 4.5
    assert record.captured_at == WALL + timedelta(seconds=4.5)
    assert record.media_sequences == [41]
    assert record.rapid_review_query == "cats"
    assert record.frames[0].jpeg == jpeg
