"""The API's materialized view of sessions: pure state kept in memory, no I/O.

Fed by the compacted session-state topic (``apply_state``/``remove``, see
``api.kafka_io.SessionStateReader``) and by the API's own commands, so a caller reads its
own writes before the aggregator has published them:

* a started session is served from a *pending* INITIALIZING state built from the
  ``StartSession`` until the aggregator's first state for it arrives;
* an ended session is shown as ENDING until the aggregator publishes ENDING or a
  terminal status.
"""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.records import EndSession, SessionState, SessionStatus, StartSession, initial_state

ENDED_STATUSES = frozenset({SessionStatus.ENDING, SessionStatus.FINISHED, SessionStatus.FAILED})


def _aware(moment: datetime) -> datetime:
    """Naive timestamps are taken as UTC so comparisons never mix naive and aware."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def pending_state(command: StartSession) -> SessionState:
    """The INITIALIZING state the aggregator will publish for ``command``, served until it does."""
    return initial_state(command, command.requested_at)


IDENTITY_FIELDS = ("name", "source_url", "rapid_review_query", "created_by", "created_at")


class SessionView:
    """Latest ``SessionState`` per session, with the API's read-your-writes overlay."""

    def __init__(self) -> None:
        self._published: dict[str, SessionState] = {}
        self._pending_starts: dict[str, SessionState] = {}
        self._end_requests: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._published.keys() | self._pending_starts.keys())

    # ------------------------------------------------------------------ published states

    def apply_state(self, state: SessionState) -> bool:
        """Keep ``state`` if it is at least as new as the one held; True when it was kept.

        Equal ``updated_at`` replaces, so a re-published state (same time, later offset) wins.
        """
        held = self._published.get(state.session_id)
        if held is not None and _aware(state.updated_at) < _aware(held.updated_at):
            return False
        self._published[state.session_id] = state
        if state.source_url:
            # A placeholder (the aggregator saw the session's other records before its
            # StartSession) has no identity yet: keep the pending start to fill it in.
            self._pending_starts.pop(state.session_id, None)
        if state.status in ENDED_STATUSES:
            self._end_requests.pop(state.session_id, None)
        return True

    def remove(self, session_id: str) -> None:
        """A tombstone on the compacted topic: the session is gone."""
        self._published.pop(session_id, None)
        self._pending_starts.pop(session_id, None)
        self._end_requests.pop(session_id, None)

    # ------------------------------------------------------------------ the API's own writes

    def add_pending_start(self, command: StartSession) -> SessionState:
        """Serve ``command``'s session as INITIALIZING until its first published state arrives."""
        published = self._published.get(command.session_id)
        if published is not None:
            return published  # the aggregator was faster than us
        state = pending_state(command)
        self._pending_starts[command.session_id] = state
        return state

    def mark_end_requested(self, command: EndSession) -> None:
        """Show the session as ENDING until the aggregator confirms it."""
        current = self.get(command.session_id)
        if current is not None and current.status not in ENDED_STATUSES:
            self._end_requests[command.session_id] = command.requested_at

    # ------------------------------------------------------------------ reads

    def get(self, session_id: str) -> SessionState | None:
        state, pending = self._published.get(session_id), self._pending_starts.get(session_id)
        if state is None:
            state = pending
        elif pending is not None and not state.source_url:
            state = state.model_copy(update={field: getattr(pending, field) for field in IDENTITY_FIELDS})
        if state is None:
            return None
        end_requested_at = self._end_requests.get(session_id)
        if end_requested_at is not None and state.status not in ENDED_STATUSES:
            return state.model_copy(
                update={
                    "status": SessionStatus.ENDING,
                    "updated_at": max(_aware(state.updated_at), _aware(end_requested_at)),
                }
            )
        return state

    def find(self, stream_id: str, session_id: str) -> SessionState | None:
        """The session, or None when unknown or when it belongs to another stream."""
        state = self.get(session_id)
        if state is None or state.stream_id != stream_id:
            return None
        return state

    def sessions(self, created_by: str | None = None) -> list[SessionState]:
        """Every session (only ``created_by``'s when given), newest first."""
        states = [self.get(session_id) for session_id in self._published.keys() | self._pending_starts.keys()]
        selected = [
            state
            for state in states
            if state is not None and (created_by is None or state.created_by == created_by)
        ]
        # Newest first; session_id breaks ties so the order is stable between calls.
        selected.sort(key=lambda state: state.session_id, reverse=True)
        selected.sort(key=lambda state: _aware(state.created_at), reverse=True)
        return selected
