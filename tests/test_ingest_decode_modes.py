"""``decode_segment``'s skip modes: what each decodes, which frames it keeps, the limits kept."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from ingest.decode import THREAD_TYPES, DecodedSegment, decode_segment
from ingest.errors import DecodeError, DecodeRefusedError
from ingest.picture import Picture
from ingest.sampler import FrameSampler

FPS = 25
FRAMES = 50  # 2 s segments, as a live packager cuts them

ENCODINGS = {
    # The project's test source (livestream/testsource/media.py): no B-frames.
    "baseline g50": {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"},
    # A live encoder with B-frames, always 2 between references (b-adapt=0), none of them a
    # reference (b-pyramid=none).
    "bf2 g50": {"preset": "veryfast", "bf": "2"},
    "bf2 g25": {"preset": "veryfast", "bf": "2"},
}


def same_picture(a: Picture, b: Picture) -> bool:
    return all(np.array_equal(p, q) for p, q in ((a.y, b.y), (a.cb, b.cb), (a.cr, b.cr)))


def make_segment(
    encoding: str, index: int = 0, codec: str = "libx264", width: int = 96, height: int = 64
) -> bytes:
    """2 s of a moving texture, ``index``-th segment of a stream (timestamps running on)."""
    keyint = 25 if encoding.endswith("g25") else 50
    texture = np.random.default_rng(7).integers(0, 255, (height, width + 2 * FRAMES, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mpegts") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        if codec == "libx264":
            stream.options = {
                **ENCODINGS[encoding],
                "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:b-adapt=0:b-pyramid=none",
            }
        for i in range(index * FRAMES, (index + 1) * FRAMES):
            image = np.ascontiguousarray(texture[:, i : i + width])
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = 10 * FPS + i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def segments() -> dict[str, list[bytes]]:
    return {encoding: [make_segment(encoding, i) for i in range(2)] for encoding in ENCODINGS}


def sample(segments: list[bytes], skip: str, sample_fps: float) -> tuple[list[DecodedSegment], list[float]]:
    """Decode consecutive segments through one sampler, as the session does: (results, kept times)."""
    sampler = FrameSampler(sample_fps)
    results, times = [], []
    for index, data in enumerate(segments):
        start = index * FRAMES / FPS
        result = decode_segment(data, lambda offset, start=start: sampler.accept(start + offset), skip=skip)  # type: ignore[arg-type]
        results.append(result)
        times += [start + f.offset for f in result.frames]
    return results, times


def frame_types(data: bytes) -> str:
    with av.open(io.BytesIO(data), format="mpegts") as container:
        return "".join(" IPB"[int(f.pict_type)] for f in container.decode(container.streams.video[0]))


def test_the_segments_have_the_intended_structure(segments: dict[str, list[bytes]]) -> None:
    assert frame_types(segments["baseline g50"][0]) == "I" + "P" * 49
    assert "B" in frame_types(segments["bf2 g50"][0]) and frame_types(segments["bf2 g50"][0]).count("I") == 1
    assert frame_types(segments["bf2 g25"][0]).count("I") == 2


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("sample_fps", [2.0, 1.0, 0.5])
def test_exact_keeps_the_same_frames_as_a_full_decode_and_decodes_fewer(
    segments: dict[str, list[bytes]], encoding: str, sample_fps: float
) -> None:
    full, full_times = sample(segments[encoding], "none", sample_fps)
    exact, exact_times = sample(segments[encoding], "exact", sample_fps)
    assert exact_times == full_times and len(full_times) == round(2 * 2 * sample_fps)
    for ours, theirs in zip(exact, full, strict=True):
        assert theirs.decoded_count == FRAMES
        assert 1 <= ours.decoded_count < FRAMES
        assert ours.source_size == theirs.source_size
        for a, b in zip(ours.frames, theirs.frames, strict=True):
            assert a.offset == b.offset and same_picture(a.picture, b.picture)


def test_exact_asks_keep_about_every_frame_in_presentation_order(segments: dict[str, list[bytes]]) -> None:
    for encoding in ENCODINGS:
        asked: dict[str, list[float]] = {"none": [], "exact": []}
        for skip, offsets in asked.items():
            decode_segment(
                segments[encoding][0],
                lambda offset, offsets=offsets: offsets.append(offset) or False,
                skip=skip,
            )  # type: ignore[arg-type,func-returns-value]
        assert asked["exact"] == asked["none"] == pytest.approx([i / FPS for i in range(FRAMES)])


def test_exact_decodes_only_the_first_frame_when_nothing_is_kept(segments: dict[str, list[bytes]]) -> None:
    result = decode_segment(segments["bf2 g50"][0], lambda _: False, skip="exact")
    assert result.decoded_count == 1 and result.frames == [] and result.source_size == (96, 64)


def test_exact_falls_back_to_a_full_decode_for_other_codecs() -> None:
    data = make_segment("mpeg2", codec="mpeg2video")
    for skip in ("none", "exact"):
        result = decode_segment(data, lambda offset: offset in (0.0, 1.0), skip=skip)  # type: ignore[arg-type]
        assert result.decoded_count == FRAMES and [f.offset for f in result.frames] == [0.0, 1.0]


def test_nonref_skips_only_b_frames_and_moves_kept_frames_by_at_most_the_b_run(
    segments: dict[str, list[bytes]],
) -> None:
    # Without B-frames every frame is a reference: nonref changes nothing (and saves nothing).
    _, full_times = sample(segments["baseline g50"], "none", 2.0)
    nonref_results, nonref_times = sample(segments["baseline g50"], "nonref", 2.0)
    assert nonref_times == full_times and [r.decoded_count for r in nonref_results] == [FRAMES, FRAMES]
    # With 2 B-frames between references, some are skipped: a kept frame moves up to 2 frames.
    for encoding in ("bf2 g50", "bf2 g25"):
        _, full_times = sample(segments[encoding], "none", 2.0)
        nonref_results, nonref_times = sample(segments[encoding], "nonref", 2.0)
        types = frame_types(segments[encoding][0])
        assert all(types.count("B") > 0 and r.decoded_count < FRAMES for r in nonref_results)
        assert all(r.decoded_count == FRAMES - types.count("B") for r in nonref_results)
        assert len(nonref_times) == len(full_times)
        assert all(0 <= n - f <= 2 / FPS + 1e-6 for n, f in zip(nonref_times, full_times, strict=True))
        assert nonref_times != full_times  # the test would not show the shift otherwise


def test_nonkey_decodes_keyframes_only_and_is_exact_when_the_interval_is_the_gop(
    segments: dict[str, list[bytes]],
) -> None:
    for encoding, keyframes in (("baseline g50", 1), ("bf2 g50", 1), ("bf2 g25", 2)):
        results, times = sample(segments[encoding], "nonkey", 0.5)
        assert [r.decoded_count for r in results] == [keyframes, keyframes]
        assert times == sample(segments[encoding], "none", 0.5)[1] == [0.0, 2.0]
    # Sampling faster than the GOP: nonkey cannot give the frames asked for.
    assert sample(segments["bf2 g50"], "nonkey", 2.0)[1] == [0.0, 2.0]


@pytest.mark.parametrize("skip", ["none", "exact", "nonref", "nonkey"])
def test_every_mode_refuses_a_frame_flood_and_oversized_frames(skip: str) -> None:
    flood = make_segment("bf2 g50", width=32, height=32)  # 50 frames
    asked: list[float] = []
    with pytest.raises(DecodeRefusedError, match="more than 20 video frames"):
        decode_segment(flood, lambda offset: asked.append(offset) or True, max_frames=20, skip=skip)  # type: ignore[arg-type,func-returns-value]
    if skip == "exact":
        assert asked == []  # refused before the sampler is asked anything
    with pytest.raises(DecodeRefusedError, match="frames of 32x32 exceed the decoding limit of 1023"):
        decode_segment(flood, lambda _: True, max_pixels=1023, skip=skip)  # type: ignore[arg-type]
    assert decode_segment(flood, lambda _: True, max_pixels=1024, max_frames=50, skip=skip).frames


def test_an_unknown_mode_is_refused(segments: dict[str, list[bytes]]) -> None:
    with pytest.raises(ValueError, match="skip must be one of"):
        decode_segment(segments["bf2 g50"][0], lambda _: True, skip="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thread_type must be one of"):
        decode_segment(segments["bf2 g50"][0], lambda _: True, thread_type="MANY")  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("skip", ["exact", "none"])
def test_the_decoders_threads_change_no_frame(
    segments: dict[str, list[bytes]], encoding: str, skip: str
) -> None:
    data = segments[encoding][0]
    decoded = {}
    for thread_type in THREAD_TYPES:
        sampler = FrameSampler(2.0)
        decoded[thread_type] = decode_segment(data, sampler.accept, skip=skip, thread_type=thread_type)  # type: ignore[arg-type]
    reference = decoded["AUTO"]
    assert len(reference.frames) == 4
    for result in decoded.values():
        assert result.decoded_count == reference.decoded_count
        assert [f.offset for f in result.frames] == [f.offset for f in reference.frames]
        for ours, theirs in zip(result.frames, reference.frames, strict=True):
            assert same_picture(ours.picture, theirs.picture)


@pytest.mark.parametrize("skip", ["none", "exact", "nonref", "nonkey"])
def test_every_mode_refuses_what_does_not_decode_and_keeps_a_truncated_segments_head(
    segments: dict[str, list[bytes]], skip: str
) -> None:
    for data in (b"", b"\x47" + bytes(187), bytes(range(256)) * 8):
        with pytest.raises(DecodeError):
            decode_segment(data, lambda _: True, skip=skip)  # type: ignore[arg-type]
    whole = segments["bf2 g50"][0]
    truncated = whole[: len(whole) // 2 // 188 * 188]  # whole TS packets, about half the frames
    result = decode_segment(truncated, lambda _: True, skip=skip)  # type: ignore[arg-type]
    assert 1 <= len(result.frames) < FRAMES and result.frames[0].offset == 0.0


def audio_first_segment(width: int = 96, height: int = 64) -> bytes:
    """A segment muxed with an AAC stream declared and written before the video, as origins do."""
    texture = np.random.default_rng(3).integers(0, 255, (height, width + FRAMES, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mpegts") as container:
        audio = container.add_stream("aac", rate=48000)
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast"}
        samples = 48000 // FPS
        for i in range(FRAMES):
            sound = av.AudioFrame.from_ndarray(
                np.zeros((1, samples), dtype=np.float32), format="fltp", layout="mono"
            )
            sound.sample_rate, sound.pts = 48000, i * samples
            for packet in audio.encode(sound):
                container.mux(packet)
            picture = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(texture[:, i : i + width]), format="rgb24"
            )
            picture.pts = i
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return buffer.getvalue()


def test_minimal_probing_decodes_what_full_probing_does(
    segments: dict[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROBE_OPTIONS: the streams and the frames are the same as with libavformat's default probing."""
    cases = [segments["baseline g50"][0], segments["bf2 g50"][1], audio_first_segment()]
    with av.open(io.BytesIO(cases[-1]), format="mpegts") as container:
        assert [s.type for s in container.streams] == ["audio", "video"]  # audio really comes first

    def decode(data: bytes) -> DecodedSegment:
        return decode_segment(data, FrameSampler(2.0).accept)

    minimal = [decode(data) for data in cases]
    monkeypatch.setattr("ingest.decode.PROBE_OPTIONS", {})
    full = [decode(data) for data in cases]
    for got, expected in zip(minimal, full, strict=True):
        assert (got.decoded_count, got.source_size) == (expected.decoded_count, expected.source_size)
        assert [f.offset for f in got.frames] == [f.offset for f in expected.frames]
        pairs = zip(got.frames, expected.frames, strict=True)
        assert all(same_picture(a.picture, b.picture) for a, b in pairs)
        assert len(got.frames) == 4
