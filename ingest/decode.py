"""Decoding of one media segment (MPEG-TS) from memory into RGB frames, with PyAV.

CPU-bound and blocking: ``decode_segment`` is meant for ``asyncio.to_thread``. Only frames the
caller wants (``keep``, asked in presentation order) are converted to RGB, which is the costly
part; every frame is still decoded, since sampling needs exact times.

Segments come from untrusted sources, so decoding refuses (``DecodeRefusedError``) what it
cannot afford, before spending on it where it can:

* only the MPEG-TS demuxer is used (``format="mpegts"``: no probing, so no other demuxer, such
  as ffmpeg's playlist-following ones, ever reads a segment's bytes);
* frames larger than ``max_pixels`` (width x height): checked on the stream's parameters before
  decoding and on every decoded frame; the decoder itself is given twice that as its own
  ``max_pixels``, so a frame far larger (a size change mid-stream) is refused before allocation;
* more than ``max_frames`` decoded frames (the caller derives it from the segment's declared
  duration): decoding stops there.

A refused segment is handled like an undecodable one (the session skips it as a gap and fails
after too many in a row), never by a killed process.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from ingest.errors import DecodeError, DecodeRefusedError

log = logging.getLogger(__name__)

SEGMENT_FORMAT = "mpegts"  # the only container ingest demuxes (HLS transport stream segments)


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
    max_pixels: int | None = None,
    max_frames: int | None = None,
    url: str | None = None,
) -> DecodedSegment:
    """Decode the first video stream of ``data``; ``keep(offset)`` picks the frames to convert.

    Raises ``DecodeRefusedError`` past ``max_pixels`` per frame or ``max_frames`` per segment,
    ``DecodeError`` when there is no decodable video."""
    if not data:
        raise DecodeError("segment is empty", url=url)
    try:
        container = av.open(io.BytesIO(data), mode="r", format=SEGMENT_FORMAT)
    except av.FFmpegError as exc:
        raise DecodeError(f"not an MPEG-TS media segment ({type(exc).__name__})", url=url) from exc
    with container:
        if not container.streams.video:
            raise DecodeError("segment has no video stream", url=url)
        stream = container.streams.video[0]
        if max_pixels is not None:
            _check_size(stream.codec_context.width, stream.codec_context.height, max_pixels, url)
            # Backstop: the decoder refuses a much larger frame (a size change mid-stream) before
            # allocating it (its own check counts padding, hence the headroom); the exact check
            # is on each decoded frame below.
            stream.codec_context.options = {"max_pixels": str(2 * max_pixels)}
        stream.thread_type = "AUTO"
        frames: list[DecodedFrame] = []
        first_time: float | None = None
        decoded = 0
        size = (0, 0)
        try:
            for frame in container.decode(stream):
                decoded += 1
                if max_frames is not None and decoded > max_frames:
                    raise DecodeRefusedError(
                        f"segment holds more than {max_frames} video frames for its declared duration "
                        "(LIVESTREAM_INGEST_DECODE_MAX_FPS)",
                        url=url,
                    )
                if max_pixels is not None:
                    _check_size(frame.width, frame.height, max_pixels, url)
                frame_time = frame.time
                if frame_time is None:
                    continue  # no timestamp: cannot be placed on the timeline
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
                raise DecodeError(f"video does not decode ({type(exc).__name__})", url=url) from exc
            # A truncated tail is common on live origins: keep what decoded.
            log.warning("segment %s decoded partially (%d frames): %s", url, decoded, exc)
    if first_time is None:
        raise DecodeError("segment has no decodable video frame", url=url)
    return DecodedSegment(frames=frames, decoded_count=decoded, source_size=size)


def frame_budget(declared_duration: float, max_fps: float, slack: float = 4.0) -> int:
    """Frames a segment may hold: ``slack`` x its declared duration (at least 1 s) x ``max_fps``."""
    return max(1, math.ceil(slack * max(declared_duration, 1.0) * max_fps))


def _check_size(width: int, height: int, max_pixels: int, url: str | None) -> None:
    if width * height > max_pixels:
        raise DecodeRefusedError(
            f"video frames of {width}x{height} exceed the decoding limit of {max_pixels} pixels "
            "(LIVESTREAM_INGEST_DECODE_MAX_PIXELS)",
            url=url,
        )
