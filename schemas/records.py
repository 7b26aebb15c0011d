"""Records of every Kafka topic. Downstream consumers (ours and users') rely on these shapes.

Compatibility rules: readers ignore unknown fields (so producers may add optional fields
within a ``schema_version``); removing or retyping a field bumps ``SCHEMA_VERSION``.
Times: ``*_time`` floats are seconds of *stream time*, counted from the first media the
session ingested (the start of its recorded playback manifest); ``*_at`` are wall-clock UTC.
``capture_time`` is NomadicML's "capture time in seconds on the stream timeline": the stream
time of the frame a record was captured from; its wall-clock moment is ``captured_at``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.interpretation import Interpretation
from schemas.options import AnalysisOptions, Severity
from schemas.tracking import TrackerState

# 2: the session-state topic carries SessionHeader (lists moved to session-chunks/-events).
# 3: ``capture_time`` of chunks and events is stream time (float seconds), as NomadicML
#    documents it; the wall clock it used to carry moved to ``captured_at``.
# 4: events name their thumbnail (``thumbnail_event_id``, ``thumbnail_time``).
# 5: the query's ``interpretation`` (``schemas.interpretation``) on StartSession, ChunkRecord and
#    SessionHeader.
SCHEMA_VERSION = 5

# Stable namespace for deterministic event ids (uuid5), so a re-analysed chunk yields the
# same ids and every consumer can de-duplicate at-least-once deliveries.
EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c52-3a0e-4b8e-9a55-1b7c2f0e9d41")


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_mmss(seconds: float) -> str:
    """Stream time as ``MM:SS`` (minutes keep growing past 59, as NomadicML does)."""
    total = max(0, int(seconds))
    return f"{total // 60:02d}:{total % 60:02d}"


class Record(BaseModel):
    """Base of topic records: immutable, unknown fields ignored for forward compatibility."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class SessionStatus(StrEnum):
    INITIALIZING = "INITIALIZING"
    ACTIVE = "ACTIVE"
    ENDING = "ENDING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (SessionStatus.FINISHED, SessionStatus.FAILED)


# --------------------------------------------------------------------------- commands


class StartSession(Record):
    """API -> ingest, aggregator: begin pulling ``source_url`` and analysing it."""

    kind: Literal["start"] = "start"
    session_id: str
    stream_id: str
    name: str
    source_url: str
    rapid_review_query: str | None = None
    # What the query asks for in the models' terms (``schemas.interpretation``), computed once by
    # the API; None only in records older than schema version 5 (consumers interpret the query).
    interpretation: Interpretation | None = None
    # Per-session thresholds (``schemas.options``); None: the services' defaults.
    options: AnalysisOptions | None = None
    created_by: str | None = None
    tenant: str | None = None
    requested_at: datetime = Field(default_factory=utcnow)


class EndSession(Record):
    """API -> ingest, aggregator: stop pulling; the session finishes once in-flight chunks are analysed."""

    kind: Literal["end"] = "end"
    session_id: str
    stream_id: str
    requested_at: datetime = Field(default_factory=utcnow)


class SessionDeadline(Record):
    """Aggregator -> aggregator: the aggregator's clock passed a deadline of the session.

    Produced by the aggregator's timer for a session that has been ENDING longer than its
    ending timeout (it then ends anyway, naming the chunks whose results never came). Other
    readers of the commands topic ignore it.
    """

    kind: Literal["deadline"] = "deadline"
    session_id: str
    stream_id: str
    requested_at: datetime = Field(default_factory=utcnow)


class PurgeSession(Record):
    """Aggregator -> aggregator, ingest: the session's retention ran out; remove it everywhere.

    The aggregator writes tombstones for the session's header, chunk and event records and drops
    it from its table; ingest deletes its recording and tombstones its checkpoint.
    """

    kind: Literal["purge"] = "purge"
    session_id: str
    stream_id: str
    reason: str = "retention"
    requested_at: datetime = Field(default_factory=utcnow)


SessionCommandRecord = StartSession | EndSession | SessionDeadline | PurgeSession
SessionCommand = Annotated[SessionCommandRecord, Field(discriminator="kind")]
SESSION_COMMAND_ADAPTER: TypeAdapter[SessionCommandRecord] = TypeAdapter(SessionCommand)


# --------------------------------------------------------------------------- ingest lifecycle


class IngestState(StrEnum):
    ACTIVE = "ACTIVE"  # the source answered with a valid live playlist; chunks are flowing
    ENDED = "ENDED"  # no more chunks will come (stream ended or user ended); total is final
    FAILED = "FAILED"  # the source could not be read; ``reason`` says why


class SessionLifecycle(Record):
    """Ingest -> aggregator: what happened to the session's source.

    ``chunks_published`` is the number of chunk records ingest has published (and had
    acknowledged) for the session when this report was produced; on ``ENDED`` and
    ``FAILED`` it is final, and the aggregator waits for that many chunk results.
    """

    session_id: str
    stream_id: str
    state: IngestState
    reason: str | None = None
    ended_by: Literal["stream", "user"] | None = None
    chunks_published: int = 0
    manifest_path: str | None = None
    # The overload policy's view of the session (``ingest.lag``), None from ingest versions
    # without it: the latest measured lag (source live edge minus the stream time the analyzers
    # took over), whether the ``skip`` policy is skipping segments now, stream time it skipped
    # so far, the current sampling rate (lowered by ``thin``) and how many times the policy
    # acted (skips begun, rate halvings). Ingest sends an ACTIVE report when they change
    # materially, at most every ``lag_report_interval_s``.
    lag_s: float | None = None
    skipping: bool | None = None
    skipped_s: float | None = None
    sample_fps: float | None = None
    lag_actions: int | None = None
    at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- chunks


class Frame(BaseModel):
    """One sampled frame, JPEG-encoded (raw bytes in Python, URL-safe base64 in JSON)."""

    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_bytes="base64", val_json_bytes="base64")

    stream_time: float
    width: int
    height: int
    jpeg: bytes


class ChunkRecord(Record):
    """Ingest -> analyzers: the sampled frames of ``[start_time, end_time)`` of stream time.

    Carries the session's query so analyzers stay stateless and scale by consumer group.
    """

    session_id: str
    stream_id: str
    chunk_id: str
    chunk_index: int
    start_time: float
    end_time: float
    hls_cumulative_offset: float
    # Stream time of the chunk's first frame (its start when it has none) and that moment's
    # wall clock (PROGRAM-DATE-TIME based when the source has it, else when ingest fetched it).
    capture_time: float
    captured_at: datetime
    media_sequences: list[int]
    rapid_review_query: str | None = None
    interpretation: Interpretation | None = None  # the session's, copied from its StartSession
    options: AnalysisOptions | None = None  # the session's, copied from its StartSession
    frames: list[Frame]
    # Stream time of this chunk that ingest did not fetch because the analyzers were too far
    # behind (the ``skip`` overload policy; a gap in the recording too), and the sampling rate
    # its frames were taken at (lower than configured while ``thin`` acts; None: not recorded).
    skipped_s: float = 0.0
    sample_fps: float | None = None
    created_at: datetime = Field(default_factory=utcnow)


def chunk_id_for(session_id: str, chunk_index: int) -> str:
    return f"{session_id}-c{chunk_index:06d}"


# --------------------------------------------------------------------------- ingest checkpoints


class IngestCheckpoint(Record):
    """Ingest -> ingest (compacted, keyed by session_id): where a running session stands.

    Written when a session starts and after each ingested segment whose acked chunks moved it; a
    tombstone deletes it once the session's final report was acked. The ingest instance that
    owns a command partition resumes the open sessions of the same checkpoint partition:
    chunk indexes continue at ``next_chunk_index`` and media after the ``resume_*`` segment
    (the last one that ended before ``covered_time``) is ingested again, so the resumed chunks
    are the ones an uninterrupted session would have published.
    """

    session_id: str
    stream_id: str
    command: StartSession
    next_chunk_index: int = 0  # chunks 0..next_chunk_index-1 are published and acked
    chunks_published: int = 0
    covered_time: float = 0.0  # stream time covered by those chunks (end of the last one)
    resume_media_sequence: int | None = None  # last segment ingested that ended by covered_time
    resume_stream_time: float = 0.0  # stream time at the end of that segment (<= covered_time)
    resume_program_date_time: datetime | None = None  # its PROGRAM-DATE-TIME at its end, if any
    resume_ingested_at: datetime | None = None  # wall clock when it was ingested
    segments_decoded: int = 0  # segments decoded up to it
    manifest_entries: int = 0  # entries of the local playback manifest up to it
    # Resumes after a crash (the ingest process died running the session) since the session
    # last got past the point of its latest crash. Counted ahead: a run writes it including
    # itself before its work starts, and a clean suspension writes it back without, so only
    # runs that died keep counting. Ingest quarantines a session (FAILED) at its limit.
    crash_resumes: int = 0
    # Overload policy totals (``ingest.lag``) carried across resumes: stream time skipped up to
    # the resume point, and the policy's actions so far.
    skipped_s: float = 0.0
    lag_actions: int = 0
    updated_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- events


class Event(Record):
    """One detected event: a query target seen over a span of stream time.

    Field names follow NomadicML's livestream events; ``event_id`` is deterministic
    (see ``event_id_for``) so redelivered chunks do not create new events.
    """

    event_id: str
    session_id: str
    stream_id: str
    type: str
    label: str
    description: str
    severity: Severity
    confidence: float
    stream_time: float
    start_time: float
    end_time: float
    # NomadicML: "capture time in seconds on the stream timeline, often matches stream_time";
    # here always the stream time of the frame the event was first seen in. Its wall clock
    # (the source's PROGRAM-DATE-TIME when present) is ``captured_at``.
    capture_time: float
    captured_at: datetime
    chunk_index: int
    chunk_relative_time: float
    hls_cumulative_offset: float
    t_start: str
    t_end: str
    created_at: datetime = Field(default_factory=utcnow)
    analysis_id: str
    chunk_id: str
    query: str | None = None
    box: tuple[float, float, float, float] | None = None
    # The event's thumbnail: an annotated JPEG of its best frame (highest-confidence detection),
    # stored by the analyzer beside the recording as ``<session_dir>/thumbs/<thumbnail_event_id>.jpg``
    # (``ingest.storage.thumbnail_key``) before the event is produced. A raw event names its own id;
    # a merged event (session-events) the raw event whose detection is its most confident one, so
    # it moves as ``confidence`` grows (``aggregator.merge``). ``thumbnail_time`` is the stream
    # time of that frame. None: no thumbnail was stored (disabled, or the store failed).
    thumbnail_event_id: str | None = None
    thumbnail_time: float | None = None
    # The tracked object this event is one appearance of (``aggregator.tracking``): set on the
    # session's merged events of tracked targets (session-events, the API, SSE); ids count from 1
    # per session and are never reused. None on the analyzer's per-chunk events (events topic),
    # which know no identity across chunks, and on targets that are not objects (absence, counts,
    # whole-frame classifier labels).
    track_id: int | None = None


def event_id_for(session_id: str, chunk_index: int, label: str, start_time: float) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{session_id}/{chunk_index}/{label}/{start_time:.3f}"))


class Sighting(BaseModel):
    """One object satisfying a tracked target in one sampled frame (analyzer -> aggregator's tracker)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    label: str  # the target's event label (a ``TrackedTarget``'s)
    stream_time: float
    box: tuple[float, float, float, float]  # normalised x1, y1, x2, y2
    confidence: float
    detail: str = ""  # what was seen ("car 0.90, red on 94% of its central pixels")
    # Below the session's detection threshold but above its keep threshold (hysteresis): it may
    # keep an object already tracked in its event, never start or confirm one.
    weak: bool = False


class TrackedTarget(BaseModel):
    """A target whose session events are tracks: its event label and how long a track must last."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    label: str
    # The query's "for at least N s": a track becomes an event once it spans this long (0: at once,
    # after the session's ``min_frames``).
    min_duration_s: float = 0.0


class ChunkResult(Record):
    """Analyzer -> aggregator: the outcome of one chunk, with its events (also on the events topic).

    Targets that are objects (a box per instance: no absence, no count, not a whole-frame label)
    are *tracked*: they are listed in ``tracked`` and every satisfying box of every
    sampled frame (``frame_times``) is a ``Sighting``. The
    aggregator builds those targets' session events from tracks of the sightings; ``events`` still
    holds every target's per-chunk events (the events topic), and their thumbnails.
    """

    session_id: str
    stream_id: str
    chunk_id: str
    chunk_index: int
    analysis_id: str
    start_time: float
    end_time: float
    frame_count: int
    status: Literal["ok", "failed"]
    error: str | None = None
    model: str
    analyzer_id: str | None = None  # which replica analysed the chunk (operations, scale-out)
    targets: list[str]
    events: list[Event]
    frame_times: list[float] = Field(default_factory=list)
    tracked: list[TrackedTarget] = Field(default_factory=list)
    sightings: list[Sighting] = Field(default_factory=list)
    inference_ms: float
    created_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- session state
#
# A session's state is split by how it changes, so that no record grows with the session's age:
#
# * ``SessionHeader`` (compacted ``session-state`` topic, key = session_id): status, counters and
#   the few events still open. Re-published after every folded input record; its size is
#   bounded by the number of labels the query names and by the reorder window.
# * ``SessionChunk`` (compacted ``session-chunks`` topic): one record per chunk, written once
#   when the chunk is folded (or declared missing).
# * ``SessionEvent`` (compacted ``session-events`` topic): the merged events, one record per
#   version: ``opened`` when an event first appears, ``updated`` when its window grows,
#   ``closed`` when it can grow no more (then it is immutable).
#
# Keys of the last two are ``<session_id>/chunk/<index>`` and ``<session_id>/event/<number>``, so
# compaction keeps the latest version of each chunk and event; they are produced to the
# partition the default partitioner gives the bare ``session_id``
# (``livestream.kafka.serde.session_partition``), so all of a session's records stay in one
# partition, co-partitioned with every other topic.


ChunkStatus = Literal["ok", "failed", "missing"]


class ChunkSummary(BaseModel):
    """One chunk of a session as the API lists it (``missing``: its result never arrived)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    chunk_id: str
    chunk_index: int
    start_time: float
    end_time: float
    status: ChunkStatus
    event_count: int
    analysis_id: str
    error: str | None = None


class SessionChunk(Record):
    """Aggregator -> compacted ``session-chunks`` topic: one chunk's summary, written once."""

    session_id: str
    stream_id: str
    chunk: ChunkSummary
    written_at: datetime = Field(default_factory=utcnow)


EventLifecycle = Literal["opened", "updated", "closed"]


class SessionEvent(Record):
    """Aggregator -> compacted ``session-events`` topic: one version of one merged event.

    ``number`` counts the session's merged events from 0 in the order they opened (it names the
    record's key); ``cursor`` is the session's feed cursor when this version was written: it only
    grows, so "everything after cursor c" is the records with a larger cursor. Every event gets
    exactly one ``opened`` and one ``closed`` record (in that order, ``updated`` ones between),
    unless the session is purged first. ``event`` keeps its ``event_id`` for life (a tracked
    object's own id; for untracked targets that of the first detection it merged); ``end_time``,
    ``confidence`` and ``description`` grow with it.
    """

    session_id: str
    stream_id: str
    number: int
    cursor: int
    lifecycle: EventLifecycle
    event: Event
    written_at: datetime = Field(default_factory=utcnow)


class SessionHeader(Record):
    """Aggregator -> compacted ``session-state`` topic: everything about a session but its lists.

    ``chunk_count`` counts analysed chunks (ok or failed); ``next_chunk_index`` is the fold's
    watermark: every chunk below it has been folded, in order, or declared missing
    (``missing_chunks``, the first ``MISSING_CHUNKS_LISTED`` of them). Results of chunks above it
    wait in ``pending_results`` (the reorder window) so merging happens in chunk order.
    ``open_events`` are the merged events that may still grow. ``cursor`` is the session's feed
    cursor (it grows with every ``SessionEvent`` written and every status change);
    ``events_cursor`` is the cursor of the newest ``SessionEvent`` written.
    """

    stream_id: str
    session_id: str
    name: str
    source_url: str
    rapid_review_query: str | None = None
    interpretation: Interpretation | None = None
    options: AnalysisOptions | None = None
    status: SessionStatus
    status_reason: str | None = None
    created_by: str | None = None
    tenant: str | None = None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    ending_since: datetime | None = None
    ingest_state: IngestState | None = None
    ingest_reason: str | None = None
    chunks_published: int = 0
    chunks_expected: int | None = None
    chunk_count: int = 0
    failed_chunk_count: int = 0
    missing_chunk_count: int = 0
    missing_chunks: list[int] = Field(default_factory=list)
    next_chunk_index: int = 0
    analysed_time: float = 0.0
    event_count: int = 0
    cursor: int = 0
    events_cursor: int = 0
    open_events: list[SessionEvent] = Field(default_factory=list)
    pending_results: list[ChunkResult] = Field(default_factory=list)
    # The session's multi-object tracker (``aggregator.tracking``), None until a tracked target
    # was sighted. Bounded by the tracker's ``max_tracks``.
    tracker: TrackerState | None = None
    manifest_path: str | None = None
    # Ingest's overload view of the session (copied from its latest lifecycle report carrying
    # them; None until one did): lag in seconds of stream time, whether ingest is skipping
    # segments now and the stream time it skipped (the ``skip`` policy), the current sampling
    # rate (``thin``), and how many times the policy acted.
    ingest_lag_s: float | None = None
    ingest_skipping: bool | None = None
    skipped_time_s: float | None = None
    sample_fps: float | None = None
    lag_actions: int | None = None


MISSING_CHUNKS_LISTED = 256


class SessionState(SessionHeader):
    """API view of a session (``get_session``): the header plus its chunks and merged events.

    ``events`` are the merged events (latest version of each, open ones included) ordered by
    start time; ``chunks`` the chunk summaries by index. Both may be a page of the whole, see
    the API's paging parameters and ``chunks_total``/``events_total``.
    """

    chunks: list[ChunkSummary] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    chunks_total: int | None = None
    events_total: int | None = None


def initial_header(start: StartSession, updated_at: datetime) -> SessionHeader:
    """The INITIALIZING header of a just-started session (aggregator's fold, API's overlay)."""
    return SessionHeader(
        stream_id=start.stream_id,
        session_id=start.session_id,
        name=start.name,
        source_url=start.source_url,
        rapid_review_query=start.rapid_review_query,
        interpretation=start.interpretation,
        options=start.options,
        status=SessionStatus.INITIALIZING,
        created_by=start.created_by,
        tenant=start.tenant,
        created_at=start.requested_at,
        updated_at=updated_at,
    )


def chunk_record_key(session_id: str, chunk_index: int) -> str:
    """Key of a ``SessionChunk`` on the compacted session-chunks topic."""
    return f"{session_id}/chunk/{chunk_index}"


def event_record_key(session_id: str, number: int) -> str:
    """Key of a ``SessionEvent`` on the compacted session-events topic."""
    return f"{session_id}/event/{number}"


# --------------------------------------------------------------------------- streams


StreamOrigin = Literal["attach-stream", "start-session"]


class AttachedStream(Record):
    """API -> compacted ``streams`` topic (key ``<tenant>/<stream_id>``): a tenant's named stream.

    Written by ``POST /api/live/attach-stream`` (``origin="attach-stream"``; attaching the same
    id again replaces the name and source) and by ``start-session`` when it creates the stream
    id itself (``origin="start-session"``), so later sessions may name that stream. Stream ids
    are per tenant: two tenants may use the same id for streams of their own. Every API replica
    materializes the topic, so all of them accept the same ``stream_id`` values.
    """

    stream_id: str
    tenant: str
    stream_name: str
    source_url: str
    origin: StreamOrigin = "attach-stream"
    attached_by: str | None = None  # fingerprint of the API key that wrote it
    attached_at: datetime = Field(default_factory=utcnow)


def stream_record_key(tenant: str, stream_id: str) -> str:
    """Key of an ``AttachedStream`` on the compacted streams topic."""
    return f"{tenant}/{stream_id}"


class DeadLetter(Record):
    """Any service -> ``dead-letter``: an input record it gave up on, so its partition moves on.

    Written after the record failed with an unexpected error ``attempts`` times (or could not be
    decoded at all); the service then skips it, producing what lets its session go on (for a
    chunk record: a failed chunk result). ``value`` is the record's value as it was (base64 in
    JSON), ``key`` its key (UTF-8 when it is text).
    """

    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_bytes="base64", val_json_bytes="base64")

    service: str
    instance_id: str | None = None
    source_topic: str
    source_partition: int
    source_offset: int
    session_id: str | None = None
    key: str | None = None
    value: bytes | None = None
    error_type: str
    error: str
    attempts: int
    failed_at: datetime = Field(default_factory=utcnow)


TOPIC_RECORDS: dict[str, type[BaseModel] | TypeAdapter] = {
    "session-commands": SESSION_COMMAND_ADAPTER,
    "session-lifecycle": SessionLifecycle,
    "chunks": ChunkRecord,
    "chunk-results": ChunkResult,
    "events": Event,
    "session-state": SessionHeader,
    "session-chunks": SessionChunk,
    "session-events": SessionEvent,
    "ingest-checkpoints": IngestCheckpoint,
    "dead-letter": DeadLetter,
    "streams": AttachedStream,
}


def describe_event(label: str, start_time: float, end_time: float, confidence: float) -> str:
    """Human-readable event description; one wording for analyzer and aggregator merges."""
    return (
        f"{label} visible from {format_mmss(start_time)} to {format_mmss(end_time)} "
        f"(max confidence {confidence:.2f})"
    )
