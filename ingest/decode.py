"""Decoding of one media segment (MPEG-TS) from memory into RGB frames, with PyAV.

CPU-bound and blocking: ``decode_segment`` is meant for ``asyncio.to_thread``. Only frames the
caller wants (``keep``, asked in presentation order) are converted to RGB, which is the costly
part; every frame is still decoded, since sampling needs exact times.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from ingest.errors import DecodeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedFrame:
    offset: float  # seconds since the segment's first frame (its pts minus the first pts)
    image: np.ndarray  # RGB uint8 (height, width, 3)


@dataclass(frozen=True)
class DecodedSegment:
    frames: list[DecodedFrame]  # the kept ones
    decoded_count: int  # every video frame decoded, kept or not
    source_size: tuple[int, int]  # (width, height) of the coded video


def scaled_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """(width, height) fitting ``max_width``, aspect kept, both even (what swscale likes)."""
    if width <= max_width:
        return width, height
    new_height = max(2, round(height * max_width / width / 2) * 2)
    return max_width - max_width % 2, new_height


def decode_segment(
    data: bytes,
    keep: Callable[[float], bool],
    *,
    max_width: int = 640,
    url: str | None = None,
) -> DecodedSegment:
    """Decode the first video stream of ``data``; ``keep(offset)`` picks the frames to convert."""
    if not data:
        raise DecodeError("segment is empty", url=url)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as exc:
        raise DecodeError(f"not a decodable media segment: {exc}", url=url) from exc
    with container:
        if not container.streams.video:
            raise DecodeError("segment has no video stream", url=url)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames: list[DecodedFrame] = []
        first_time: float | None = None
        decoded = 0
        size = (0, 0)
        try:
            for frame in container.decode(stream):
                frame_time = frame.time
                if frame_time is None:
                    continue  # no timestamp: cannot be placed on the timeline
                decoded += 1
                if first_time is None:
                    first_time = frame_time
                offset = max(0.0, frame_time - first_time)
                size = (frame.width, frame.height)
                if keep(offset):
                    width, height = scaled_size(frame.width, frame.height, max_width)
                    image = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
                    frames.append(DecodedFrame(offset=offset, image=image))
        except av.FFmpegError as exc:
            if decoded == 0:
                raise DecodeError(f"video does not decode: {exc}", url=url) from exc
            # A truncated tail is common on live origins: keep what decoded.
            log.warning("segment %s decoded partially (%d frames): %s", url, decoded, exc)
    if decoded == 0:
        raise DecodeError("segment has no decodable video frame", url=url)
    return DecodedSegment(frames=frames, decoded_count=decoded, source_size=size)
