"""Records of every Kafka topic. Downstream consumers (ours and users') rely on these shapes.

Compatibility rules: readers ignore unknown fields (so producers may add optional fields
within a ``schema_version``); removing or retyping a field bumps ``SCHEMA_VERSION``.
Times: ``*_time`` floats are seconds of *stream time*, counted from the first media the
session ingested (the start of its recorded playback manifest); ``*_at`` are wall-clock UTC.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1

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
    created_by: str | None = None
    requested_at: datetime = Field(default_factory=utcnow)


class EndSession(Record):
    """API -> ingest, aggregator: stop pulling; the session finishes once in-flight chunks are analysed."""

    kind: Literal["end"] = "end"
    session_id: str
    stream_id: str
    requested_at: datetime = Field(default_factory=utcnow)


SessionCommand = Annotated[StartSession | EndSession, Field(discriminator="kind")]
SESSION_COMMAND_ADAPTER: TypeAdapter[StartSession | EndSession] = TypeAdapter(SessionCommand)


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
    capture_time: datetime
    media_sequences: list[int]
    rapid_review_query: str | None = None
    frames: list[Frame]
    created_at: datetime = Field(default_factory=utcnow)


def chunk_id_for(session_id: str, chunk_index: int) -> str:
    return f"{session_id}-c{chunk_index:06d}"


# --------------------------------------------------------------------------- ingest checkpoints


class IngestCheckpoint(Record):
    """Ingest -> ingest (compacted, keyed by session_id): where a running session stands.

    Written when a session starts and after each ingested segment whose chunks were acked; a
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
    updated_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- events


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


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
    capture_time: datetime
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


def event_id_for(session_id: str, chunk_index: int, label: str, start_time: float) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{session_id}/{chunk_index}/{label}/{start_time:.3f}"))


class ChunkResult(Record):
    """Analyzer -> aggregator: the outcome of one chunk, with its events (also on the events topic)."""

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
    inference_ms: float
    created_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- session state


class ChunkSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    chunk_id: str
    chunk_index: int
    start_time: float
    end_time: float
    status: Literal["ok", "failed"]
    event_count: int
    analysis_id: str


class SessionState(Record):
    """Aggregator -> compacted topic -> API: everything known about one session.

    ``chunk_count`` counts analysed chunks; ``events`` are merged across chunk boundaries
    (an object seen at the end of chunk N and the start of N+1 is one event).
    """

    stream_id: str
    session_id: str
    name: str
    source_url: str
    rapid_review_query: str | None = None
    status: SessionStatus
    status_reason: str | None = None
    created_by: str | None = None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    chunks_published: int = 0
    chunks_expected: int | None = None
    chunk_count: int = 0
    chunks: list[ChunkSummary] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    manifest_path: str | None = None


def initial_state(start: StartSession, updated_at: datetime) -> SessionState:
    """The INITIALIZING state of a just-started session (aggregator's fold, API's overlay)."""
    return SessionState(
        stream_id=start.stream_id,
        session_id=start.session_id,
        name=start.name,
        source_url=start.source_url,
        rapid_review_query=start.rapid_review_query,
        status=SessionStatus.INITIALIZING,
        created_by=start.created_by,
        created_at=start.requested_at,
        updated_at=updated_at,
    )


TOPIC_RECORDS: dict[str, type[BaseModel] | TypeAdapter] = {
    "session-commands": SESSION_COMMAND_ADAPTER,
    "session-lifecycle": SessionLifecycle,
    "chunks": ChunkRecord,
    "chunk-results": ChunkResult,
    "events": Event,
    "session-state": SessionState,
    "ingest-checkpoints": IngestCheckpoint,
}


def describe_event(label: str, start_time: float, end_time: float, confidence: float) -> str:
    """Human-readable event description; one wording for analyzer and aggregator merges."""
    return (
        f"{label} visible from {format_mmss(start_time)} to {format_mmss(end_time)} "
        f"(max confidence {confidence:.2f})"
    )
