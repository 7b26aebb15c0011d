"""Session events of tracked targets: one event per appearance of one object (pure, no I/O).

The analyzer cannot know identity across chunks (any replica may analyse any chunk), so it sends,
for every target that is objects (``ChunkResult.tracked``), every satisfying box of every sampled
frame (``Sighting``). The aggregator folds a session's chunks strictly in chunk order, so it runs
the session's tracker (``aggregator.tracking``) over those frames here, with the tracker's state
kept in the session's header: a redelivered chunk is never folded twice (the fold's watermark),
and a replica that takes over the session's partition resumes from the same stored state.

Rules, per chunk folded in order (times are stream seconds):

* Every sampled frame of the chunk (``frame_times``) is one tracker update with that frame's
  sightings (frames with no sightings are skipped while no track is kept: nothing can change).
  Boxes are clipped to the frame; a degenerate one (no area) is not a sighting.
* An object becomes an event once its track is *confirmed* (seen in ``min_frames`` frames, the
  session's option, default 2: a single-frame detection never is an event) and, for a query with
  a duration ("a car parked for more than 10 s"), once its track has spanned that long. The event
  starts at the track's first sighting, so confirming late does not shorten it.
* The event grows with each confirmed sighting of its track: its end is the end of the frame
  (the next sampled frame's time), its confidence the best sighting's, its box and "what was
  seen" that sighting's. An event's ``track_id`` is its track's.
* It closes when its track is lost for longer than ``max_lost_s`` (the session's option, default
  3 s: an object hidden behind a passer-by for a moment stays one event) or is dropped by the
  tracker, and when the session ends. Growing past ``max_event_duration_s`` closes it and opens a
  new event of the same track (as for untracked events).
* Each chunk writes at most one record per event (opened or updated, then closed), so the
  session-events topic grows with the number of objects, not of frames.

Thumbnails. The analyzer stores one thumbnail per per-chunk event: the best frame of that label's
run, with its best box drawn. A tracked event shows such a thumbnail when it *is* this object's
(same frame and box as one of its sightings; it moves to a more confident one as the event
grows), else, until it has one, the run's thumbnail if its frame is one the object was seen in
(the drawn box may then be another object of the same label). Thumbnails of this chunk that no
event shows are handed back for deletion; one an event moves away from is kept (another event
of the same label may show it) until the session's recording is purged.

Not tracked: results folded after their chunk was declared missing (their frames precede the
tracker's time) become untracked events of their own, as the reducer documents.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from aggregator.merge import EventKey, EventLog
from aggregator.tracking import Detection, FrameObservation, TrackerSettings, update
from schemas.options import AnalysisOptions, severity_for
from schemas.records import ChunkResult, Event, Sighting, describe_event, event_id_for, format_mmss
from schemas.tracking import TrackerState

DEFAULT_MIN_FRAMES = 2
DEFAULT_MAX_LOST_S = 3.0
# 16 tracks of state (~7 KB) and 16 open events (~1.5 KB each) keep the header far below its budget.
DEFAULT_MAX_TRACKS = 16
TRACKED_EVENT_TYPE = "detection"
TENTATIVE_MAX_LOST_S = 1.0


@dataclass(frozen=True)
class TrackPolicy:
    """The aggregator's tracking defaults; a session's ``AnalysisOptions`` override the first two."""

    min_frames: int = DEFAULT_MIN_FRAMES
    max_lost_s: float = DEFAULT_MAX_LOST_S
    max_tracks: int = DEFAULT_MAX_TRACKS
    max_event_duration_s: float = 600.0

    def for_session(self, options: AnalysisOptions | None) -> TrackPolicy:
        if options is None:
            return self
        return TrackPolicy(
            min_frames=self.min_frames if options.min_frames is None else options.min_frames,
            max_lost_s=self.max_lost_s if options.max_lost_s is None else options.max_lost_s,
            max_tracks=self.max_tracks,
            max_event_duration_s=self.max_event_duration_s,
        )

    @property
    def tracker(self) -> TrackerSettings:
        # Sightings are already above the session's detection threshold: any of them may start a track.
        return TrackerSettings(
            min_hits=self.min_frames,
            max_lost_seconds=self.max_lost_s,
            max_tracks=self.max_tracks,
            new_track_min_score=0.0,
            # One missed frame at ~2 fps (bikes.mp4's cyclists flicker); a lone false detection
            # still needs a second one near it within that time to confirm.
            tentative_max_lost_seconds=TENTATIVE_MAX_LOST_S,
        )


def fold_tracked(
    log: EventLog,
    tracker: TrackerState | None,
    result: ChunkResult,
    policy: TrackPolicy,
    options: AnalysisOptions | None = None,
) -> TrackerState | None:
    """Fold the tracked targets of ``result`` (the next chunk in order) into ``log``; the new tracker."""
    policy = policy.for_session(options)
    if not result.tracked and (tracker is None or not tracker.tracks):
        return tracker
    state = tracker or TrackerState()
    targets = {target.label: target for target in result.tracked}
    by_time: dict[float, list[Sighting]] = defaultdict(list)
    for sighting in result.sightings:
        if sighting.label in targets and _clipped(sighting.box) is not None:
            by_time[sighting.stream_time].append(sighting)
    times = sorted(set(result.frame_times) | set(by_time))
    raw_by_label: dict[str, list[Event]] = defaultdict(list)
    for event in result.events:
        if event.label in targets:
            raw_by_label[event.label].append(event)

    chunk = _ChunkEvents(log, result, policy, options, raw_by_label)
    settings = policy.tracker
    for position, now in enumerate(times):
        if state.last_time is not None and now <= state.last_time:
            continue  # cannot happen for chunks folded in order; a frame is never tracked twice
        sightings = by_time.get(now, [])
        if not sightings and not state.tracks:
            continue
        frame_end = times[position + 1] if position + 1 < len(times) else max(result.end_time, now)
        detections = tuple(
            Detection(label=s.label, score=min(max(s.confidence, 0.0), 1.0), box=_clipped(s.box), weak=s.weak)  # type: ignore[arg-type]
            for s in sightings
        )
        before = {track.track_id: track for track in state.tracks}
        state, assignments = update(state, FrameObservation(stream_time=now, detections=detections), settings)
        tracks = {track.track_id: track for track in state.tracks}
        for assignment in assignments:
            if assignment.track_id is None:
                continue
            sighting = sightings[assignment.detection_index]
            chunk.sighted((sighting.label, assignment.track_id), sighting)
            if not assignment.confirmed:
                continue
            track = tracks[assignment.track_id]
            min_duration = targets[sighting.label].min_duration_s
            if now - track.first_seen < min_duration:
                continue
            # An object that qualified at its previous sighting already had its event; if that
            # one is closed (the header's budget closed it early), the next starts here, not at
            # the track's first sighting, so the two never overlap.
            previous = before.get(track.track_id)
            qualified_before = (
                previous is not None
                and previous.hits >= policy.min_frames
                and previous.last_seen - previous.first_seen >= min_duration
            )
            start = now if qualified_before else track.first_seen
            chunk.seen((sighting.label, assignment.track_id), sighting, start, frame_end)
    chunk.flush()

    # Close what can no longer grow: tracks the tracker dropped or lost past max_lost_s.
    kept = {(t.label, t.track_id) for t in state.tracks}
    for key, current in list(log.open_by_key.items()):
        if key[1] is None:
            continue
        if key not in kept or result.end_time - current.event.end_time > policy.max_lost_s:
            log.close(key)
    chunk.discard_unshown_thumbnails()
    return state


def _clipped(box: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
    x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in box)
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


@dataclass
class _ChunkEvents:
    """One chunk's changes to tracked events, written once per event at ``flush``."""

    log: EventLog
    result: ChunkResult
    policy: TrackPolicy
    options: AnalysisOptions | None
    raw_by_label: dict[str, list[Event]]

    def __post_init__(self) -> None:
        self.working: dict[EventKey, Event] = {}
        self.new: set[EventKey] = set()
        self.seen_at: dict[EventKey, set[float]] = {}  # frames of this chunk each object was seen in
        # The most confident sighting of each object whose frame and box are a run's thumbnail.
        self.exact: dict[EventKey, tuple[float, Event]] = {}
        # The most confident sighting of each object in this chunk, before confirmation included.
        self.best: dict[EventKey, Sighting] = {}

    def sighted(self, key: EventKey, sighting: Sighting) -> None:
        """A sighting of the object ``key`` (confirmed or not yet): frames and thumbnails it may show."""
        self.seen_at.setdefault(key, set()).add(sighting.stream_time)
        if key not in self.best or sighting.confidence > self.best[key].confidence:
            self.best[key] = sighting
        exact = self._exact_thumbnail(sighting)
        if exact is not None and (key not in self.exact or sighting.confidence > self.exact[key][0]):
            self.exact[key] = (sighting.confidence, exact)

    def seen(self, key: EventKey, sighting: Sighting, first_seen: float, frame_end: float) -> None:
        current = self.working.get(key)
        if current is None and key in self.log.open_by_key:
            current = self.log.open_by_key[key].event
        if current is not None and frame_end - current.start_time > self.policy.max_event_duration_s:
            self._write(key)
            self.log.close(key)
            current, first_seen = None, sighting.stream_time
        if current is None:
            # A new event is as confident as the object's best sighting of this chunk so far,
            # those before its track was confirmed included.
            best = self.best.get(key, sighting)
            if best.confidence > sighting.confidence and best.stream_time >= first_seen:
                sighting = best
            event = self._new_event(key, sighting, first_seen, frame_end)
            if event is not None:
                self.working[key] = event
                self.new.add(key)
            return
        self.working[key] = self._grown(current, sighting, frame_end)

    def flush(self) -> None:
        for key in sorted(self.working, key=lambda k: (self.working[k].start_time, k[0], k[1] or 0)):
            self._write(key)

    def discard_unshown_thumbnails(self) -> None:
        shown = {e.event.thumbnail_event_id for e in self.log.open_by_key.values()}
        shown |= {record.event.thumbnail_event_id for record in self.log.written}
        for events in self.raw_by_label.values():
            for event in events:
                if event.thumbnail_event_id is not None and event.thumbnail_event_id not in shown:
                    self.log.discarded_thumbnails.append(event.thumbnail_event_id)

    def _write(self, key: EventKey) -> None:
        event = self.working.pop(key, None)
        if event is None:
            return
        if event.thumbnail_event_id is None:
            event = self._with_run_thumbnail(key, event)
        if key in self.new:
            self.new.discard(key)
            self.log.open(event)
        else:
            self.log.replace(key, event)

    # ------------------------------------------------------------------ events

    def _raw_event_at(self, label: str, time: float) -> Event | None:
        """The analyzer's per-chunk event of ``label`` whose span contains ``time``."""
        events = self.raw_by_label.get(label, [])
        containing = [e for e in events if e.start_time <= time <= e.end_time]
        return containing[0] if containing else (events[0] if events else None)

    def _exact_thumbnail(self, sighting: Sighting) -> Event | None:
        """The raw event whose thumbnail is this sighting (same frame, same box), if any."""
        for event in self.raw_by_label.get(sighting.label, []):
            if (
                event.thumbnail_event_id is not None
                and event.thumbnail_time == sighting.stream_time
                and event.box == sighting.box
            ):
                return event
        return None

    def _new_event(self, key: EventKey, sighting: Sighting, start: float, end: float) -> Event | None:
        label, track_id = key
        template = self._raw_event_at(label, sighting.stream_time)
        if template is None:
            return None  # an analyzer always sends the per-chunk event of a sighting; nothing to copy
        thumbnail = self._exact_thumbnail(sighting)
        confidence = round(float(sighting.confidence), 4)
        result = self.result
        return Event(
            event_id=event_id_for(result.session_id, result.chunk_index, f"{label}#track{track_id}", start),
            session_id=result.session_id,
            stream_id=result.stream_id,
            type=TRACKED_EVENT_TYPE,
            label=label,
            description=_description(label, start, end, confidence, sighting.detail, track_id),
            severity=severity_for(confidence, self.options),
            confidence=confidence,
            stream_time=start,
            start_time=start,
            end_time=end,
            capture_time=start,
            captured_at=template.captured_at + timedelta(seconds=start - template.capture_time),
            chunk_index=result.chunk_index,
            chunk_relative_time=round(max(0.0, start - result.start_time), 3),
            hls_cumulative_offset=template.hls_cumulative_offset,
            t_start=format_mmss(start),
            t_end=format_mmss(end),
            analysis_id=result.analysis_id,
            chunk_id=result.chunk_id,
            query=template.query,
            box=sighting.box,
            thumbnail_event_id=thumbnail.thumbnail_event_id if thumbnail else None,
            thumbnail_time=thumbnail.thumbnail_time if thumbnail else None,
            track_id=track_id,
            created_at=self.log.now,  # the fold's clock: a re-fold writes the same record
        )

    def _with_run_thumbnail(self, key: EventKey, event: Event) -> Event:
        """``event`` (without a thumbnail) showing one of this chunk: its object's own (a sighting
        of it is the thumbnail's frame and box), else the run thumbnail of a frame it was seen in."""
        chosen = self.exact[key][1] if key in self.exact else None
        if chosen is None:
            seen_at = self.seen_at.get(key, set())
            runs = self.raw_by_label.get(key[0], [])
            chosen = next(
                (raw for raw in runs if raw.thumbnail_event_id is not None and raw.thumbnail_time in seen_at),
                None,
            )
        if chosen is None:
            return event
        return event.model_copy(
            update={"thumbnail_event_id": chosen.thumbnail_event_id, "thumbnail_time": chosen.thumbnail_time}
        )

    def _grown(self, event: Event, sighting: Sighting, frame_end: float) -> Event:
        end = max(event.end_time, frame_end)
        update: dict[str, object] = {"end_time": end, "t_end": format_mmss(end)}
        # The description is "<sentence>; <what was seen>; track <id>" (``_description``).
        best_detail = event.description.partition("; ")[2].rpartition("; ")[0]
        confidence = event.confidence
        if sighting.confidence > event.confidence:
            confidence = round(float(sighting.confidence), 4)
            best_detail = sighting.detail
            update |= {"confidence": confidence, "box": sighting.box}
            severity = severity_for(confidence, self.options)
            if _RANK[severity.value] > _RANK[event.severity.value]:
                update["severity"] = severity
            thumbnail = self._exact_thumbnail(sighting)
            if thumbnail is not None:
                update |= {
                    "thumbnail_event_id": thumbnail.thumbnail_event_id,
                    "thumbnail_time": thumbnail.thumbnail_time,
                }
        elif event.thumbnail_event_id is None:
            thumbnail = self._exact_thumbnail(sighting)
            if thumbnail is not None:
                update |= {
                    "thumbnail_event_id": thumbnail.thumbnail_event_id,
                    "thumbnail_time": thumbnail.thumbnail_time,
                }
        update["description"] = _description(
            event.label, event.start_time, end, confidence, best_detail, event.track_id
        )
        return event.model_copy(update=update)


_RANK = {"low": 0, "medium": 1, "high": 2}


def _description(
    label: str, start: float, end: float, confidence: float, seen: str, track_id: int | None
) -> str:
    """``describe_event``'s sentence; what was seen at the best sighting; the object's track."""
    return "; ".join([describe_event(label, start, end, confidence), seen or "seen", f"track {track_id}"])
