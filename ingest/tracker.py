"""Follows successive refreshes of a live media playlist and yields each new segment once.

Stream time starts at 0 at the first segment the session ingests; each segment starts where
the previous one ended (by EXTINF). Segments that slid out of the live window before we saw
them are a *gap*: they are counted and shift stream time by their (estimated) duration, so
stream time keeps tracking the source's media timeline.

Gaps are bounded by the wall clock: a live source makes media in real time, so the media we
missed between two refreshes cannot be much longer than the time between them. A media
sequence that leaps (a hostile or broken playlist jumping by 2**62) therefore becomes one gap
of about the elapsed time, never a gap (and chunks, loop iterations) proportional to the jump.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ingest.checkpoint import SegmentMark, rejoin_gap_seconds
from ingest.playlist import MediaPlaylist, Segment

log = logging.getLogger(__name__)

# Reloading a playlist more often than this is never useful (and a tiny TARGETDURATION must
# not turn a session into a busy loop).
MIN_REFRESH_SECONDS = 0.5


@dataclass(frozen=True)
class TrackedSegment:
    """A segment to ingest, placed on the session's stream timeline.

    ``missed_before``/``missed_duration_before`` describe a gap just before this segment;
    ``discontinuity`` is set when the source says so or when its media sequence was reset.
    """

    segment: Segment
    ordinal: int  # 0, 1, 2... over the session, whatever the source's media sequence does
    stream_start: float
    discontinuity: bool = False
    missed_before: int = 0
    missed_duration_before: float = 0.0

    @property
    def stream_end(self) -> float:
        return self.stream_start + self.segment.duration

    @property
    def media_sequence(self) -> int:
        return self.segment.media_sequence


@dataclass(frozen=True)
class TrackerUpdate:
    new_segments: list[TrackedSegment] = field(default_factory=list)
    missed: int = 0
    reset: bool = False
    ended: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.new_segments) or self.missed > 0 or self.reset or self.ended


class PlaylistTracker:
    """Feed it every refresh of one media playlist (``update``); it returns what is new.

    Joining: a live playlist is joined ``live_edge_segments`` from its end; an ended or VOD
    playlist is read from its first segment. A media sequence that goes backwards (the
    playlist's last segment is older than the last one we yielded) is a source restart: we
    rejoin the new playlist at its live edge and mark a discontinuity; stream time goes on.

    Resuming (``resume``) restores the state after a checkpointed segment: the next update
    continues right after it when the playlist still bridges it by media sequence (segments
    that slid out meanwhile are a gap, as above). Otherwise (a restarted source, or nothing
    was ingested before) it joins at the live edge after a gap from ``rejoin_gap_seconds``.
    """

    def __init__(self, live_edge_segments: int = 2, clock: Callable[[], float] = time.monotonic) -> None:
        if live_edge_segments < 1:
            raise ValueError("live_edge_segments must be >= 1")
        self.live_edge_segments = live_edge_segments
        self._clock = clock
        # clock() when the last segment was yielded (the source's live edge was there then).
        self._last_emit_at: float | None = None
        self.last_media_sequence: int | None = None
        self.stream_time = 0.0  # end of the last yielded segment (incl. missed durations)
        self.yielded = 0
        self.missed_total = 0
        self.resets = 0
        self._last_end_date: datetime | None = None  # PROGRAM-DATE-TIME at the end of the last segment
        self._rejoin_wall_clock_gap: float | None = None  # set by ``resume`` until the first update

    def resume(self, mark: SegmentMark, wall_clock_gap: float | None) -> None:
        """Continue after ``mark``; ``wall_clock_gap`` (seconds since it) estimates a rejoin gap.

        ``wall_clock_gap`` None means stream time restarts from the mark as if new (nothing
        to bridge: no chunk was published yet)."""
        self.last_media_sequence = mark.media_sequence
        self.stream_time = mark.stream_time
        self._last_end_date = mark.program_date_time
        self.yielded = mark.segments_yielded
        self._rejoin_wall_clock_gap = wall_clock_gap
        if wall_clock_gap is not None:
            self._last_emit_at = self._clock() - wall_clock_gap

    @property
    def started(self) -> bool:
        return self.last_media_sequence is not None

    def update(self, playlist: MediaPlaylist) -> TrackerUpdate:
        segments = playlist.segments
        if not segments:
            return TrackerUpdate(ended=playlist.ended)
        rejoin_wall_clock_gap, self._rejoin_wall_clock_gap = self._rejoin_wall_clock_gap, None
        elapsed = None if self._last_emit_at is None else max(0.0, self._clock() - self._last_emit_at)
        if self.last_media_sequence is None:
            start = 0 if playlist.is_vod else max(0, len(segments) - self.live_edge_segments)
            rejoin = self._rejoin_gap(rejoin_wall_clock_gap, segments[start], playlist)
            return self._emit(segments[start:], playlist, missed=0, reset=False, rejoin_gap=rejoin)

        last_in_playlist = segments[-1].media_sequence
        if last_in_playlist < self.last_media_sequence:
            self.resets += 1
            log.warning(
                "media sequence reset (%d -> %d) at %s; rejoining at the live edge",
                self.last_media_sequence,
                last_in_playlist,
                playlist.url,
            )
            start = 0 if playlist.is_vod else max(0, len(segments) - self.live_edge_segments)
            if rejoin_wall_clock_gap is None and elapsed is not None:
                # The media made while we were not looking, less what we rejoin with.
                rejoining = sum(segment.duration for segment in segments[start:])
                rejoin_wall_clock_gap = max(0.0, elapsed - rejoining)
            rejoin = self._rejoin_gap(rejoin_wall_clock_gap, segments[start], playlist)
            return self._emit(segments[start:], playlist, missed=0, reset=True, rejoin_gap=rejoin)

        wanted = self.last_media_sequence + 1
        new = [s for s in segments if s.media_sequence >= wanted]
        missed = max(0, segments[0].media_sequence - wanted)
        return self._emit(new, playlist, missed=missed, reset=False, elapsed=elapsed)

    def _emit(
        self,
        segments: tuple[Segment, ...] | list[Segment],
        playlist: MediaPlaylist,
        *,
        missed: int,
        reset: bool,
        rejoin_gap: float = 0.0,
        elapsed: float | None = None,
    ) -> TrackerUpdate:
        tracked: list[TrackedSegment] = []
        for position, segment in enumerate(segments):
            first = position == 0
            missed_duration = 0.0
            if first and rejoin_gap > 0:
                missed_duration = rejoin_gap
                log.warning(
                    "resumed session rejoins at media sequence %d at %s after a gap of ~%.1fs",
                    segment.media_sequence,
                    playlist.url,
                    rejoin_gap,
                )
                self.stream_time += rejoin_gap
            if first and missed:
                missed_duration = self._missed_duration(missed, segment, playlist, elapsed)
                self.missed_total += missed
                log.warning(
                    "missed %d segment(s) before media sequence %d at %s (~%.1fs of stream)",
                    missed,
                    segment.media_sequence,
                    playlist.url,
                    missed_duration,
                )
                self.stream_time += missed_duration
            item = TrackedSegment(
                segment=segment,
                ordinal=self.yielded,
                stream_start=self.stream_time,
                discontinuity=segment.discontinuity or (first and (reset or missed > 0 or rejoin_gap > 0)),
                missed_before=missed if first else 0,
                missed_duration_before=missed_duration,
            )
            tracked.append(item)
            self.stream_time = item.stream_end
            self.yielded += 1
            self.last_media_sequence = segment.media_sequence
            date = segment.program_date_time
            self._last_end_date = date + timedelta(seconds=segment.duration) if date else None
        if tracked:
            self._last_emit_at = self._clock()
        return TrackerUpdate(new_segments=tracked, missed=missed, reset=reset, ended=playlist.ended)

    def _rejoin_gap(self, wall_clock_gap: float | None, first: Segment, playlist: MediaPlaylist) -> float:
        if wall_clock_gap is None:
            return 0.0
        return rejoin_gap_seconds(
            self._last_end_date, first.program_date_time, wall_clock_gap, playlist.target_duration
        )

    def _missed_duration(
        self, missed: int, segment: Segment, playlist: MediaPlaylist, elapsed: float | None
    ) -> float:
        """Duration of segments we never saw: from PROGRAM-DATE-TIME when both sides have one,
        else ``target_duration`` each (the spec's upper bound of a segment's duration); never
        more than the wall clock since the last yielded segment allows (``elapsed``, plus two
        target durations of slack for publishing jitter)."""
        estimate = float(missed) * playlist.target_duration
        bound = float("inf") if elapsed is None else elapsed + 2 * playlist.target_duration
        if self._last_end_date is not None and segment.program_date_time is not None:
            by_date = (segment.program_date_time - self._last_end_date).total_seconds()
            # Sanity: clocks of a restarted encoder can jump, a hostile one anywhere.
            if 0 < by_date <= min(estimate * 2, bound):
                return by_date
        return min(estimate, bound)


def refresh_interval(playlist: MediaPlaylist, changed: bool) -> float:
    """RFC 8216 6.3.4: reload after the target duration, or half of it when nothing changed
    (never more often than ``MIN_REFRESH_SECONDS``)."""
    interval = playlist.target_duration if changed else playlist.target_duration / 2
    return max(MIN_REFRESH_SECONDS, interval)


def outage_poll_delay(polls: int, target_duration: float, cap: float) -> float:
    """Wait before poll ``polls`` (0, 1, 2...) of a source in an outage: half the target
    duration, doubling each time, at most ``cap`` (and never under ``MIN_REFRESH_SECONDS``)."""
    first = max(MIN_REFRESH_SECONDS, target_duration / 2)
    return min(cap, first * 2.0 ** min(polls, 32))
