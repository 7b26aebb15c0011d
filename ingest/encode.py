"""JPEG encoding of a chunk's frames under the chunk record size budget.

Frames are encoded at the configured width and quality first; while the serialized
ChunkRecord is over budget, the next rung of a fixed ladder is tried (lower quality, then
smaller width). Past the last rung ``EncodeBudgetError`` is raised: frames are never dropped
silently. Frames are ``Picture``s (YCbCr planes, ``ingest.picture``), compressed as they are.
CPU-bound: call ``encode_chunk`` through ``asyncio.to_thread``. It returns the record with its
serialized value (what the budget was checked on), which the publisher sends as it is: a chunk
record is ~70 KB of base64 JSON, and serializing it again on the event loop cost as much as
producing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ingest.errors import EncodeBudgetError
from ingest.picture import Picture, encode_picture_jpeg
from schemas.records import ChunkRecord, Frame
from schemas.topics import CHUNK_RECORD_BUDGET_BYTES

log = logging.getLogger(__name__)

_WIDTH_FACTORS = (1.0, 0.75, 0.5, 0.375, 0.25)
_QUALITY_STEPS = (85, 70, 55, 40, 25)
_MIN_WIDTH = 64


@dataclass(frozen=True)
class EncodedChunk:
    record: ChunkRecord
    value: bytes  # record.to_bytes(): the chunks topic's record value


@dataclass(frozen=True)
class EncodeSetting:
    max_width: int
    quality: int


def encode_ladder(max_width: int, quality: int) -> list[EncodeSetting]:
    """Settings to try, best first: each width with falling qualities, then the next width."""
    qualities = [quality, *(q for q in _QUALITY_STEPS if q < quality)]
    widths: list[int] = []
    for factor in _WIDTH_FACTORS:
        width = max(_MIN_WIDTH, int(max_width * factor))
        if width not in widths:
            widths.append(width)
    return [EncodeSetting(w, q) for w in widths for q in qualities]


def encode_jpeg(picture: Picture, setting: EncodeSetting) -> tuple[bytes, int, int]:
    """One frame as JPEG bytes (downscaled to ``setting.max_width``), with its width and height."""
    if picture.width > setting.max_width:
        height = max(1, round(picture.height * setting.max_width / picture.width))
        picture = picture.resized(setting.max_width, height)
    return encode_picture_jpeg(picture, setting.quality), picture.width, picture.height


def encode_chunk(
    pictures: list[tuple[float, Picture]],
    build_record: Callable[[list[Frame]], ChunkRecord],
    *,
    max_width: int = 640,
    quality: int = 85,
    budget_bytes: int = CHUNK_RECORD_BUDGET_BYTES,
    session_id: str | None = None,
    chunk_index: int | None = None,
) -> EncodedChunk:
    """Encode ``(stream_time, picture)`` pairs into the record ``build_record`` makes, within budget."""
    size = 0
    for setting in encode_ladder(max_width, quality):
        frames = []
        for stream_time, picture in pictures:
            jpeg, width, height = encode_jpeg(picture, setting)
            frames.append(Frame(stream_time=stream_time, width=width, height=height, jpeg=jpeg))
        record = build_record(frames)
        value = record.to_bytes()
        size = len(value)
        if size <= budget_bytes:
            if setting.quality != quality or setting.max_width != max_width:
                log.info(
                    "chunk %s fits at width<=%d quality %d (%d bytes)",
                    record.chunk_id,
                    setting.max_width,
                    setting.quality,
                    size,
                )
            return EncodedChunk(record, value)
    raise EncodeBudgetError(
        f"chunk of {len(pictures)} frames is {size} bytes even at the smallest JPEG setting",
        session_id=session_id,
        chunk_index=chunk_index,
        budget_bytes=budget_bytes,
    )
