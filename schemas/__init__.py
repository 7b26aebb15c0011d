"""Pydantic records of every topic and API payload (see ``records``, ``api``, ``topics``)."""

from schemas.records import (
    SCHEMA_VERSION,
    ChunkRecord,
    ChunkResult,
    ChunkSummary,
    EndSession,
    Event,
    Frame,
    IngestCheckpoint,
    IngestState,
    SessionLifecycle,
    SessionState,
    SessionStatus,
    Severity,
    StartSession,
)
from schemas.topics import Topics, TopicSpec

__all__ = [
    "SCHEMA_VERSION",
    "ChunkRecord",
    "ChunkResult",
    "ChunkSummary",
    "EndSession",
    "Event",
    "Frame",
    "IngestCheckpoint",
    "IngestState",
    "SessionLifecycle",
    "SessionState",
    "SessionStatus",
    "Severity",
    "StartSession",
    "TopicSpec",
    "Topics",
]
