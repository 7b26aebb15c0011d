"""HTTP API payloads: request forms and response bodies (the shapes the ``nomadic`` SDK expects)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from schemas.records import SessionState, SessionStatus

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


class SessionScope(StrEnum):
    """``personal``: sessions started with the caller's key; ``org``/``all``: every session."""

    PERSONAL = "personal"
    ORG = "org"
    ALL = "all"


class StartSessionResponse(BaseModel):
    session_id: str
    stream_id: str
    status: SessionStatus = SessionStatus.INITIALIZING


class EndSessionResponse(BaseModel):
    status: Literal["ended", "already_ended"]


class SessionListResponse(BaseModel):
    sessions: list[SessionState]


class HealthResponse(BaseModel):
    status: Literal["ok", "starting", "failed"]
    kafka_clients_started: bool
    session_view_caught_up: bool
    sessions: int
    error: str | None = None


class FeedEnd(BaseModel):
    """Data of the SSE ``end`` message: the session reached a terminal status."""

    session_id: str
    stream_id: str
    status: SessionStatus
    status_reason: str | None = None
