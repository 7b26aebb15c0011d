"""Session checkpoints (pure): where to write them from, which ones are open, how a resume rejoins.

A checkpoint marks a *resume point*: the last ingested segment that ended at or before the
stream time covered by the acked chunks. Resuming re-ingests the media after that segment and
drops frames before ``covered_time`` (already in published chunks), so when the source still
lists those segments the resumed session publishes exactly the chunks the interrupted one
would have. When it does not (the source moved on while nobody ingested), the missed media is a
gap in stream time: ``rejoin_gap_seconds`` estimates it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from schemas.records import IngestCheckpoint, StartSession

log = logging.getLogger(__name__)

_EPSILON = 1e-6


@dataclass(frozen=True)
class SegmentMark:
    """The session's state right after one segment was fully ingested (or skipped as a gap)."""

    media_sequence: int | None  # None: the state before any segment
    stream_time: float  # end of the segment on the session's stream timeline
    program_date_time: datetime | None  # PROGRAM-DATE-TIME at the end of the segment
    ingested_at: datetime | None
    segments_decoded: int
    manifest_entries: int
    segments_yielded: int
    skipped_s: float = 0.0  # stream time skipped by the overload policy up to this segment


START_MARK = SegmentMark(None, 0.0, None, None, 0, 0, 0)


def resume_mark(marks: Iterable[SegmentMark], covered_time: float) -> SegmentMark:
    """The latest mark that ends at or before ``covered_time`` (START_MARK if none does)."""
    chosen = START_MARK
    for mark in marks:
        if mark.stream_time <= covered_time + _EPSILON and mark.stream_time >= chosen.stream_time:
            chosen = mark
    return chosen


def build_checkpoint(
    command: StartSession,
    chunks_published: int,
    chunk_seconds: float,
    mark: SegmentMark,
    crash_resumes: int = 0,
    lag_actions: int = 0,
) -> IngestCheckpoint:
    return IngestCheckpoint(
        session_id=command.session_id,
        stream_id=command.stream_id,
        command=command,
        next_chunk_index=chunks_published,
        chunks_published=chunks_published,
        covered_time=chunks_published * chunk_seconds,
        resume_media_sequence=mark.media_sequence,
        resume_stream_time=mark.stream_time,
        resume_program_date_time=mark.program_date_time,
        resume_ingested_at=mark.ingested_at,
        segments_decoded=mark.segments_decoded,
        manifest_entries=mark.manifest_entries,
        crash_resumes=crash_resumes,
        skipped_s=mark.skipped_s,
        lag_actions=lag_actions,
    )


def mark_of(checkpoint: IngestCheckpoint, segments_yielded: int = 0) -> SegmentMark:
    return SegmentMark(
        media_sequence=checkpoint.resume_media_sequence,
        stream_time=checkpoint.resume_stream_time,
        program_date_time=checkpoint.resume_program_date_time,
        ingested_at=checkpoint.resume_ingested_at,
        segments_decoded=checkpoint.segments_decoded,
        manifest_entries=checkpoint.manifest_entries,
        segments_yielded=segments_yielded,
        skipped_s=checkpoint.skipped_s,
    )


def open_checkpoints(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, IngestCheckpoint]:
    """Fold (key, value) records of the checkpoints topic, in offset order, into the open sessions.

    The latest value of a key wins; a tombstone (value None) deletes it; an undecodable value
    is logged and ignored (it deletes nothing: an older good checkpoint is better than none).
    """
    latest: dict[str, IngestCheckpoint] = {}
    for key, value in records:
        if key is None:
            continue
        session_id = key.decode(errors="replace")
        if value is None:
            latest.pop(session_id, None)
            continue
        try:
            checkpoint = IngestCheckpoint.model_validate_json(value)
        except ValidationError as exc:
            log.error("ignoring undecodable checkpoint of session %s: %s", session_id, exc.errors()[0]["msg"])
            continue
        latest[session_id] = checkpoint
    return latest


def wall_clock_gap(checkpoint: IngestCheckpoint, now: datetime) -> float:
    """Seconds of wall clock since the resume point was ingested (since the checkpoint if unknown)."""
    since = checkpoint.resume_ingested_at or checkpoint.updated_at
    return max(0.0, (now - since).total_seconds())


def rejoin_gap_seconds(
    last_end_date: datetime | None,
    first_date: datetime | None,
    wall_clock_seconds: float,
    target_duration: float,
) -> float:
    """Stream time missed between the resume point and the segment a resumed session rejoins at.

    Used when the source's media sequence cannot bridge them (it restarted, or nothing was
    ingested yet). PROGRAM-DATE-TIME on both sides gives the media time between them; without
    it (or when it is implausible: an encoder restart can jump its clock) the wall clock since
    the resume point is the estimate.
    """
    wall = max(0.0, wall_clock_seconds)
    if last_end_date is not None and first_date is not None:
        by_date = (first_date - last_end_date).total_seconds()
        if 0.0 <= by_date <= 2 * wall + 2 * target_duration:
            return by_date
    return wall
