"""Pure tests of the session reducer: ordering, duplicates, bounded state, and when a session ends."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.reducer import FoldPolicy, InputRecord, fold, is_placeholder, record_keys
from schemas.records import (
    ChunkResult,
    EndSession,
    Event,
    IngestState,
    PurgeSession,
    SessionDeadline,
    SessionEvent,
    SessionHeader,
    SessionLifecycle,
    SessionStatus,
    Severity,
    StartSession,
    chunk_id_for,
    describe_event,
    event_id_for,
    format_mmss,
)

SESSION = "sess-1"
STREAM = "stream-1"
T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
CHUNK_S = 4.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def start() -> StartSession:
    return StartSession(
        session_id=SESSION,
        stream_id=STREAM,
        name="Front door",
        source_url="https://example.test/live.m3u8",
        rapid_review_query="detect a cat",
        created_by="alice",
        requested_at=T0,
    )


def end() -> EndSession:
    return EndSession(session_id=SESSION, stream_id=STREAM, requested_at=at(50))


def lifecycle(
    state: IngestState, chunks_published: int = 0, reason: str | None = None, manifest: str | None = None
) -> SessionLifecycle:
    return SessionLifecycle(
        session_id=SESSION,
        stream_id=STREAM,
        state=state,
        reason=reason,
        chunks_published=chunks_published,
        manifest_path=manifest,
        at=at(1),
    )


def event(label: str, start_time: float, end_time: float, chunk_index: int, confidence: float = 0.8) -> Event:
    return Event(
        event_id=event_id_for(SESSION, chunk_index, label, start_time),
        session_id=SESSION,
        stream_id=STREAM,
        type="detection",
        label=label,
        description=describe_event(label, start_time, end_time, confidence),
        severity=Severity.HIGH,
        confidence=confidence,
        stream_time=start_time,
        start_time=start_time,
        end_time=end_time,
        capture_time=start_time,
        captured_at=at(start_time),
        chunk_index=chunk_index,
        chunk_relative_time=start_time - chunk_index * CHUNK_S,
        hls_cumulative_offset=0.0,
        t_start=format_mmss(start_time),
        t_end=format_mmss(end_time),
        created_at=T0,
        analysis_id=f"a{chunk_index}",
        chunk_id=chunk_id_for(SESSION, chunk_index),
    )


def result(chunk_index: int, events: list[Event] | None = None, status: str = "ok") -> ChunkResult:
    return ChunkResult(
        session_id=SESSION,
        stream_id=STREAM,
        chunk_id=chunk_id_for(SESSION, chunk_index),
        chunk_index=chunk_index,
        analysis_id=f"a{chunk_index}",
        start_time=chunk_index * CHUNK_S,
        end_time=(chunk_index + 1) * CHUNK_S,
        frame_count=8,
        status=status,  # type: ignore[arg-type]
        error=None if status == "ok" else "decoder error",
        model="test-detector",
        targets=["cat"],
        events=events or [],
        inference_ms=12.0,
        created_at=T0,
    )


class Session:
    """What a reader of the session's topics sees: the header, its chunk records, its events."""

    def __init__(self, policy: FoldPolicy = FoldPolicy()) -> None:  # noqa: B008
        self.policy = policy
        self.header: SessionHeader | None = None
        self.chunks: dict[int, str] = {}
        self.records: dict[int, SessionEvent] = {}
        self.written: list[SessionEvent] = []
        self.purged = False

    def apply(self, record: InputRecord, now: datetime) -> Session:
        result = fold(self.header, record, now, self.policy)
        self.header = result.header
        self.purged = self.purged or result.purged
        for chunk in result.chunks:
            self.chunks[chunk.chunk.chunk_index] = chunk.chunk.status
        for written in result.events:
            previous = self.records.get(written.number)
            assert previous is None or previous.lifecycle != "closed", "a closed event never changes"
            assert previous is not None or written.lifecycle == "opened", "every event starts opened"
            self.records[written.number] = written
            self.written.append(written)
        return self

    @property
    def state(self) -> SessionHeader:
        assert self.header is not None
        return self.header

    @property
    def events(self) -> list[Event]:
        return sorted((r.event for r in self.records.values()), key=lambda e: (e.start_time, e.label))

    def spans(self) -> list[tuple[str, float, float, float]]:
        return [(e.label, e.start_time, e.end_time, e.confidence) for e in self.events]


def fold_all(records: Iterable[InputRecord], session: Session | None = None) -> Session:
    session = session or Session()
    for step, record in enumerate(records, start=1):
        session.apply(record, at(100 + step))
    return session


def test_start_creates_initializing_state() -> None:
    state = fold(None, start(), at(5)).header
    assert state is not None
    assert state.status is SessionStatus.INITIALIZING
    assert (state.session_id, state.stream_id, state.name) == (SESSION, STREAM, "Front door")
    assert state.source_url == "https://example.test/live.m3u8"
    assert (state.rapid_review_query, state.created_by) == ("detect a cat", "alice")
    assert state.created_at == T0
    assert state.updated_at == at(5)
    assert state.chunk_count == 0 and state.open_events == [] and state.ended_at is None
    assert not is_placeholder(state)


def test_duplicate_start_is_a_no_op() -> None:
    state = fold(None, start(), at(5)).header
    again = fold(state, start(), at(9))
    assert again.header is state and not again.changed


def test_lifecycle_active_activates_and_bumps_the_cursor() -> None:
    session = fold_all([start(), lifecycle(IngestState.ACTIVE, manifest="/data/sess-1.m3u8")])
    assert session.state.status is SessionStatus.ACTIVE
    assert session.state.manifest_path == "/data/sess-1.m3u8"
    assert session.state.cursor == 1  # the status change is a feed message
    again = fold(session.state, lifecycle(IngestState.ACTIVE), at(500))
    assert not again.changed and again.header is session.state


def test_end_session_moves_to_ending_but_not_back_from_terminal() -> None:
    session = fold_all([start(), lifecycle(IngestState.ACTIVE), end()])
    assert session.state.status is SessionStatus.ENDING
    assert session.state.ending_since is not None
    assert fold(session.state, lifecycle(IngestState.ACTIVE), at(300)).header.status is SessionStatus.ENDING
    fold_all([lifecycle(IngestState.ENDED, 0)], session)
    assert session.state.status is SessionStatus.FINISHED
    finished = session.state
    assert fold(finished, end(), at(400)).header is finished


def test_chunk_results_write_chunk_and_event_records() -> None:
    session = fold_all(
        [
            start(),
            lifecycle(IngestState.ACTIVE),
            result(0, [event("cat", 1.0, 4.0, 0)]),
            result(1, [event("cat", 4.0, 6.0, 1, 0.95)]),
            result(2),
        ]
    )
    state = session.state
    assert state.status is SessionStatus.ACTIVE
    assert state.chunk_count == 3 and state.next_chunk_index == 3
    assert session.chunks == {0: "ok", 1: "ok", 2: "ok"}
    assert state.chunks_published == 3
    assert session.spans() == [("cat", 1.0, 6.0, 0.95)]
    # opened in chunk 0, grown in chunk 1, closed after chunk 2 (8 s > 6 s + 1.5 s)
    assert [r.lifecycle for r in session.written] == ["opened", "updated", "closed"]
    assert state.open_events == []
    assert state.event_count == 1
    assert state.events_cursor == session.written[-1].cursor
    cursors = [r.cursor for r in session.written]
    assert cursors == sorted(set(cursors)) and cursors[-1] <= state.cursor


def test_redelivered_chunk_result_is_a_no_op() -> None:
    session = fold_all([start(), result(0, [event("cat", 1.0, 2.0, 0)])])
    again = fold(session.state, result(0, [event("cat", 1.0, 2.0, 0)]), at(999))
    assert again.header is session.state and not again.changed and again.events == ()


def test_finished_only_after_last_chunk_result() -> None:
    session = fold_all([start(), lifecycle(IngestState.ACTIVE), result(0), lifecycle(IngestState.ENDED, 3)])
    assert session.state.status is SessionStatus.ENDING
    assert session.state.chunks_expected == 3
    assert session.state.ended_at is None
    session.apply(result(2, [event("cat", 8.0, 9.0, 2)]), at(200))
    assert session.state.status is SessionStatus.ENDING
    assert [r.chunk_index for r in session.state.pending_results] == [2]
    session.apply(result(1), at(201))
    state = session.state
    assert state.status is SessionStatus.FINISHED
    assert state.ended_at == at(201)
    assert state.chunk_count == 3 and state.pending_results == []
    assert [r.lifecycle for r in session.written] == ["opened", "closed"]  # closed at the end
    assert state.status_reason is None
    assert state.cursor > state.events_cursor  # the terminal status comes after the last event


def test_ended_with_zero_chunks_is_terminal_at_once() -> None:
    state = fold_all([start(), lifecycle(IngestState.ENDED, 0)]).state
    assert state.status is SessionStatus.FINISHED
    assert state.chunks_expected == 0
    assert state.ended_at is not None


def test_ended_after_all_results_is_terminal_at_once() -> None:
    assert fold_all([start(), result(0), result(1), lifecycle(IngestState.ENDED, 2)]).state.status is (
        SessionStatus.FINISHED
    )


def test_failed_waits_for_published_chunks_then_fails() -> None:
    session = fold_all([start(), lifecycle(IngestState.ACTIVE), lifecycle(IngestState.FAILED, 2, "HTTP 404")])
    assert session.state.status is SessionStatus.ENDING
    assert session.state.status_reason == "HTTP 404"
    fold_all([result(1), result(0, status="failed")], session)
    state = session.state
    assert state.status is SessionStatus.FAILED
    assert state.status_reason == "HTTP 404"
    assert state.ended_at is not None
    assert session.chunks == {0: "failed", 1: "ok"}
    assert state.failed_chunk_count == 1


def test_failed_with_zero_chunks_is_terminal_at_once() -> None:
    state = fold_all([start(), lifecycle(IngestState.FAILED, 0, "not a live playlist")]).state
    assert state.status is SessionStatus.FAILED
    assert state.status_reason == "not a live playlist"


def test_failed_without_reason_still_fails() -> None:
    state = fold_all([start(), lifecycle(IngestState.FAILED, 0)]).state
    assert state.status is SessionStatus.FAILED
    assert state.status_reason


def test_terminal_status_never_changes() -> None:
    finished = fold_all([start(), result(0), lifecycle(IngestState.ENDED, 1)]).state
    assert finished.status is SessionStatus.FINISHED
    for record in (
        lifecycle(IngestState.ACTIVE),
        lifecycle(IngestState.FAILED, 5, "late"),
        lifecycle(IngestState.ENDED, 4),
        end(),
        start(),
        result(0),
        result(7),
        deadline(10_000),
    ):
        after = fold(finished, record, at(900)).header
        assert after is not None
        assert after.status is SessionStatus.FINISHED
        assert after.ended_at == finished.ended_at
        assert after.status_reason is None


def test_records_before_start_create_placeholder_then_start_fills_it() -> None:
    session = fold_all([lifecycle(IngestState.ACTIVE), result(0, [event("cat", 1.0, 2.0, 0)])])
    assert is_placeholder(session.state)
    assert session.state.status is SessionStatus.ACTIVE
    assert session.state.session_id == SESSION
    session.apply(start(), at(300))
    state = session.state
    assert not is_placeholder(state)
    assert state.status is SessionStatus.ACTIVE
    assert (state.name, state.created_by, state.created_at) == ("Front door", "alice", T0)
    assert state.chunk_count == 1 and len(session.events) == 1


def test_chunk_result_for_unknown_session_creates_placeholder() -> None:
    state = fold(None, result(3), at(7)).header
    assert state is not None and is_placeholder(state)
    assert state.status is SessionStatus.INITIALIZING
    assert state.chunks_published == 4
    assert state.created_at == state.updated_at == at(7)


def test_end_for_unknown_session_creates_ending_placeholder() -> None:
    state = fold(None, end(), at(7)).header
    assert state is not None and state.status is SessionStatus.ENDING


def test_finished_after_start_arrives_last() -> None:
    state = fold_all([result(0), lifecycle(IngestState.ENDED, 1), start()]).state
    assert state.status is SessionStatus.FINISHED
    assert state.name == "Front door"


def test_updated_at_follows_every_change() -> None:
    state = fold(None, start(), at(1)).header
    state = fold(state, result(0), at(2)).header
    assert state is not None and state.updated_at == at(2)


def test_header_round_trips_through_json() -> None:
    session = fold_all([start(), result(0, [event("cat", 1.0, 4.0, 0)]), result(2)])
    assert session.state.open_events and session.state.pending_results
    assert SessionHeader.model_validate_json(session.state.to_bytes()) == session.state


def cat_results() -> list[ChunkResult]:
    return [
        result(0, [event("cat", 2.0, 4.0, 0, 0.7)]),
        result(1, [event("cat", 4.0, 8.0, 1, 0.9), event("cup", 5.0, 6.0, 1)]),
        result(2, [event("cat", 8.0, 9.0, 2, 0.8)]),
        result(3, [event("cup", 13.0, 15.0, 3)]),
    ]


@pytest.mark.parametrize("with_duplicates", [False, True])
def test_any_order_of_results_gives_same_records(with_duplicates: bool) -> None:
    results = cat_results()
    head = [start(), lifecycle(IngestState.ACTIVE)]
    finals: set[tuple[str, ...]] = set()
    for order in itertools.permutations([*results, lifecycle(IngestState.ENDED, 4)]):
        records = [*head, *order]
        if with_duplicates:
            records = [*records, *results[:2]]
        session = fold_all(records)
        assert session.state.status is SessionStatus.FINISHED
        # cursors say when a version was written (status changes interleave), the rest is the same
        finals.add(
            tuple(r.model_dump_json(exclude={"written_at", "cursor"}) for r in session.records.values())
        )
        assert session.spans() == [
            ("cat", 2.0, 9.0, 0.9),
            ("cup", 5.0, 6.0, 0.8),
            ("cup", 13.0, 15.0, 0.8),
        ]
        assert all(r.lifecycle == "closed" for r in session.records.values())
    assert len(finals) == 1


@pytest.mark.parametrize("tolerance", [0.0, 1.5])
def test_merging_is_order_independent_within_the_window(tolerance: float) -> None:
    chunks = [
        result(0, [event("cat", 0.0, 4.0, 0, 0.6), event("cup", 1.0, 2.0, 0)]),
        result(1, [event("cat", 4.0, 8.0, 1, 0.9), event("person", 6.0, 8.0, 1, 0.7)]),
        result(2, [event("cat", 8.5, 9.0, 2, 0.7), event("person", 8.0, 12.0, 2, 0.75)]),
        result(3, [event("cup", 14.0, 16.0, 3, 0.65)]),
        result(4, [event("cat", 20.0, 21.0, 4, 0.55)]),
        result(5),
        result(6),
    ]
    policy = FoldPolicy(gap_tolerance_s=tolerance)
    outcomes = set()
    orders = random.Random(7).sample(list(itertools.permutations(chunks)), 400)
    for order in orders:
        session = fold_all([start(), *order], Session(policy))
        outcomes.add(tuple(session.spans()))
        assert session.state.open_events == []  # everything closed once 28 s are analysed
    assert len(outcomes) == 1
    spans = [(label, s, e) for label, s, e, _ in next(iter(outcomes))]
    if tolerance == 1.5:
        assert spans == [
            ("cat", 0.0, 9.0),
            ("cup", 1.0, 2.0),
            ("person", 6.0, 12.0),
            ("cup", 14.0, 16.0),
            ("cat", 20.0, 21.0),
        ]
    else:
        assert ("cat", 8.5, 9.0) in spans and ("cat", 0.0, 8.0) in spans


def test_contained_detection_does_not_shorten_and_raises_confidence() -> None:
    session = fold_all([start(), result(0, [event("cat", 0.0, 4.0, 0, 0.6)])])
    session.apply(result(1, [event("cat", 4.0, 8.0, 1, 0.6), event("cat", 5.0, 6.0, 1, 0.9)]), at(300))
    assert session.spans() == [("cat", 0.0, 8.0, 0.9)]


def test_event_longer_than_the_maximum_is_closed_and_a_new_one_opens() -> None:
    policy = FoldPolicy(max_event_duration_s=10.0)
    session = fold_all([start()], Session(policy))
    for index in range(6):  # a cat visible for 24 s
        session.apply(result(index, [event("cat", index * CHUNK_S, (index + 1) * CHUNK_S, index)]), at(index))
    assert session.spans() == [("cat", 0.0, 8.0, 0.8), ("cat", 8.0, 16.0, 0.8), ("cat", 16.0, 24.0, 0.8)]
    assert [r.lifecycle for r in session.records.values()] == ["closed", "closed", "updated"]
    assert all(e.end_time - e.start_time <= 10.0 for e in session.events)


def test_window_overflow_declares_the_chunk_missing_and_a_late_result_still_counts() -> None:
    policy = FoldPolicy(reorder_window_chunks=4)
    session = fold_all([start(), result(0)], Session(policy))
    for index in (2, 3, 4):  # chunk 1 is late
        session.apply(result(index, [event("cup", index * CHUNK_S, index * CHUNK_S + 1, index)]), at(index))
    assert session.state.next_chunk_index == 1  # waiting: the window spans chunks 1-4
    session.apply(result(5), at(5))  # the window would span 5 chunks: chunk 1 is declared missing
    state = session.state
    assert state.next_chunk_index == 6 and state.pending_results == []
    assert state.missing_chunks == [1] and state.missing_chunk_count == 1
    assert session.chunks[1] == "missing"
    session.apply(result(1, [event("cat", 5.0, 6.0, 1)]), at(9))
    state = session.state
    assert state.missing_chunks == [] and state.missing_chunk_count == 0 and state.chunk_count == 6
    assert session.chunks[1] == "ok"
    assert ("cat", 5.0, 6.0, 0.8) in session.spans()
    assert session.records[max(session.records)].lifecycle == "closed"


def test_too_many_waiting_detections_also_overflow_the_window() -> None:
    policy = FoldPolicy(reorder_window_events=2)
    session = fold_all([start(), result(0)], Session(policy))
    busy = [event("cup", 8.0 + i / 10, 8.05 + i / 10, 2) for i in range(3)]
    session.apply(result(2, busy), at(3))
    assert session.state.missing_chunks == [1] and session.state.next_chunk_index == 3


def deadline(seconds: float) -> SessionDeadline:
    return SessionDeadline(session_id=SESSION, stream_id=STREAM, requested_at=at(seconds))


def test_ending_session_with_a_lost_chunk_ends_at_its_deadline_naming_it() -> None:
    policy = FoldPolicy(ending_timeout_s=60.0)
    session = Session(policy)
    session.apply(start(), at(0)).apply(lifecycle(IngestState.ACTIVE), at(1))
    session.apply(result(0, [event("cat", 2.0, 4.0, 0)]), at(2)).apply(result(2), at(3))
    session.apply(lifecycle(IngestState.ENDED, 3), at(10))
    assert session.state.status is SessionStatus.ENDING
    session.apply(deadline(0), at(30))  # too early: nothing happens
    assert session.state.status is SessionStatus.ENDING
    session.apply(deadline(0), at(71))
    state = session.state
    assert state.status is SessionStatus.FINISHED
    assert state.status_reason == "the results of 1 chunk(s) never arrived: 1"
    assert session.chunks == {0: "ok", 1: "missing", 2: "ok"}
    assert state.open_events == [] and all(r.lifecycle == "closed" for r in session.records.values())


def test_ending_without_ingest_confirmation_ends_at_its_deadline() -> None:
    session = Session(FoldPolicy(ending_timeout_s=5.0))
    session.apply(start(), at(0)).apply(result(0), at(1)).apply(end(), at(2))
    session.apply(deadline(0), at(8))
    state = session.state
    assert state.status is SessionStatus.FINISHED
    assert state.chunks_expected == 1
    assert "did not confirm the end" in (state.status_reason or "")


def test_deadline_of_an_unknown_session_creates_nothing() -> None:
    assert fold(None, deadline(0), at(1)).header is None


def test_purge_removes_the_session_and_names_every_record_written() -> None:
    session = fold_all(
        [start(), result(0, [event("cat", 1.0, 2.0, 0)]), result(1), lifecycle(IngestState.ENDED, 2)]
    )
    header = session.state
    keys = record_keys(header)
    assert [key for kind, key in keys if kind == "chunk"] == [f"{SESSION}/chunk/0", f"{SESSION}/chunk/1"]
    assert [key for kind, key in keys if kind == "event"] == [f"{SESSION}/event/0"]
    purge = fold(header, PurgeSession(session_id=SESSION, stream_id=STREAM), at(999))
    assert purge.purged and purge.header is None and purge.changed
    again = fold(None, PurgeSession(session_id=SESSION, stream_id=STREAM), at(1000))
    assert again.purged and not again.changed


def test_a_week_long_session_keeps_a_small_header_and_constant_records_per_chunk() -> None:
    """151,200 chunks would take a while here; 20,000 chunks (22 h) with an event a minute show the shape."""
    session = Session()
    session.apply(start(), at(0))
    largest_header = 0
    for index in range(20_000):
        seconds = index * CHUNK_S
        detections = [event("cat", seconds + 1.0, seconds + 2.0, index)] if index % 15 == 0 else []
        folded = fold(session.state, result(index, detections), at(seconds))
        session.header = folded.header
        assert len(folded.chunks) == 1 and len(folded.events) <= 2
        largest_header = max(largest_header, len(session.state.to_bytes()))
    assert session.state.chunk_count == 20_000
    assert session.state.event_count == 20_000 // 15 + 1
    assert largest_header < 8 * 1024


def test_header_stays_under_its_budget_with_many_labels_a_long_query_and_a_full_window() -> None:
    long_query = "detect " + ", ".join(["anything that moves"] * 45)[:990]
    labels = [f"label{n:02d}" for n in range(60)]

    def busy(index: int) -> ChunkResult:
        seconds = index * CHUNK_S
        detections = [
            event(label, seconds, seconds + CHUNK_S, index).model_copy(update={"query": long_query})
            for label in labels
        ]
        return result(index, detections).model_copy(update={"targets": labels})

    policy = FoldPolicy(reorder_window_events=10_000)  # only the byte budget limits the window
    session = fold_all([start()], Session(policy))
    session.apply(busy(0), at(0))
    for index in range(2, 10):  # chunk 1 is late: everything else waits behind it
        session.apply(busy(index), at(index))
        assert len(session.state.to_bytes()) <= policy.header_budget_bytes
    assert session.state.missing_chunks == [1]  # the budget gave up waiting for it
    assert 0 < len(session.state.open_events) < len(labels)  # the oldest were closed early
    # Events closed early stay closed; every event still opened before it closed.
    assert all(r.lifecycle in {"opened", "updated", "closed"} for r in session.records.values())
