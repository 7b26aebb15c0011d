"""Folding of one session's records into its ``SessionState`` (pure: no I/O, no clock).

Records of the three input topics may arrive in any order relative to each other, and any
record may be delivered twice (at-least-once). So the fold is idempotent, a record for an
unknown session creates a placeholder state, and a session becomes terminal only once the
results of all chunks ingest reported have been folded in: nobody sees FINISHED (where the
SDK stops reading events) before the last events.

While a session is ENDING with a final chunk total, ``status_reason`` set means ingest
reported FAILED (the session will end FAILED), unset means ENDED (it will end FINISHED).
"""

from __future__ import annotations

from datetime import datetime

from aggregator.merge import merge_events
from aggregator.settings import DEFAULT_GAP_TOLERANCE_S
from schemas.records import (
    ChunkResult,
    ChunkSummary,
    EndSession,
    IngestState,
    SessionLifecycle,
    SessionState,
    SessionStatus,
    StartSession,
    initial_state,
)

InputRecord = StartSession | EndSession | SessionLifecycle | ChunkResult


def fold(
    state: SessionState | None,
    record: InputRecord,
    now: datetime,
    *,
    gap_tolerance_s: float = DEFAULT_GAP_TOLERANCE_S,
) -> SessionState:
    """Return the state after ``record``; ``state`` itself when the record changes nothing."""
    if state is None:
        if isinstance(record, StartSession):
            return initial_state(record, now)
        state = _placeholder(record, now)
        before = None
    else:
        before = state

    match record:
        case StartSession():
            after = _on_start(state, record)
        case EndSession():
            after = _on_end(state)
        case SessionLifecycle():
            after = _on_lifecycle(state, record)
        case ChunkResult():
            after = _on_chunk_result(state, record, gap_tolerance_s)
    after = _settle(after, now)

    if before is not None and after == before:
        return before
    return after.model_copy(update={"updated_at": now})


def is_placeholder(state: SessionState) -> bool:
    """True until the session's StartSession has been folded in (it always names a source)."""
    return not state.source_url


def _placeholder(record: InputRecord, now: datetime) -> SessionState:
    return SessionState(
        stream_id=record.stream_id,
        session_id=record.session_id,
        name="",
        source_url="",
        status=SessionStatus.INITIALIZING,
        created_at=now,
        updated_at=now,
    )


def _on_start(state: SessionState, start: StartSession) -> SessionState:
    if not is_placeholder(state):
        return state  # duplicate start
    return state.model_copy(
        update={
            "name": start.name,
            "source_url": start.source_url,
            "rapid_review_query": start.rapid_review_query,
            "created_by": start.created_by,
            "created_at": start.requested_at,
        }
    )


def _on_end(state: SessionState) -> SessionState:
    if state.status.terminal or state.status is SessionStatus.ENDING:
        return state
    return state.model_copy(update={"status": SessionStatus.ENDING})


def _on_lifecycle(state: SessionState, report: SessionLifecycle) -> SessionState:
    update: dict[str, object] = {"chunks_published": max(state.chunks_published, report.chunks_published)}
    if report.manifest_path:
        update["manifest_path"] = report.manifest_path
    if not state.status.terminal:
        if report.state is IngestState.ACTIVE:
            if state.status is SessionStatus.INITIALIZING:
                update["status"] = SessionStatus.ACTIVE
        else:
            update["status"] = SessionStatus.ENDING
            update["chunks_expected"] = report.chunks_published
            update["status_reason"] = (
                (report.reason or "ingest failed") if report.state is IngestState.FAILED else None
            )
    return state.model_copy(update=update)


def _on_chunk_result(state: SessionState, result: ChunkResult, gap_tolerance_s: float) -> SessionState:
    if any(chunk.chunk_index == result.chunk_index for chunk in state.chunks):
        return state  # redelivered result
    summary = ChunkSummary(
        chunk_id=result.chunk_id,
        chunk_index=result.chunk_index,
        start_time=result.start_time,
        end_time=result.end_time,
        status=result.status,
        event_count=len(result.events),
        analysis_id=result.analysis_id,
    )
    chunks = sorted([*state.chunks, summary], key=lambda c: c.chunk_index)
    return state.model_copy(
        update={
            "chunks": chunks,
            "chunk_count": len(chunks),
            "events": merge_events(state.events, result.events, gap_tolerance_s),
            "chunks_published": max(state.chunks_published, result.chunk_index + 1),
        }
    )


def _settle(state: SessionState, now: datetime) -> SessionState:
    """Make an ENDING session with a final chunk total terminal once all its results are in."""
    if state.status is not SessionStatus.ENDING or state.chunks_expected is None:
        return state
    expected = state.chunks_expected
    analysed = sum(1 for chunk in state.chunks if chunk.chunk_index < expected)
    if analysed < expected:
        return state
    status = SessionStatus.FAILED if state.status_reason is not None else SessionStatus.FINISHED
    return state.model_copy(update={"status": status, "ended_at": now})
