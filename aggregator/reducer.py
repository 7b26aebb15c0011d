"""Folding of one session's input records into its bounded ``SessionHeader`` (pure: no I/O, no clock).

Records of the three input topics may arrive in any order relative to each other, and any
record may be delivered twice (at-least-once). So the fold is idempotent, a record for an
unknown session creates a placeholder header, and a session becomes terminal only once every
chunk ingest reported has been folded (or, after the ending timeout, declared missing): nobody
sees FINISHED (where the SDK stops reading events) before the last events.

Bounded state. The header holds counters, the open merged events (at most one per label, or per
tracked object: ``aggregator.tracked``), the tracker's state (at most ``max_tracks`` objects) and
the reorder window; everything that accumulates is written out once, as ``SessionChunk`` and
``SessionEvent`` records (see ``aggregator.merge``), so folding a chunk costs the same on day 7
as in minute 1. Chunk results are folded strictly in chunk order: a result that arrives before
its predecessors waits in ``pending_results``; when the window spans more than
``reorder_window_chunks`` chunks, or holds more than ``reorder_window_events`` detections, the
oldest chunk still missing is declared ``missing`` and folding moves on. A result that arrives
after its chunk was declared missing is still folded: its chunk record is rewritten with its real
status, and its detections become events of their own (opened and closed at once), since the
events around them may already be closed. Redelivered results of folded chunks change nothing.

Size. Besides the window's limits, the header is kept under ``header_budget_bytes`` (48 KiB):
past it, waiting chunks are declared missing first, then the open event that stopped growing
longest ago is closed early (an open query over a busy scene can have dozens of labels open).

Ending. ``EndSession`` or ingest's ENDED/FAILED report make the session ENDING (``ending_since``).
It becomes FINISHED (FAILED when ingest failed) once every published chunk is folded. A
``SessionDeadline`` (the aggregator's timer) after ``ending_timeout_s`` ends it anyway: chunks
whose results never came are declared missing and named in ``status_reason``; if ingest never
reported the end, the chunks seen so far are taken as the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from aggregator.merge import EventLog, MergePolicy, event_key
from aggregator.tracked import (
    DEFAULT_MAX_LOST_S,
    DEFAULT_MAX_TRACKS,
    DEFAULT_MIN_FRAMES,
    TrackPolicy,
    fold_tracked,
)
from schemas.records import (
    MISSING_CHUNKS_LISTED,
    ChunkResult,
    ChunkSummary,
    EndSession,
    IngestState,
    PurgeSession,
    SessionChunk,
    SessionDeadline,
    SessionEvent,
    SessionHeader,
    SessionLifecycle,
    SessionStatus,
    StartSession,
    chunk_id_for,
    chunk_record_key,
    event_record_key,
    initial_header,
)

InputRecord = StartSession | EndSession | SessionDeadline | PurgeSession | SessionLifecycle | ChunkResult

MISSING_CHUNKS_NAMED = 20  # how many missing chunk indexes a status_reason names

DEFAULT_GAP_TOLERANCE_S = 1.5
DEFAULT_MAX_EVENT_DURATION_S = 600.0
# 16 waiting results and 32 waiting detections keep the header well under 64 KiB.
DEFAULT_REORDER_WINDOW_CHUNKS = 16
DEFAULT_REORDER_WINDOW_EVENTS = 32
DEFAULT_ENDING_TIMEOUT_S = 300.0
# Headers stay well under the 64 KiB every record the system writes is kept below.
DEFAULT_HEADER_BUDGET_BYTES = 48 * 1024
# A header with no waiting results and at most this many open events is far below any budget
# (an event is under 2 KiB even with a 1,000-character query): its size is not measured.
SMALL_HEADER_OPEN_EVENTS = 8


@dataclass(frozen=True)
class FoldPolicy:
    """The aggregator's merging and ending rules (from ``AggregatorSettings``)."""

    gap_tolerance_s: float = DEFAULT_GAP_TOLERANCE_S
    max_event_duration_s: float = DEFAULT_MAX_EVENT_DURATION_S
    reorder_window_chunks: int = DEFAULT_REORDER_WINDOW_CHUNKS
    reorder_window_events: int = DEFAULT_REORDER_WINDOW_EVENTS
    ending_timeout_s: float = DEFAULT_ENDING_TIMEOUT_S
    header_budget_bytes: int = DEFAULT_HEADER_BUDGET_BYTES
    min_frames: int = DEFAULT_MIN_FRAMES
    max_lost_s: float = DEFAULT_MAX_LOST_S
    max_tracks: int = DEFAULT_MAX_TRACKS

    @property
    def merge(self) -> MergePolicy:
        return MergePolicy(self.gap_tolerance_s, self.max_event_duration_s)

    @property
    def track(self) -> TrackPolicy:
        return TrackPolicy(self.min_frames, self.max_lost_s, self.max_tracks, self.max_event_duration_s)


@dataclass(frozen=True)
class FoldResult:
    """What one input record did to its session.

    ``header`` is the session's header after the record (None: the session is unknown and stays
    so, or was purged); ``changed`` says whether it differs from the one before. ``chunks`` and
    ``events`` are the records to write, in order; ``purged`` asks for the session's removal.
    ``discarded_thumbnails``: raw event ids whose thumbnails no merged event shows (merged away, or
    of a result the ended session can no longer fold), to delete once ``events`` are written.
    """

    header: SessionHeader | None
    changed: bool
    chunks: tuple[SessionChunk, ...] = ()
    events: tuple[SessionEvent, ...] = ()
    purged: bool = False
    discarded_thumbnails: tuple[str, ...] = ()


def fold(
    header: SessionHeader | None,
    record: InputRecord,
    now: datetime,
    policy: FoldPolicy = FoldPolicy(),
) -> FoldResult:
    """The header after ``record`` and the chunk and event records it makes the session write."""
    if isinstance(record, PurgeSession):
        return FoldResult(header=None, changed=header is not None, purged=True)
    if header is None:
        if isinstance(record, SessionDeadline):
            return FoldResult(header=None, changed=False)  # a deadline of a session purged since
        if isinstance(record, StartSession):
            return FoldResult(header=initial_header(record, now), changed=True)
        header = _placeholder(record, now)
        before = None
    else:
        before = header

    folding = _Folding(header, now, policy)
    match record:
        case StartSession():
            folding.on_start(record)
        case EndSession():
            folding.on_end()
        case SessionDeadline():
            folding.on_deadline()
        case SessionLifecycle():
            folding.on_lifecycle(record)
        case ChunkResult():
            folding.on_chunk_result(record)
    folding.fit(policy.header_budget_bytes)
    folding.settle()
    after = folding.finish()
    if before is not None and after == before:
        # A result the ended session can no longer fold changes nothing but leaves its thumbnails.
        return FoldResult(
            header=before, changed=False, discarded_thumbnails=tuple(folding.log.discarded_thumbnails)
        )
    return FoldResult(
        header=after.model_copy(update={"updated_at": now}),
        changed=True,
        chunks=tuple(folding.chunks),
        events=tuple(folding.log.written),
        discarded_thumbnails=tuple(folding.log.discarded_thumbnails),
    )


def is_placeholder(header: SessionHeader) -> bool:
    """True until the session's StartSession has been folded in (it always names a source)."""
    return not header.source_url


def record_keys(header: SessionHeader) -> list[tuple[str, str]]:
    """(kind, key) of every chunk and event record the session may have written, for tombstones."""
    chunks = [("chunk", chunk_record_key(header.session_id, i)) for i in range(header.next_chunk_index)]
    events = [("event", event_record_key(header.session_id, n)) for n in range(header.event_count)]
    return [*chunks, *events]


def _placeholder(record: InputRecord, now: datetime) -> SessionHeader:
    return SessionHeader(
        stream_id=record.stream_id,
        session_id=record.session_id,
        name="",
        source_url="",
        status=SessionStatus.INITIALIZING,
        created_at=now,
        updated_at=now,
    )


@dataclass
class _Folding:
    """One fold's mutable working copy: header field updates, event log, chunk records written."""

    header: SessionHeader
    now: datetime
    policy: FoldPolicy
    update: dict[str, object] = field(default_factory=dict)
    chunks: list[SessionChunk] = field(default_factory=list)
    log: EventLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = EventLog.resume(
            self.header.session_id,
            self.header.stream_id,
            self.now,
            cursor=self.header.cursor,
            event_count=self.header.event_count,
            open_events=self.header.open_events,
        )

    def get(self, name: str) -> object:
        return self.update[name] if name in self.update else getattr(self.header, name)

    @property
    def status(self) -> SessionStatus:
        return self.get("status")  # type: ignore[return-value]

    @property
    def next_chunk_index(self) -> int:
        return self.get("next_chunk_index")  # type: ignore[return-value]

    @property
    def pending(self) -> list[ChunkResult]:
        return self.get("pending_results")  # type: ignore[return-value]

    @property
    def missing(self) -> list[int]:
        return self.get("missing_chunks")  # type: ignore[return-value]

    def bump(self, name: str, by: int = 1) -> None:
        self.update[name] = self.get(name) + by  # type: ignore[operator]

    # ------------------------------------------------------------------ records

    def on_start(self, start: StartSession) -> None:
        if not is_placeholder(self.header):
            return  # duplicate start
        self.update.update(
            name=start.name,
            source_url=start.source_url,
            rapid_review_query=start.rapid_review_query,
            interpretation=start.interpretation,
            options=start.options,
            created_by=start.created_by,
            tenant=start.tenant,
            created_at=start.requested_at,
        )

    def on_end(self) -> None:
        if self.status.terminal or self.status is SessionStatus.ENDING:
            return
        self._set_status(SessionStatus.ENDING)

    def on_deadline(self) -> None:
        since = self.get("ending_since")
        if self.status is not SessionStatus.ENDING or since is None:
            return
        if (self.now - since).total_seconds() < self.policy.ending_timeout_s:  # type: ignore[operator]
            return
        expected = self.get("chunks_expected")
        if expected is None:
            # Ingest never confirmed the end: what it published so far is all there will be.
            seen = [self.next_chunk_index, self.get("chunks_published")]
            seen += [result.chunk_index + 1 for result in self.pending]
            expected = max(seen)  # type: ignore[type-var]
            self.update["chunks_expected"] = expected
            self.update["ingest_reason"] = (
                f"ingest did not confirm the end within {self.policy.ending_timeout_s:g}s"
            )
        while self.next_chunk_index < expected:  # type: ignore[operator]
            self._declare_missing()
            self._drain()

    def on_lifecycle(self, report: SessionLifecycle) -> None:
        self.update["chunks_published"] = max(self.get("chunks_published"), report.chunks_published)  # type: ignore[type-var]
        if report.manifest_path:
            self.update["manifest_path"] = report.manifest_path
        if self.status.terminal:
            return
        self._copy_lag(report)
        if report.state is IngestState.ACTIVE:
            if self.status is SessionStatus.INITIALIZING:
                self._set_status(SessionStatus.ACTIVE)
            return
        self.update["ingest_state"] = report.state
        self.update["chunks_expected"] = report.chunks_published
        if report.state is IngestState.FAILED:
            self.update["ingest_reason"] = report.reason or "ingest failed"
            self.update["status_reason"] = self.update["ingest_reason"]
        if self.status is not SessionStatus.ENDING:
            self._set_status(SessionStatus.ENDING)

    def _copy_lag(self, report: SessionLifecycle) -> None:
        """Ingest's overload view (fields it left None are kept). The totals never go back: a
        resumed ingest run restarts them from its checkpoint, which may be a little behind."""
        if report.lag_s is not None:
            self.update["ingest_lag_s"] = report.lag_s
        if report.skipping is not None:
            self.update["ingest_skipping"] = report.skipping
        if report.sample_fps is not None:
            self.update["sample_fps"] = report.sample_fps
        if report.skipped_s is not None:
            self.update["skipped_time_s"] = max(report.skipped_s, self.get("skipped_time_s") or 0.0)  # type: ignore[type-var]
        if report.lag_actions is not None:
            self.update["lag_actions"] = max(report.lag_actions, self.get("lag_actions") or 0)  # type: ignore[type-var]

    def on_chunk_result(self, result: ChunkResult) -> None:
        if self.status.terminal:
            # Only a result of a chunk declared missing can still come; the session is over. Such
            # a chunk was never folded, so no merged event shows its thumbnails. (Redelivered
            # results of folded chunks are left alone: theirs may be shown.)
            if result.chunk_index >= self.next_chunk_index or result.chunk_index in self.missing:
                self._discard_thumbnails([result])
            return
        index = result.chunk_index
        self.update["chunks_published"] = max(self.get("chunks_published"), index + 1)  # type: ignore[type-var]
        if index < self.next_chunk_index:
            if index in self.missing:
                self._fold_late(result)
            return  # a redelivered result of a folded chunk
        if any(waiting.chunk_index == index for waiting in self.pending):
            return  # a redelivered result still waiting in the window
        self.update["pending_results"] = sorted([*self.pending, result], key=lambda r: r.chunk_index)
        self._drain()
        while self.pending and self._window_exceeded():
            self._declare_missing()
            self._drain()

    def fit(self, budget_bytes: int) -> None:
        """Keep the header under ``budget_bytes`` whatever the query and the detections.

        Past the budget, waiting for late chunks is given up first (as when the reorder window
        overflows), then the open event that stopped growing longest ago is closed early.
        """
        while self.pending or len(self.log.open_by_key) > SMALL_HEADER_OPEN_EVENTS:
            if len(self.finish().to_bytes()) <= budget_bytes:
                return
            if self.pending:
                self._declare_missing()
                self._drain()
            else:
                oldest = min(self.log.open_by_key.values(), key=lambda e: (e.event.end_time, e.number))
                self.log.close(event_key(oldest.event))

    # ------------------------------------------------------------------ ending

    def settle(self) -> None:
        """Make an ENDING session terminal once every chunk of its final total is accounted for."""
        expected = self.get("chunks_expected")
        if self.status is not SessionStatus.ENDING or expected is None:
            return
        if self.next_chunk_index < expected:  # type: ignore[operator]
            return
        self.log.close_all()
        self.update["tracker"] = None  # no chunk will come: the tracks are over
        self._discard_thumbnails(self.pending)  # never folded: nothing shows their thumbnails
        self.update["pending_results"] = []  # results beyond the final total cannot exist
        failed = self.get("ingest_state") is IngestState.FAILED
        reasons = [self.get("ingest_reason")] if self.get("ingest_reason") else []
        missing_count = self.get("missing_chunk_count")
        if missing_count:
            named = ", ".join(str(i) for i in self.missing[:MISSING_CHUNKS_NAMED])
            more = "" if missing_count <= MISSING_CHUNKS_NAMED else ", ..."  # type: ignore[operator]
            reasons.append(f"the results of {missing_count} chunk(s) never arrived: {named}{more}")
        self.update["status_reason"] = "; ".join(reasons) if reasons else None  # type: ignore[arg-type]
        self.update["ended_at"] = self.now
        self._set_status(SessionStatus.FAILED if failed else SessionStatus.FINISHED)

    def finish(self) -> SessionHeader:
        """The header with every update, event counters and cursor applied."""
        update = dict(self.update)
        update["cursor"] = self.log.cursor
        update["event_count"] = self.log.event_count
        update["open_events"] = self.log.open_events
        if self.log.events_cursor is not None:
            update["events_cursor"] = self.log.events_cursor
        return self.header.model_copy(update=update)

    # ------------------------------------------------------------------ chunks

    def _window_exceeded(self) -> bool:
        span = self.pending[-1].chunk_index - self.next_chunk_index + 1
        detections = sum(len(result.events) for result in self.pending)
        return span > self.policy.reorder_window_chunks or detections > self.policy.reorder_window_events

    def _drain(self) -> None:
        """Fold the waiting results that are next in chunk order."""
        pending = self.pending
        while pending and pending[0].chunk_index == self.next_chunk_index:
            result, pending = pending[0], pending[1:]
            self.update["pending_results"] = pending
            self._fold_in_order(result)

    def _fold_in_order(self, result: ChunkResult) -> None:
        self._write_chunk(_summary(result))
        self.bump("chunk_count")
        if result.status == "failed":
            self.bump("failed_chunk_count")
        # Targets that are objects become events through the session's tracker (aggregator.tracked);
        # the others (absence, counts, whole frames) merge by label.
        tracked = {target.label for target in result.tracked}
        untracked = [event for event in result.events if event.label not in tracked]
        self.log.add_chunk(untracked, result.end_time, self.policy.merge)
        tracker = self.get("tracker")
        folded = fold_tracked(self.log, tracker, result, self.policy.track, self.get("options"))  # type: ignore[arg-type]
        if folded is not tracker:
            self.update["tracker"] = folded
        self.update["next_chunk_index"] = result.chunk_index + 1
        self.update["analysed_time"] = result.end_time

    def _declare_missing(self) -> None:
        """Give up waiting for the next chunk's result; its span is what lies between its neighbours."""
        index = self.next_chunk_index
        start = self.get("analysed_time")
        following = next((r for r in self.pending if r.chunk_index == index + 1), None)
        end = following.start_time if following is not None else start
        summary = ChunkSummary(
            chunk_id=chunk_id_for(self.header.session_id, index),
            chunk_index=index,
            start_time=start,  # type: ignore[arg-type]
            end_time=end,  # type: ignore[arg-type]
            status="missing",
            event_count=0,
            analysis_id="",
            error="no analysis result arrived",
        )
        self._write_chunk(summary)
        self.bump("missing_chunk_count")
        if len(self.missing) < MISSING_CHUNKS_LISTED:
            self.update["missing_chunks"] = [*self.missing, index]
        self.update["next_chunk_index"] = index + 1

    def _fold_late(self, result: ChunkResult) -> None:
        self._write_chunk(_summary(result))
        self.update["missing_chunks"] = [i for i in self.missing if i != result.chunk_index]
        self.bump("missing_chunk_count", -1)
        self.bump("chunk_count")
        if result.status == "failed":
            self.bump("failed_chunk_count")
        self.log.add_standalone(result.events)

    def _discard_thumbnails(self, results: list[ChunkResult]) -> None:
        self.log.discarded_thumbnails += [
            event.thumbnail_event_id
            for result in results
            for event in result.events
            if event.thumbnail_event_id is not None
        ]

    def _write_chunk(self, summary: ChunkSummary) -> None:
        self.chunks.append(
            SessionChunk(
                session_id=self.header.session_id,
                stream_id=self.header.stream_id,
                chunk=summary,
                written_at=self.now,
            )
        )

    def _set_status(self, status: SessionStatus) -> None:
        self.update["status"] = status
        if status is SessionStatus.ENDING:
            self.update["ending_since"] = self.now
        self.log.cursor += 1  # a status change is a feed message of its own


def _summary(result: ChunkResult) -> ChunkSummary:
    return ChunkSummary(
        chunk_id=result.chunk_id,
        chunk_index=result.chunk_index,
        start_time=result.start_time,
        end_time=result.end_time,
        status=result.status,
        event_count=len(result.events),
        analysis_id=result.analysis_id,
        error=result.error,
    )
