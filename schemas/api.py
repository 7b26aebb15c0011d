"""HTTP API payloads: request forms and response bodies (the shapes the ``nomadic`` SDK expects)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.interpretation import Interpretation
from schemas.options import AnalysisOptions
from schemas.records import SessionEvent, SessionHeader, SessionState, SessionStatus

STREAM_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_URL_LENGTH = 2048


def check_source_url(value: str) -> str:
    """An absolute ``http``/``https`` URL with a host, else a validation error with a readable reason."""
    url = value.strip()
    if len(url) > MAX_URL_LENGTH:
        raise PydanticCustomError("invalid_field", f"source_url is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise PydanticCustomError(
            "invalid_field",
            "source_url must be an http:// or https:// URL (for example an HLS .m3u8 playlist)",
        )
    if not parts.hostname:
        raise PydanticCustomError("invalid_field", "source_url has no host")
    return url


def check_stream_id(value: str) -> str:
    stream_id = value.strip()
    if not STREAM_ID_PATTERN.match(stream_id):
        raise PydanticCustomError(
            "invalid_field",
            "stream_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit",
        )
    return stream_id


class StartSessionForm(BaseModel):
    """Form fields of ``POST /api/live/start-session``."""

    model_config = ConfigDict(extra="ignore")

    source_url: str
    name: str = Field(max_length=200)
    rapid_review_query: str | None = Field(default=None, max_length=1000)
    stream_id: str | None = None
    # Optional per-session thresholds (``schemas.options.AnalysisOptions``; absent: the defaults).
    detection_threshold: float | None = None
    min_frames: int | None = None
    max_lost_s: float | None = None
    severity_high: float | None = None
    severity_medium: float | None = None
    # JSON text in the form: {"door": [0.7, 0.2, 0.95, 0.9]} (``AnalysisOptions.zones``).
    zones: dict[str, tuple[float, float, float, float]] | None = None

    @field_validator("zones", mode="before")
    @classmethod
    def _zones_json(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise PydanticCustomError(
                "invalid_field",
                "zones must be a JSON object of name -> [x1, y1, x2, y2], e.g. {example}: {reason}",
                {"example": '{"door": [0.7, 0.2, 0.95, 0.9]}', "reason": str(exc)},
            ) from None

    @property
    def analysis_options(self) -> AnalysisOptions | None:
        """The session's options, None when it set none (checked when the form is validated)."""
        values = {name: getattr(self, name) for name in AnalysisOptions.model_fields}
        if all(value is None for value in values.values()):
            return None
        return AnalysisOptions(**values)

    @model_validator(mode="after")
    def _options(self) -> StartSessionForm:
        try:
            _ = self.analysis_options
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'options'}: {error['msg']}"
                for error in exc.errors()
            )
            raise PydanticCustomError(
                "invalid_field", "invalid analysis options: {reasons}", {"reasons": reasons}
            ) from None
        return self

    @field_validator("source_url")
    @classmethod
    def _source_url(cls, value: str) -> str:
        return check_source_url(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("invalid_field", "name must not be empty")
        return value.strip()

    @field_validator("rapid_review_query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("stream_id")
    @classmethod
    def _stream_id(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # absent: the API generates one
        return check_stream_id(value)


class EndSessionForm(BaseModel):
    """Form fields of ``POST /api/live/end-session``."""

    model_config = ConfigDict(extra="ignore")

    stream_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)


class AttachStreamForm(BaseModel):
    """Form fields of ``POST /api/live/attach-stream`` (the SDK's ``attach_stream``)."""

    model_config = ConfigDict(extra="ignore")

    stream_id: str
    stream_name: str = Field(max_length=200)
    source_url: str

    @field_validator("stream_id")
    @classmethod
    def _stream_id(cls, value: str) -> str:
        return check_stream_id(value)

    @field_validator("stream_name")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("invalid_field", "stream_name must not be empty")
        return value.strip()

    @field_validator("source_url")
    @classmethod
    def _source_url(cls, value: str) -> str:
        return check_source_url(value)


class AttachStreamResponse(BaseModel):
    """Body of ``POST /api/live/attach-stream``: what the SDK documents, ``{"ok": true}``."""

    ok: Literal[True] = True


class SessionScope(StrEnum):
    """``personal``: sessions started with the caller's key; ``org``/``all``: every session of the
    caller's tenant (no scope shows another tenant's sessions)."""

    PERSONAL = "personal"
    ORG = "org"
    ALL = "all"


class StartSessionResponse(BaseModel):
    session_id: str
    stream_id: str
    status: SessionStatus = SessionStatus.INITIALIZING
    # What will be detected, and what will not (``schemas.interpretation``).
    interpretation: Interpretation | None = None
    options: AnalysisOptions | None = None  # the session's own thresholds, when it set any


class EndSessionResponse(BaseModel):
    status: Literal["ended", "already_ended"]


class SessionResponse(SessionState):
    """Body of ``get_session``: the session with a page of its chunks and events.

    ``events_next_cursor``/``chunks_next_after``: pass them as ``events_after``/``chunks_after``
    for the next page; None when nothing follows.
    """

    events_next_cursor: int | None = None
    chunks_next_after: int | None = None


class SessionListResponse(BaseModel):
    """A page of sessions, newest first; ``next_cursor`` (opaque) asks for the next one.

    Items are session headers (no ``chunks``/``events`` keys) unless ``include_events=true``,
    which makes each one a ``get_session`` body.
    """

    sessions: list[SessionResponse]
    next_cursor: str | None = None


class SessionEventsPage(BaseModel):
    """Body of ``.../events``: the latest version of each merged event after a cursor, in cursor order.

    ``next_cursor`` is the cursor of the last record of the page (pass it as ``after``); None when
    the page is empty (nothing after ``after`` yet: ask again with the same ``after``).
    """

    events: list[SessionEvent]
    next_cursor: int | None = None


class FeedTokenResponse(BaseModel):
    """Body of ``POST /api/live/feed-token``: pass ``token`` as ``?token=`` to the SSE routes."""

    token: str
    expires_at: datetime
    expires_in: int = Field(description="Seconds until the token expires.")


class HealthResponse(BaseModel):
    status: Literal["ok", "starting", "failed"]
    kafka_clients_started: bool
    session_view_caught_up: bool
    sessions: int = Field(description="Sessions in the store (every session the topics hold).")
    sessions_in_memory: int = Field(default=0, description="Headers held in memory (active, recent).")
    error: str | None = None


class FeedEnd(BaseModel):
    """Data of the SSE ``end`` message: the session reached a terminal status."""

    session_id: str
    stream_id: str
    status: SessionStatus
    status_reason: str | None = None


class FeedResync(BaseModel):
    """Data of the SSE ``resync`` message: the ``Last-Event-ID`` could not be honoured.

    Refetch the session (or, on the all-sessions feed, the session list); the feed continues
    from the current state, so records already in the refetched state may arrive again.
    """

    reason: str
    session_id: str | None = None
    stream_id: str | None = None


class FeedStatus(BaseModel):
    """Data of the all-sessions feed's ``status`` message: a session's status changed."""

    session_id: str
    stream_id: str
    name: str
    status: SessionStatus
    status_reason: str | None = None
    created_by: str | None = None
    cursor: int
    chunk_count: int
    event_count: int
    updated_at: datetime

    @classmethod
    def of(cls, header: SessionHeader) -> FeedStatus:
        return cls(
            session_id=header.session_id,
            stream_id=header.stream_id,
            name=header.name,
            status=header.status,
            status_reason=header.status_reason,
            created_by=header.created_by,
            cursor=header.cursor,
            chunk_count=header.chunk_count,
            event_count=header.event_count,
            updated_at=header.updated_at,
        )


class FeedRemoved(BaseModel):
    """Data of the all-sessions feed's ``removed`` message: the session was purged (retention)."""

    session_id: str
    stream_id: str | None = None


class SignedManifestResponse(BaseModel):
    """Body of ``POST /api/live/session/{session_id}/signed-manifest`` (the SDK's ``get_signed_manifest``).

    ``url`` plays in any HLS player until ``expires_at``; it needs no API key.
    """

    url: str
    expires_at: datetime
    method: Literal["GET"] = "GET"
