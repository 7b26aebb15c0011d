"""Pure tests of tracked session events (``aggregator.tracked``) driven through the reducer's ``fold``.

Chunks are 2 s with 4 sampled frames (0.0, 0.5, 1.0, 1.5 after the chunk's start). Every ok chunk
carries what the analyzer sends: the per-chunk raw events of each label (one run from its first
frame to the end of its last, with the best sighting's box and frame as thumbnail), the chunk's
``frame_times``, the tracked targets and every sighting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from itertools import pairwise, permutations

from aggregator.reducer import FoldPolicy, FoldResult, InputRecord, fold
from schemas.options import AnalysisOptions
from schemas.records import (
    ChunkResult,
    EndSession,
    Event,
    IngestState,
    SessionEvent,
    SessionHeader,
    SessionLifecycle,
    SessionStatus,
    Severity,
    Sighting,
    StartSession,
    TrackedTarget,
    chunk_id_for,
    describe_event,
    event_id_for,
    format_mmss,
)

SESSION = "sess-track"
STREAM = "stream-track"
T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
CHUNK_S = 2.0
FRAME_S = 0.5
FRAMES_PER_CHUNK = 4
PERSON = "person"
QUERY = "detect people walking"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --------------------------------------------------------------------------- inputs


def start(options: AnalysisOptions | None = None) -> StartSession:
    return StartSession(
        session_id=SESSION,
        stream_id=STREAM,
        name="Sidewalk",
        source_url="https://example.test/live.m3u8",
        rapid_review_query=QUERY,
        options=options,
        requested_at=T0,
    )


def end() -> EndSession:
    return EndSession(session_id=SESSION, stream_id=STREAM, requested_at=at(500))


def ended(chunks: int) -> SessionLifecycle:
    return SessionLifecycle(
        session_id=SESSION, stream_id=STREAM, state=IngestState.ENDED, chunks_published=chunks, at=at(501)
    )


def frame_times(index: int) -> list[float]:
    return [index * CHUNK_S + k * FRAME_S for k in range(FRAMES_PER_CHUNK)]


def box_at(x: float, t: float, speed: float = 0.02) -> tuple[float, float, float, float]:
    """A person 0.1 wide and 0.4 tall whose left edge is at ``x`` at time 0, walking right."""
    left = x + speed * t
    return (round(left, 4), 0.3, round(left + 0.1, 4), 0.7)


def seen(
    t: float, box: tuple[float, float, float, float], confidence: float = 0.8, label: str = PERSON
) -> Sighting:
    return Sighting(
        label=label, stream_time=t, box=box, confidence=confidence, detail=f"{label} {confidence:.2f}"
    )


def walker(
    x: float, times: Iterable[float], confidence: float | Callable[[float], float] = 0.8
) -> list[Sighting]:
    """Sightings of one person starting at ``x`` at each of ``times``."""
    return [seen(t, box_at(x, t), confidence(t) if callable(confidence) else confidence) for t in times]


def raw_event(index: int, label: str, sightings: list[Sighting], thumbnails: bool = True) -> Event:
    """The analyzer's per-chunk event of ``label``: its run of frames, best sighting's box and frame."""
    chunk_start, chunk_end = index * CHUNK_S, (index + 1) * CHUNK_S
    times = sorted({s.stream_time for s in sightings})
    start_time = times[0]
    frames = frame_times(index)
    later = [f for f in frames if f > times[-1]]
    end_time = later[0] if later else max(chunk_end, times[-1])
    best = sorted(sightings, key=lambda s: (-s.confidence, s.stream_time))[0]
    confidence = round(best.confidence, 4)
    event_id = event_id_for(SESSION, index, label, start_time)
    return Event(
        event_id=event_id,
        session_id=SESSION,
        stream_id=STREAM,
        type="detection",
        label=label,
        description=f"{describe_event(label, start_time, end_time, confidence)}; {best.detail}",
        severity=Severity.HIGH
        if confidence >= 0.8
        else Severity.MEDIUM
        if confidence >= 0.6
        else Severity.LOW,
        confidence=confidence,
        stream_time=start_time,
        start_time=start_time,
        end_time=end_time,
        capture_time=start_time,
        captured_at=at(start_time),
        chunk_index=index,
        chunk_relative_time=round(start_time - chunk_start, 3),
        hls_cumulative_offset=0.0,
        t_start=format_mmss(start_time),
        t_end=format_mmss(end_time),
        created_at=T0,
        analysis_id=f"a{index}",
        chunk_id=chunk_id_for(SESSION, index),
        query=QUERY,
        box=best.box,
        thumbnail_event_id=event_id if thumbnails else None,
        thumbnail_time=best.stream_time,
    )


def chunk(
    index: int,
    sightings: Iterable[Sighting] = (),
    *,
    tracked: list[TrackedTarget] | None = None,
    extra_events: Iterable[Event] = (),
    thumbnails: bool = True,
) -> ChunkResult:
    """An ok ChunkResult of chunk ``index`` with its sightings and the raw events they make."""
    sightings = sorted(sightings, key=lambda s: (s.stream_time, -s.confidence))
    labels = sorted({s.label for s in sightings})
    events = [
        raw_event(index, label, [s for s in sightings if s.label == label], thumbnails) for label in labels
    ]
    return ChunkResult(
        session_id=SESSION,
        stream_id=STREAM,
        chunk_id=chunk_id_for(SESSION, index),
        chunk_index=index,
        analysis_id=f"a{index}",
        start_time=index * CHUNK_S,
        end_time=(index + 1) * CHUNK_S,
        frame_count=FRAMES_PER_CHUNK,
        status="ok",
        model="test-detector",
        targets=[PERSON],
        events=sorted([*events, *extra_events], key=lambda e: (e.start_time, e.label)),
        frame_times=frame_times(index),
        tracked=[TrackedTarget(label=PERSON)] if tracked is None else tracked,
        sightings=sightings,
        inference_ms=10.0,
        created_at=T0,
    )


def in_chunk(index: int, sightings: list[Sighting]) -> list[Sighting]:
    return [s for s in sightings if index * CHUNK_S <= s.stream_time < (index + 1) * CHUNK_S]


def chunks_of(count: int, sightings: list[Sighting], **kwargs: object) -> list[ChunkResult]:
    return [chunk(i, in_chunk(i, sightings), **kwargs) for i in range(count)]  # type: ignore[arg-type]


def times(first: float, last: float) -> list[float]:
    """Sampled frame times from ``first`` to ``last`` included."""
    count = round((last - first) / FRAME_S)
    return [first + k * FRAME_S for k in range(count + 1)]


# --------------------------------------------------------------------------- session


class Session:
    """What a reader of the session's topics sees, and every FoldResult."""

    def __init__(self, policy: FoldPolicy = FoldPolicy(), through_json: bool = False) -> None:  # noqa: B008
        self.policy = policy
        self.through_json = through_json
        self.header: SessionHeader | None = None
        self.records: dict[int, SessionEvent] = {}
        self.written: list[SessionEvent] = []
        self.results: list[FoldResult] = []
        self.step = 0

    def apply(self, record: InputRecord) -> FoldResult:
        self.step += 1
        header = self.header
        if header is not None and self.through_json:
            header = SessionHeader.model_validate_json(header.to_bytes())
            assert header == self.header
        folded = fold(header, record, at(100 + self.step), self.policy)
        self.header = folded.header
        self.results.append(folded)
        for written in folded.events:
            previous = self.records.get(written.number)
            assert previous is None or previous.lifecycle != "closed", "a closed event never changes"
            assert previous is not None or written.lifecycle == "opened", "every event starts opened"
            self.records[written.number] = written
            self.written.append(written)
        return folded

    def apply_all(self, records: Iterable[InputRecord]) -> Session:
        for record in records:
            self.apply(record)
        return self

    @property
    def state(self) -> SessionHeader:
        assert self.header is not None
        return self.header

    @property
    def events(self) -> list[Event]:
        """The latest version of every merged event, by start time then track."""
        return sorted((r.event for r in self.records.values()), key=lambda e: (e.start_time, e.track_id or 0))

    def spans(self) -> list[tuple[float, float]]:
        return [(e.start_time, e.end_time) for e in self.events]

    def discarded(self) -> list[str]:
        return [t for result in self.results for t in result.discarded_thumbnails]


def run(records: Iterable[InputRecord], **kwargs: object) -> Session:
    return Session(**kwargs).apply_all(records)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- 1. two people


def two_walkers(last: float = 7.5) -> list[Sighting]:
    """Two people walking right side by side, 0.02 of the frame apart."""
    return [*walker(0.1, times(0.0, last), 0.8), *walker(0.22, times(0.0, last), 0.7)]


def test_two_people_side_by_side_make_two_events_spanning_their_appearance() -> None:
    results = chunks_of(4, two_walkers())
    session = run([start(), *results[:2]])
    # Open after chunk 1: both already span the chunk boundary.
    assert sorted(session.spans()) == [(0.0, 4.0), (0.0, 4.0)]
    session.apply_all([*results[2:], end(), ended(4)])

    events = session.events
    assert len(events) == 2
    assert session.state.event_count == 2
    assert all(e.label == PERSON for e in events)
    assert all(e.track_id is not None for e in events)
    assert len({e.track_id for e in events}) == 2
    assert len({e.event_id for e in events}) == 2
    # start = first sighting, end = end of the last frame seen (the chunk's end after 7.5 s)
    assert session.spans() == [(0.0, 8.0), (0.0, 8.0)]
    assert all(e.t_start == "00:00" and e.t_end == "00:08" for e in events)
    by_confidence = sorted(events, key=lambda e: e.confidence)
    assert [e.confidence for e in by_confidence] == [0.7, 0.8]
    # each event's box is one of its own person's boxes
    assert by_confidence[0].box in {box_at(0.22, t) for t in times(0.0, 7.5)}
    assert by_confidence[1].box in {box_at(0.1, t) for t in times(0.0, 7.5)}
    assert all(e.query == QUERY and e.type == "detection" for e in events)
    assert all(r.lifecycle == "closed" for r in session.records.values())


def test_two_people_keep_their_track_ids_across_chunks() -> None:
    session = run([start(), *chunks_of(4, two_walkers())])
    ids_by_number: dict[int, set[int | None]] = {}
    for record in session.written:
        ids_by_number.setdefault(record.number, set()).add(record.event.track_id)
    assert len(ids_by_number) == 2
    assert all(len(ids) == 1 for ids in ids_by_number.values())
    # the tracker keeps both tracks in the header between chunks
    assert session.state.tracker is not None
    assert {t.track_id for t in session.state.tracker.tracks} == {
        next(iter(ids)) for ids in ids_by_number.values()
    }


# --------------------------------------------------------------------------- 2. single frame


def test_a_single_frame_detection_is_no_event() -> None:
    session = run([start(), chunk(0, [seen(0.5, box_at(0.1, 0.5))]), chunk(1), chunk(2), end(), ended(3)])
    assert session.written == []
    assert session.state.event_count == 0
    assert session.state.status is SessionStatus.FINISHED


def test_a_single_frame_detection_is_an_event_with_min_frames_one() -> None:
    options = AnalysisOptions(min_frames=1)
    session = run(
        [start(options), chunk(0, [seen(0.5, box_at(0.1, 0.5))]), chunk(1), chunk(2), end(), ended(3)]
    )
    assert len(session.events) == 1
    (event,) = session.events
    assert (event.start_time, event.end_time) == (0.5, 1.0)
    assert event.track_id is not None and event.label == PERSON
    assert [r.lifecycle for r in session.written] == ["opened", "closed"]


# --------------------------------------------------------------------------- 3. lost and found


def test_an_object_that_leaves_longer_than_max_lost_and_returns_is_two_events() -> None:
    # seen 0.0-3.5, gone 4.0-9.5 (6.5 s > 3 s), back 10.0-13.5
    sightings = walker(0.1, [*times(0.0, 3.5), *times(10.0, 13.5)], 0.8)
    results = chunks_of(7, sightings)
    session = run([start(), *results[:4]])
    # the first event closed before the object returned (4.0 + 3 s < 8.0, the end of chunk 3)
    assert [r.lifecycle for r in session.written if r.number == 0][-1] == "closed"
    assert session.state.open_events == []
    session.apply_all([*results[4:], end(), ended(7)])

    assert session.spans() == [(0.0, 4.0), (10.0, 14.0)]
    first, second = session.events
    assert first.track_id is not None and second.track_id is not None
    assert first.track_id != second.track_id  # a track lost past max_lost_s is dropped: new id
    closed_first = next(r.cursor for r in session.written if r.number == 0 and r.lifecycle == "closed")
    opened_second = next(r.cursor for r in session.written if r.number == 1 and r.lifecycle == "opened")
    assert closed_first < opened_second


def test_an_object_missing_for_one_frame_stays_one_event() -> None:
    missing = {1.5}  # the last frame of chunk 0
    sightings = walker(0.1, [t for t in times(0.0, 5.5) if t not in missing], 0.8)
    session = run([start(), *chunks_of(3, sightings), end(), ended(3)])
    assert session.spans() == [(0.0, 6.0)]
    assert session.state.event_count == 1


def test_an_object_hidden_for_less_than_max_lost_stays_one_event() -> None:
    # unseen for a whole chunk: last seen 1.5, seen again at 4.0 (2.5 s < 3 s)
    sightings = walker(0.1, [*times(0.0, 1.5), *times(4.0, 5.5)], 0.8)
    session = run([start(), *chunks_of(3, sightings), end(), ended(3)])
    assert session.spans() == [(0.0, 6.0)]
    assert session.state.event_count == 1


def test_max_lost_follows_the_session_options() -> None:
    # the same 2.5 s gap with max_lost_s=1 is two appearances
    sightings = walker(0.1, [*times(0.0, 1.5), *times(4.0, 5.5)], 0.8)
    session = run([start(AnalysisOptions(max_lost_s=1.0)), *chunks_of(3, sightings), end(), ended(3)])
    assert session.spans() == [(0.0, 2.0), (4.0, 6.0)]


# --------------------------------------------------------------------------- 4. duration


def test_a_target_with_a_duration_becomes_an_event_once_its_track_spans_it() -> None:
    target = [TrackedTarget(label=PERSON, min_duration_s=5.0)]
    staying = walker(0.1, times(0.0, 9.5), 0.8)  # 10 s
    passing = walker(0.5, times(0.0, 3.5), 0.7)  # 4 s: never long enough
    results = chunks_of(5, [*staying, *passing], tracked=target)
    session = run([start(), *results[:2]])
    assert session.written == []  # 4 s of track so far
    opened = session.apply(results[2])
    assert [r.lifecycle for r in opened.events] == ["opened"]
    # confirmed at 5.0 s, yet the event starts at the track's first sighting
    assert (opened.events[0].event.start_time, opened.events[0].event.end_time) == (0.0, 6.0)
    session.apply_all([*results[3:], end(), ended(5)])
    assert session.spans() == [(0.0, 10.0)]
    assert session.state.event_count == 1


# --------------------------------------------------------------------------- 5. records per chunk


def test_at_most_one_record_per_event_per_chunk_and_each_event_opens_and_closes_once() -> None:
    results = chunks_of(4, two_walkers())
    session = run([start(), *results])
    for folded in session.results:
        growing = Counter(r.number for r in folded.events if r.lifecycle in ("opened", "updated"))
        assert all(count == 1 for count in growing.values()), growing
        assert len(folded.events) <= 2 * len(session.records)  # per chunk, not per frame
    assert session.state.tracker is not None
    session.apply_all([end(), ended(4)])

    state = session.state
    assert state.status is SessionStatus.FINISHED
    assert state.tracker is None
    assert state.open_events == []
    lifecycles = {n: [r.lifecycle for r in session.written if r.number == n] for n in session.records}
    assert len(lifecycles) == 2
    for sequence in lifecycles.values():
        assert sequence[0] == "opened" and sequence[-1] == "closed"
        assert sequence.count("opened") == 1 and sequence.count("closed") == 1
        assert len(sequence) <= len(results) + 1  # opened, one update per later chunk, closed
    cursors = [r.cursor for r in session.written]
    assert cursors == sorted(set(cursors))


# --------------------------------------------------------------------------- 6. redelivery, determinism


def test_a_redelivered_chunk_result_changes_nothing() -> None:
    results = chunks_of(4, two_walkers())
    session = run([start(), *results[:3]])
    before = session.state
    for again in (results[1], results[2]):
        folded = fold(before, again, at(999))
        assert not folded.changed
        assert folded.events == ()
        assert folded.header == before


def test_folding_from_a_header_that_went_through_json_gives_identical_events() -> None:
    records: list[InputRecord] = [
        start(),
        *chunks_of(7, [*two_walkers(3.5), *walker(0.7, [*times(1.0, 3.0), *times(10.0, 13.5)], 0.9)]),
        end(),
        ended(7),
    ]
    plain = run(records)
    again = run(records)
    through_json = run(records, through_json=True)
    assert plain.written  # something to compare
    assert [r.model_dump() for r in again.written] == [r.model_dump() for r in plain.written]
    assert [r.model_dump() for r in through_json.written] == [r.model_dump() for r in plain.written]
    assert through_json.state == plain.state


def test_json_round_trips_of_the_header_do_not_change_tracks_or_event_windows() -> None:
    """The same as above, leaving out each event's ``created_at`` (the tracking itself)."""
    records: list[InputRecord] = [
        start(),
        *chunks_of(7, [*two_walkers(3.5), *walker(0.7, [*times(1.0, 3.0), *times(10.0, 13.5)], 0.9)]),
        end(),
        ended(7),
    ]
    plain = run(records)
    through_json = run(records, through_json=True)
    exclude = {"event": {"created_at"}}
    assert len(plain.records) == 4
    assert [r.model_dump(exclude=exclude) for r in through_json.written] == [
        r.model_dump(exclude=exclude) for r in plain.written
    ]


def test_results_arriving_out_of_order_give_the_same_tracked_events() -> None:
    results = chunks_of(4, [*two_walkers(5.5), *walker(0.7, times(1.0, 3.0), 0.9)])
    exclude = {"event": {"created_at"}, "cursor": True, "written_at": True}
    outcomes = set()
    for order in permutations(results):
        session = run([start(), *order, end(), ended(4)])
        assert session.state.status is SessionStatus.FINISHED
        outcomes.add(tuple(r.model_dump_json(exclude=exclude) for r in session.records.values()))
    assert len(outcomes) == 1
    assert len(next(iter(outcomes))) == 3


# --------------------------------------------------------------------------- 7. severity


def test_severity_follows_the_session_thresholds() -> None:
    options = AnalysisOptions(severity_high=0.9, severity_medium=0.5)
    strong = walker(0.1, times(0.0, 3.5), lambda t: 0.95 if t == 3.0 else 0.85)
    weak = walker(0.5, times(0.0, 3.5), 0.55)
    results = chunks_of(2, [*strong, *weak])

    session = run([start(options), results[0]])
    by_confidence = sorted(session.events, key=lambda e: e.confidence)
    assert [(e.confidence, e.severity) for e in by_confidence] == [
        (0.55, Severity.MEDIUM),
        (0.85, Severity.MEDIUM),
    ]
    session.apply_all([results[1], end(), ended(2)])
    by_confidence = sorted(session.events, key=lambda e: e.confidence)
    assert [(e.confidence, e.severity) for e in by_confidence] == [
        (0.55, Severity.MEDIUM),
        (0.95, Severity.HIGH),
    ]

    defaults = run([start(), *results, end(), ended(2)])
    by_confidence = sorted(defaults.events, key=lambda e: e.confidence)
    assert [(e.confidence, e.severity) for e in by_confidence] == [
        (0.55, Severity.LOW),
        (0.95, Severity.HIGH),
    ]


# --------------------------------------------------------------------------- 8. untracked


def test_untracked_targets_still_merge_by_label() -> None:
    first = walker(0.1, times(1.0, 1.5), 0.7)
    second = walker(0.1, times(2.0, 3.0), 0.9)
    results = [chunk(0, first, tracked=[]), chunk(1, second, tracked=[])]
    session = run([start(), *results, chunk(2, tracked=[]), chunk(3, tracked=[])])
    assert [(e.label, e.start_time, e.end_time, e.confidence, e.track_id) for e in session.events] == [
        (PERSON, 1.0, 3.5, 0.9, None)
    ]
    assert session.state.tracker is None
    assert session.events[0].event_id == results[0].events[0].event_id  # the first detection's id


def test_untracked_labels_merge_beside_tracked_ones() -> None:
    def car(index: int, start_time: float, end_time: float) -> Event:
        return raw_event(index, "car", [seen(start_time, (0.6, 0.5, 0.9, 0.8), 0.8, "car")]).model_copy(
            update={"end_time": end_time, "t_end": format_mmss(end_time)}
        )

    people = walker(0.1, times(0.0, 3.5), 0.8)
    results = [
        chunk(0, in_chunk(0, people), extra_events=[car(0, 0.5, 2.0)]),
        chunk(1, in_chunk(1, people), extra_events=[car(1, 2.0, 3.0)]),
    ]
    session = run([start(), *results, end(), ended(2)])
    summary = [(e.label, e.start_time, e.end_time, e.track_id is None) for e in session.events]
    assert summary == [(PERSON, 0.0, 4.0, False), ("car", 0.5, 3.0, True)]


# --------------------------------------------------------------------------- 9. thumbnails


def test_thumbnail_of_a_raw_event_no_tracked_event_shows_is_discarded() -> None:
    blip = chunk(0, [seen(0.5, box_at(0.1, 0.5))])  # a single-frame detection: no event
    session = run([start(), blip])
    thumbnail = blip.events[0].thumbnail_event_id
    assert thumbnail is not None
    assert session.results[-1].discarded_thumbnails == (thumbnail,)


def test_thumbnail_a_tracked_event_shows_is_kept() -> None:
    person = walker(0.1, times(0.0, 3.5), lambda t: 0.9 if t == 1.0 else 0.8)
    results = chunks_of(2, person)
    session = run([start(), *results])
    shown = results[0].events[0].thumbnail_event_id
    not_shown = results[1].events[0].thumbnail_event_id  # chunk 1's best (0.8) never beats 0.9
    (event,) = session.events
    assert event.thumbnail_event_id == shown
    assert event.thumbnail_time == 1.0 and event.box == box_at(0.1, 1.0)
    assert shown not in session.discarded()
    assert session.results[-1].discarded_thumbnails == (not_shown,)


def test_thumbnail_moves_to_a_more_confident_sighting_and_the_old_one_is_kept() -> None:
    person = walker(0.1, times(0.0, 3.5), lambda t: 0.95 if t == 2.5 else 0.8)
    results = chunks_of(2, person)
    session = run([start(), *results])
    (event,) = session.events
    assert event.thumbnail_event_id == results[1].events[0].thumbnail_event_id
    assert event.thumbnail_time == 2.5 and event.confidence == 0.95
    assert session.discarded() == []  # the thumbnail it moved away from is kept


def test_two_people_share_a_run_thumbnail_which_is_kept() -> None:
    results = chunks_of(2, two_walkers(3.5))
    session = run([start(), *results])
    thumbnails = {e.thumbnail_event_id for e in session.events}
    assert results[0].events[0].thumbnail_event_id in thumbnails
    assert None not in thumbnails
    for shown in thumbnails:
        assert shown not in session.discarded()


def test_an_event_without_a_thumbnail_takes_a_later_run_thumbnail_of_a_frame_it_was_seen_in() -> None:
    # A is every run's best (its thumbnails); B appears after chunk 0's best frame (0.0), so its
    # event opens without one, but chunk 1's best frame (2.0) is one B was seen in.
    a = walker(0.1, times(0.0, 3.5), 0.9)
    b = walker(0.4, times(1.0, 3.5), 0.7)
    results = chunks_of(2, [*a, *b])
    session = run([start(), *results])
    first, second = session.events
    assert first.thumbnail_event_id == results[0].events[0].thumbnail_event_id
    assert second.thumbnail_time == 2.0
    assert second.thumbnail_event_id == results[1].events[0].thumbnail_event_id
    assert session.discarded() == []


# --------------------------------------------------------------------------- long and crowded


def test_a_track_longer_than_the_maximum_duration_is_a_series_of_events() -> None:
    person = walker(0.1, times(0.0, 11.5), 0.8)
    session = run([start(), *chunks_of(6, person)], policy=FoldPolicy(max_event_duration_s=5.0))
    assert session.spans() == [(0.0, 5.0), (5.0, 10.0), (10.0, 12.0)]
    assert len({e.track_id for e in session.events}) == 1
    # the third opened in the last chunk (and grew in it: still one record)
    assert [r.lifecycle for r in session.records.values()] == ["closed", "closed", "opened"]
    assert all(e.end_time - e.start_time <= 5.0 for e in session.events)


def test_an_event_closed_early_for_the_header_budget_is_not_repeated_by_its_track() -> None:
    # Ten people in view for 12 s: more open events than a small header budget allows, so the
    # reducer closes some early (``_Folding.fit``); their tracks go on and open new events,
    # which must not cover again what the closed ones already reported.
    people: list[Sighting] = []
    for i in range(10):
        left = round(0.02 + 0.095 * i, 4)
        people += [seen(t, (left, 0.1, round(left + 0.08, 4), 0.5), 0.8) for t in times(0.0, 11.5)]
    session = run([start(), *chunks_of(6, people)], policy=FoldPolicy(header_budget_bytes=11_000))
    assert session.state.event_count > 10  # some events were closed early
    by_track: dict[int | None, list[Event]] = {}
    for number in sorted(session.records):  # in the order they opened
        event = session.records[number].event
        by_track.setdefault(event.track_id, []).append(event)
    assert len(by_track) == 10
    for events in by_track.values():
        for before, after in pairwise(events):
            assert after.start_time >= before.end_time, (before.start_time, before.end_time, after.start_time)


# --------------------------------------------------------------------------- hysteresis


def weakened(sightings: list[Sighting], confidence: float = 0.4) -> list[Sighting]:
    """The sightings as the analyzer sends boxes below the detection threshold, above the keep one."""
    return [s.model_copy(update={"weak": True, "confidence": confidence}) for s in sightings]


def test_weak_sightings_keep_a_tracked_object_in_its_event() -> None:
    # Strong 0.0-3.5, then only weak (score between the keep and detection thresholds) for 6 s:
    # longer than max_lost_s, so without hysteresis the event would end at 4.0.
    strong = walker(0.1, times(0.0, 3.5), 0.8)
    weak = weakened(walker(0.1, times(4.0, 9.5), 0.8))
    session = run([start(), *chunks_of(5, [*strong, *weak]), end(), ended(5)])
    assert session.spans() == [(0.0, 10.0)]
    [event] = session.events
    assert event.confidence == 0.8  # weak sightings extend the event, they never raise it


def test_weak_sightings_alone_never_make_an_event() -> None:
    weak = weakened(walker(0.1, times(0.0, 7.5), 0.8))
    session = run([start(), *chunks_of(4, weak), end(), ended(4)])
    assert session.events == []
    # nor confirm a track started by a single strong sighting
    first = walker(0.1, [0.0], 0.8)
    session = run(
        [start(), *chunks_of(4, [*first, *weakened(walker(0.1, times(0.5, 7.5), 0.8))]), end(), ended(4)]
    )
    assert session.events == []
