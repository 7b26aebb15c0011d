"""Groups sampled frames into chunks of fixed stream-time duration.

Chunk ``k`` always covers ``[k*D, (k+1)*D)`` of stream time, so ``chunk_index`` and time map
one-to-one. Decision: a chunk with no frames (a gap in the source, a stalled decoder) is still
emitted, so chunk indices stay contiguous and the published count equals the number of chunk
slots the stream covered; analyzers report such chunks as analysed with no events.

A chunk is emitted as soon as it is complete: when a frame at/after its end arrives, or when
the stream is known to have moved past it (``advance_to`` the end of the segment just read).
``flush`` emits the partial last chunk, its ``end_time`` being the end of the stream.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ingest.picture import Picture
from schemas.records import ChunkRecord, Frame, StartSession, chunk_id_for, utcnow

log = logging.getLogger(__name__)

_EPSILON = 1e-6


@dataclass(frozen=True)
class SampledFrame:
    stream_time: float
    captured_at: datetime  # wall clock: PROGRAM-DATE-TIME based when the source has it
    picture: Picture  # scaled, JPEG-ready YCbCr (ingest.picture)
    media_sequence: int


@dataclass(frozen=True)
class Chunk:
    index: int
    start_time: float
    end_time: float
    frames: tuple[SampledFrame, ...]
    media_sequences: tuple[int, ...]
    capture_time: float  # stream time of the first frame (the chunk's start for an empty chunk)
    captured_at: datetime  # wall clock at capture_time (extrapolated for an empty chunk)


@dataclass
class _SegmentSpan:
    media_sequence: int
    start: float
    end: float


@dataclass
class Chunker:
    chunk_seconds: float  # IngestSettings.chunk_seconds: no default of its own to drift from it
    open_index: int = 0
    _frames: list[SampledFrame] = field(default_factory=list)
    _segments: list[_SegmentSpan] = field(default_factory=list)
    # Latest known (stream time, wall clock) pair, to date chunks that have no frame.
    _anchor: tuple[float, datetime] | None = None
    clamped_frames: int = 0

    def __post_init__(self) -> None:
        if self.chunk_seconds <= 0:
            raise ValueError("chunk_seconds must be positive")

    def resume(self, open_index: int, anchor: tuple[float, datetime] | None) -> None:
        """Continue a checkpointed session: chunks before ``open_index`` are published."""
        self.open_index = open_index
        self._anchor = anchor

    def index_of(self, stream_time: float) -> int:
        return math.floor(stream_time / self.chunk_seconds + _EPSILON)

    def add_segment(self, media_sequence: int, start: float, end: float) -> None:
        """Record that ``[start, end)`` of stream time came from segment ``media_sequence``."""
        self._segments.append(_SegmentSpan(media_sequence, start, end))

    def add(self, frame: SampledFrame) -> list[Chunk]:
        """Add one frame (in stream-time order); return the chunks it completed."""
        index = self.index_of(frame.stream_time)
        completed = self._close_until(index)
        if index < self.open_index:
            # EXTINF is often rounded, so a segment's last frame can overshoot into the next
            # chunk and the next segment's first frame land "before" it: keep the frame in the
            # open chunk, at its start, rather than drop it.
            self.clamped_frames += 1
            frame = SampledFrame(self.open_start, frame.captured_at, frame.picture, frame.media_sequence)
        self._frames.append(frame)
        self._anchor = (frame.stream_time, frame.captured_at)
        return completed

    def advance_to(self, stream_time: float) -> list[Chunk]:
        """The stream reached ``stream_time``: emit every chunk that ends at or before it."""
        return self._close_until(self.index_of(stream_time))

    def flush(self, stream_end: float) -> list[Chunk]:
        """End of stream at ``stream_end``: emit the remaining chunks, the last one partial."""
        completed = self._close_until(self.index_of(stream_end))
        has_content = stream_end > self.open_start + _EPSILON or bool(self._frames)
        if has_content:
            end = max(stream_end, self.open_start)
            completed.append(self._close_open(end_time=end))
        return completed

    @property
    def open_start(self) -> float:
        return self.open_index * self.chunk_seconds

    def _close_until(self, index: int) -> list[Chunk]:
        completed: list[Chunk] = []
        while self.open_index < index:
            completed.append(self._close_open(end_time=self.open_start + self.chunk_seconds))
        return completed

    def _close_open(self, end_time: float) -> Chunk:
        start = self.open_start
        frames = tuple(self._frames)
        sequences = tuple(
            sorted(
                {s.media_sequence for s in self._segments if s.start < end_time - _EPSILON and s.end > start}
            )
        )
        if frames:
            capture_time, captured_at = frames[0].stream_time, frames[0].captured_at
        elif self._anchor is not None:
            capture_time = start
            captured_at = self._anchor[1] + timedelta(seconds=start - self._anchor[0])
        else:
            capture_time, captured_at = start, utcnow()
        chunk = Chunk(self.open_index, start, end_time, frames, sequences, capture_time, captured_at)
        self._frames = []
        self._segments = [s for s in self._segments if s.end > end_time + _EPSILON]
        self.open_index += 1
        if not frames:
            log.info("chunk %d [%.2f, %.2f) has no frames", chunk.index, start, end_time)
        return chunk


def build_chunk_record(
    chunk: Chunk,
    command: StartSession,
    frames: list[Frame],
    *,
    skipped_s: float = 0.0,
    sample_fps: float | None = None,
) -> ChunkRecord:
    """The ChunkRecord of ``chunk`` for the session started by ``command`` (frames already encoded);
    ``skipped_s``: its stream time the overload policy skipped, ``sample_fps``: the sampling rate
    in force when it was completed."""
    captured_at = chunk.captured_at if chunk.captured_at.tzinfo else chunk.captured_at.replace(tzinfo=UTC)
    return ChunkRecord(
        session_id=command.session_id,
        stream_id=command.stream_id,
        chunk_id=chunk_id_for(command.session_id, chunk.index),
        chunk_index=chunk.index,
        start_time=chunk.start_time,
        end_time=chunk.end_time,
        hls_cumulative_offset=chunk.start_time,
        capture_time=chunk.capture_time,
        captured_at=captured_at,
        media_sequences=list(chunk.media_sequences),
        rapid_review_query=command.rapid_review_query,
        interpretation=command.interpretation,
        options=command.options,
        frames=frames,
        skipped_s=skipped_s,
        sample_fps=sample_fps,
    )
