"""Wire format of every topic: key = session_id (UTF-8), value = the record's JSON (UTF-8).

JSON keeps the topics readable by consumers in any language; the JSON Schema files in
``schemas/jsonschema`` describe each value.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from livestream.errors import RecordError
from schemas.records import SESSION_COMMAND_ADAPTER, EndSession, StartSession

M = TypeVar("M", bound=BaseModel)


def encode_key(session_id: str) -> bytes:
    return session_id.encode()


def encode_value(record: BaseModel) -> bytes:
    return record.model_dump_json().encode()


def decode_value(
    model: type[M], value: bytes | None, *, topic: str | None = None, offset: int | None = None
) -> M:
    """Parse one record value, raising ``RecordError`` (with topic/offset) on a poison record."""
    if value is None:
        raise RecordError("record has no value (tombstone)", topic=topic, offset=offset)
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        raise RecordError(
            f"undecodable {model.__name__} record: {exc.errors()[0]['msg']}", topic=topic, offset=offset
        ) from exc


def decode_command(
    value: bytes | None, *, topic: str | None = None, offset: int | None = None
) -> StartSession | EndSession:
    if value is None:
        raise RecordError("command record has no value", topic=topic, offset=offset)
    try:
        return SESSION_COMMAND_ADAPTER.validate_json(value)
    except ValidationError as exc:
        raise RecordError(
            f"undecodable session command: {exc.errors()[0]['msg']}", topic=topic, offset=offset
        ) from exc


__all__ = ["decode_command", "decode_value", "encode_key", "encode_value"]
