"""The API's in-memory view of session headers: pure state, no I/O, bounded.

Memory holds the headers of *active* sessions (not FINISHED/FAILED) and of the most recently
finished ones (at most ``recent_finished`` of them, each for at most ``recent_finished_s``
after it ended); every other header is read from the store (``api.store``). So memory grows
with the sessions running now, not with the sessions ever run.

On top of the published headers the view overlays the API's own commands, so a caller reads
its own writes before the aggregator has published them:

* a started session is served from a *pending* INITIALIZING header built from the
  ``StartSession`` until the aggregator's first header for it arrives;
* an ended session is shown as ENDING until the aggregator publishes ENDING or a
  terminal status.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from api.tenants import Audience, Owner, owner_of
from schemas.records import EndSession, SessionHeader, SessionStatus, StartSession, initial_header

ENDED_STATUSES = frozenset({SessionStatus.ENDING, SessionStatus.FINISHED, SessionStatus.FAILED})
IDENTITY_FIELDS = (
    "name",
    "source_url",
    "rapid_review_query",
    "interpretation",
    "created_by",
    "tenant",
    "created_at",
)


def aware(moment: datetime) -> datetime:
    """Naive timestamps are taken as UTC so comparisons never mix naive and aware."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def pending_header(command: StartSession) -> SessionHeader:
    """The INITIALIZING header the aggregator will publish for ``command``, served until it does."""
    return initial_header(command, command.requested_at)


def finished_at(header: SessionHeader) -> datetime:
    return aware(header.ended_at or header.updated_at)


class SessionView:
    """Headers of active and recently finished sessions, with the read-your-writes overlay.

    Published headers replace each other in the order they are applied (the order of their
    partition, which is what compaction keeps), never by comparing clocks.
    """

    def __init__(
        self, recent_finished: int = 1000, recent_finished_s: float = 3600.0, default_tenant: str = "default"
    ) -> None:
        self.default_tenant = default_tenant
        self._recent_finished = recent_finished
        self._recent_finished_for = timedelta(seconds=recent_finished_s)
        self._active: dict[str, SessionHeader] = {}
        # Insertion order = the order sessions finished, so eviction pops from the front.
        self._finished: OrderedDict[str, SessionHeader] = OrderedDict()
        self._pending_starts: dict[str, SessionHeader] = {}
        self._end_requests: dict[str, datetime] = {}

    def __len__(self) -> int:
        """Sessions held in memory (active, recently finished, pending starts)."""
        return len(self._active.keys() | self._finished.keys() | self._pending_starts.keys())

    @property
    def active_count(self) -> int:
        return len(self._active)

    @property
    def finished_count(self) -> int:
        return len(self._finished)

    # ------------------------------------------------------------------ published headers

    def apply_header(self, header: SessionHeader, now: datetime) -> None:
        """Hold ``header`` as the session's latest (or drop it to the store only, if finished long ago)."""
        session_id = header.session_id
        self._active.pop(session_id, None)
        self._finished.pop(session_id, None)
        if header.status.terminal:
            # A terminal session needs no identity from its start command any more.
            self._pending_starts.pop(session_id, None)
            if self._recent_finished > 0 and now - finished_at(header) <= self._recent_finished_for:
                self._finished[session_id] = header
        else:
            self._active[session_id] = header
            if header.source_url:
                # A placeholder (the aggregator saw the session's other records before its
                # StartSession) has no identity yet: keep the pending start to fill it in.
                self._pending_starts.pop(session_id, None)
        if header.status in ENDED_STATUSES:
            self._end_requests.pop(session_id, None)
        self.expire(now)

    def expire(self, now: datetime) -> None:
        """Forget finished headers beyond the count or older than the age bound (the store keeps them)."""
        while len(self._finished) > self._recent_finished:
            self._finished.popitem(last=False)
        while self._finished:
            oldest = next(iter(self._finished.values()))
            if now - finished_at(oldest) <= self._recent_finished_for:
                break
            self._finished.popitem(last=False)

    def remove(self, session_id: str) -> None:
        """The session was purged: forget everything about it."""
        self._active.pop(session_id, None)
        self._finished.pop(session_id, None)
        self._pending_starts.pop(session_id, None)
        self._end_requests.pop(session_id, None)

    # ------------------------------------------------------------------ the API's own writes

    def add_pending_start(self, command: StartSession) -> SessionHeader:
        """Serve ``command``'s session as INITIALIZING until its first published header arrives."""
        published = self._published(command.session_id)
        if published is not None:
            return published  # the aggregator was faster than us
        header = pending_header(command)
        self._pending_starts[command.session_id] = header
        return header

    def mark_end_requested(self, command: EndSession, current: SessionHeader) -> None:
        """Show the session as ENDING until the aggregator confirms it."""
        if current.status not in ENDED_STATUSES:
            self._end_requests[command.session_id] = command.requested_at

    # ------------------------------------------------------------------ reads

    def _published(self, session_id: str) -> SessionHeader | None:
        return self._active.get(session_id) or self._finished.get(session_id)

    def cached(self, session_id: str) -> SessionHeader | None:
        """The session's header with the overlay, when memory holds it (else ask the store)."""
        published = self._published(session_id)
        if published is None and session_id not in self._pending_starts:
            return None
        return self.overlay(session_id, published)

    def overlay(self, session_id: str, published: SessionHeader | None) -> SessionHeader | None:
        """``published`` (from memory or the store) with the API's own pending writes applied."""
        pending = self._pending_starts.get(session_id)
        header = published
        if header is None:
            header = pending
        elif pending is not None and not header.source_url:
            header = header.model_copy(update={field: getattr(pending, field) for field in IDENTITY_FIELDS})
        if header is None:
            return None
        end_requested_at = self._end_requests.get(session_id)
        if end_requested_at is not None and header.status not in ENDED_STATUSES:
            return header.model_copy(
                update={
                    "status": SessionStatus.ENDING,
                    "updated_at": max(aware(header.updated_at), aware(end_requested_at)),
                }
            )
        return header

    def _identity(self, session_id: str) -> SessionHeader | None:
        """The header that says whose the session is: the published one, unless it is a placeholder."""
        published = self._published(session_id)
        pending = self._pending_starts.get(session_id)
        if published is None or (pending is not None and not published.source_url):
            return pending
        return published

    def owner(self, session_id: str) -> Owner | None:
        """Whose the session is, as far as memory knows (None: not in memory)."""
        header = self._identity(session_id)
        return owner_of(header, self.default_tenant) if header is not None else None

    def pending_starts(self, audience: Audience | None = None) -> list[SessionHeader]:
        """Started sessions with no published header yet, or only a placeholder (``audience``'s)."""
        listed: list[SessionHeader] = []
        for session_id, header in self._pending_starts.items():
            published = self._published(session_id)
            if published is not None and published.source_url:
                continue  # the published header is listed (from the store) in its place
            if audience is None or audience.sees(owner_of(header, self.default_tenant)):
                listed.append(header)
        return listed

    def running(self) -> list[Owner]:
        """Owners of the sessions not FINISHED/FAILED (published or pending), one per session."""
        running = self._active.keys() | {
            session_id for session_id in self._pending_starts if self._published(session_id) is None
        }
        return [owner for session_id in running if (owner := self.owner(session_id)) is not None]
