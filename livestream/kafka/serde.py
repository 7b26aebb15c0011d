"""Wire format of every topic: key = session_id (UTF-8), value = the record's JSON (UTF-8).

JSON keeps the topics readable by consumers in any language; the JSON Schema files in
``schemas/jsonschema`` describe each value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from aiokafka.partitioner import murmur2
from pydantic import BaseModel, ValidationError

from livestream.errors import RecordError
from schemas.records import SESSION_COMMAND_ADAPTER, SessionCommandRecord

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def encode_key(session_id: str) -> bytes:
    return session_id.encode()


def key_text(key: bytes | None) -> str | None:
    """A record key as text for a dead letter or a log: UTF-8 when it is, else hex."""
    if key is None:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return key.hex()


def session_partition(session_id: str, partitions: int) -> int:
    """The partition the default partitioner (Java's and aiokafka's, murmur2) gives ``session_id``.

    Records keyed otherwise than by the bare session id (``<session_id>/event/<n>`` on the
    compacted session-events and session-chunks topics) are produced to this partition
    explicitly, so every record of a session lives in the same partition number of every topic.
    """
    return (murmur2(encode_key(session_id)) & 0x7FFFFFFF) % partitions


def encode_value(record: BaseModel) -> bytes:
    return record.model_dump_json().encode()


def decode_value(
    model: type[M], value: bytes | None, *, topic: str | None = None, offset: int | None = None
) -> M:
    """Parse one record value, raising ``RecordError`` (with topic/offset) on a poison record."""
    return _decode(model.model_validate_json, model.__name__, value, topic=topic, offset=offset)


def decode_command(
    value: bytes | None, *, topic: str | None = None, offset: int | None = None
) -> SessionCommandRecord:
    """Parse a session-commands value (``kind`` selects the command class)."""
    return _decode(
        SESSION_COMMAND_ADAPTER.validate_json, "session command", value, topic=topic, offset=offset
    )


def _decode(
    parse: Callable[[bytes], T], what: str, value: bytes | None, *, topic: str | None, offset: int | None
) -> T:
    if value is None:
        raise RecordError(f"{what} record has no value (tombstone)", topic=topic, offset=offset)
    try:
        return parse(value)
    except ValidationError as exc:
        raise RecordError(
            f"undecodable {what} record: {exc.errors()[0]['msg']}", topic=topic, offset=offset
        ) from exc


__all__ = ["decode_command", "decode_value", "encode_key", "encode_value", "session_partition"]
