"""Pure tests of the session reducer: ordering, duplicates, and when a session becomes terminal."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.reducer import InputRecord, fold, is_placeholder
from schemas.records import (
    ChunkResult,
    EndSession,
    Event,
    IngestState,
    SessionLifecycle,
    SessionState,
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
        capture_time=at(start_time),
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


def fold_all(records: Iterable[InputRecord], state: SessionState | None = None) -> SessionState:
    for step, record in enumerate(records, start=1):
        state = fold(state, record, at(100 + step))
    assert state is not None
    return state


def test_start_creates_initializing_state() -> None:
    state = fold(None, start(), at(5))
    assert state.status is SessionStatus.INITIALIZING
    assert (state.session_id, state.stream_id, state.name) == (SESSION, STREAM, "Front door")
    assert state.source_url == "https://example.test/live.m3u8"
    assert (state.rapid_review_query, state.created_by) == ("detect a cat", "alice")
    assert state.created_at == T0
    assert state.updated_at == at(5)
    assert state.chunk_count == 0 and state.events == [] and state.ended_at is None
    assert not is_placeholder(state)


def test_duplicate_start_is_a_no_op() -> None:
    state = fold(None, start(), at(5))
    again = fold(state, start(), at(9))
    assert again is state


def test_lifecycle_active_activates() -> None:
    state = fold_all([start(), lifecycle(IngestState.ACTIVE, manifest="/data/sess-1.m3u8")])
    assert state.status is SessionStatus.ACTIVE
    assert state.manifest_path == "/data/sess-1.m3u8"
    assert fold(state, lifecycle(IngestState.ACTIVE), at(500)) == state.model_copy(
        update={"updated_at": state.updated_at}
    )


def test_unchanged_state_keeps_updated_at() -> None:
    state = fold_all([start(), lifecycle(IngestState.ACTIVE)])
    assert fold(state, lifecycle(IngestState.ACTIVE), at(999)).updated_at == state.updated_at


def test_end_session_moves_to_ending_but_not_back_from_terminal() -> None:
    state = fold_all([start(), lifecycle(IngestState.ACTIVE), end()])
    assert state.status is SessionStatus.ENDING
    assert fold(state, lifecycle(IngestState.ACTIVE), at(300)).status is SessionStatus.ENDING
    finished = fold_all([lifecycle(IngestState.ENDED, 0)], state)
    assert finished.status is SessionStatus.FINISHED
    assert fold(finished, end(), at(400)) is finished


def test_chunk_results_update_counts_and_events() -> None:
    state = fold_all(
        [
            start(),
            lifecycle(IngestState.ACTIVE),
            result(0, [event("cat", 1.0, 4.0, 0)]),
            result(1, [event("cat", 4.0, 6.0, 1, 0.95)]),
            result(2),
        ]
    )
    assert state.status is SessionStatus.ACTIVE
    assert state.chunk_count == 3
    assert [c.chunk_index for c in state.chunks] == [0, 1, 2]
    assert [c.event_count for c in state.chunks] == [1, 1, 0]
    assert state.chunks_published == 3
    [cat] = state.events
    assert (cat.start_time, cat.end_time, cat.confidence) == (1.0, 6.0, 0.95)


def test_redelivered_chunk_result_is_a_no_op() -> None:
    state = fold_all([start(), result(0, [event("cat", 1.0, 2.0, 0)])])
    assert fold(state, result(0, [event("cat", 1.0, 2.0, 0)]), at(999)) is state


def test_finished_only_after_last_chunk_result() -> None:
    state = fold_all([start(), lifecycle(IngestState.ACTIVE), result(0), lifecycle(IngestState.ENDED, 3)])
    assert state.status is SessionStatus.ENDING
    assert state.chunks_expected == 3
    assert state.ended_at is None
    state = fold(state, result(2, [event("cat", 8.0, 9.0, 2)]), at(200))
    assert state.status is SessionStatus.ENDING
    state = fold(state, result(1), at(201))
    assert state.status is SessionStatus.FINISHED
    assert state.ended_at == at(201)
    assert state.chunk_count == 3
    assert len(state.events) == 1
    assert state.status_reason is None


def test_ended_with_zero_chunks_is_terminal_at_once() -> None:
    state = fold_all([start(), lifecycle(IngestState.ENDED, 0)])
    assert state.status is SessionStatus.FINISHED
    assert state.chunks_expected == 0
    assert state.ended_at is not None


def test_ended_after_all_results_is_terminal_at_once() -> None:
    state = fold_all([start(), result(0), result(1), lifecycle(IngestState.ENDED, 2)])
    assert state.status is SessionStatus.FINISHED


def test_failed_waits_for_published_chunks_then_fails() -> None:
    state = fold_all([start(), lifecycle(IngestState.ACTIVE), lifecycle(IngestState.FAILED, 2, "HTTP 404")])
    assert state.status is SessionStatus.ENDING
    assert state.status_reason == "HTTP 404"
    state = fold_all([result(1), result(0, status="failed")], state)
    assert state.status is SessionStatus.FAILED
    assert state.status_reason == "HTTP 404"
    assert state.ended_at is not None
    assert [c.status for c in state.chunks] == ["failed", "ok"]


def test_failed_with_zero_chunks_is_terminal_at_once() -> None:
    state = fold_all([start(), lifecycle(IngestState.FAILED, 0, "not a live playlist")])
    assert state.status is SessionStatus.FAILED
    assert state.status_reason == "not a live playlist"


def test_failed_without_reason_still_fails() -> None:
    state = fold_all([start(), lifecycle(IngestState.FAILED, 0)])
    assert state.status is SessionStatus.FAILED
    assert state.status_reason


def test_terminal_status_never_changes() -> None:
    finished = fold_all([start(), result(0), lifecycle(IngestState.ENDED, 1)])
    assert finished.status is SessionStatus.FINISHED
    for record in (
        lifecycle(IngestState.ACTIVE),
        lifecycle(IngestState.FAILED, 5, "late"),
        lifecycle(IngestState.ENDED, 4),
        end(),
        start(),
        result(0),
    ):
        after = fold(finished, record, at(900))
        assert after.status is SessionStatus.FINISHED
        assert after.ended_at == finished.ended_at
        assert after.status_reason is None


def test_records_before_start_create_placeholder_then_start_fills_it() -> None:
    state = fold_all([lifecycle(IngestState.ACTIVE), result(0, [event("cat", 1.0, 2.0, 0)])])
    assert is_placeholder(state)
    assert state.status is SessionStatus.ACTIVE
    assert state.session_id == SESSION
    state = fold(state, start(), at(300))
    assert not is_placeholder(state)
    assert state.status is SessionStatus.ACTIVE
    assert (state.name, state.created_by, state.created_at) == ("Front door", "alice", T0)
    assert state.chunk_count == 1 and len(state.events) == 1


def test_chunk_result_for_unknown_session_creates_placeholder() -> None:
    state = fold(None, result(3), at(7))
    assert is_placeholder(state)
    assert state.status is SessionStatus.INITIALIZING
    assert state.chunks_published == 4
    assert state.created_at == state.updated_at == at(7)


def test_end_for_unknown_session_creates_ending_placeholder() -> None:
    state = fold(None, end(), at(7))
    assert state.status is SessionStatus.ENDING


def test_finished_after_start_arrives_last() -> None:
    state = fold_all([result(0), lifecycle(IngestState.ENDED, 1), start()])
    assert state.status is SessionStatus.FINISHED
    assert state.name == "Front door"


def test_updated_at_follows_every_change() -> None:
    state = fold(None, start(), at(1))
    state = fold(state, result(0), at(2))
    assert state.updated_at == at(2)


def test_state_round_trips_through_json() -> None:
    state = fold_all([start(), result(0, [event("cat", 1.0, 2.0, 0)]), lifecycle(IngestState.ENDED, 1)])
    assert SessionState.model_validate_json(state.to_bytes()) == state


@pytest.mark.parametrize("with_duplicates", [False, True])
def test_any_order_of_results_gives_same_final_state(with_duplicates: bool) -> None:
    results = [
        result(0, [event("cat", 2.0, 4.0, 0, 0.7)]),
        result(1, [event("cat", 4.0, 8.0, 1, 0.9), event("cup", 5.0, 6.0, 1)]),
        result(2, [event("cat", 8.0, 9.0, 2, 0.8)]),
        result(3, [event("cup", 13.0, 15.0, 3)]),
    ]
    head = [start(), lifecycle(IngestState.ACTIVE)]
    finals: dict[str, SessionState] = {}
    for order in itertools.permutations([*results, lifecycle(IngestState.ENDED, 4)]):
        records = [*head, *order]
        if with_duplicates:
            records = [*records, *results[:2]]
        state = fold_all(records)
        assert state.status is SessionStatus.FINISHED
        finals[state.model_dump_json(exclude={"updated_at", "ended_at"})] = state
    assert len(finals) == 1
    [final] = finals.values()
    assert final.chunk_count == 4
    assert [(e.label, e.start_time, e.end_time, e.confidence) for e in final.events] == [
        ("cat", 2.0, 9.0, 0.9),
        ("cup", 5.0, 6.0, 0.8),
        ("cup", 13.0, 15.0, 0.8),
    ]


def test_never_terminal_before_all_results_in_any_order() -> None:
    results = [result(i) for i in range(3)]
    for order in itertools.permutations([*results, lifecycle(IngestState.ENDED, 3)]):
        state = fold_all([start()])
        for step, record in enumerate(order):
            state = fold(state, record, at(step))
            folded = {c.chunk_index for c in state.chunks}
            assert state.status.terminal == (folded == {0, 1, 2} and state.chunks_expected == 3)
