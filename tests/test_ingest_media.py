"""JPEG encoding under the record budget, segment decoding with PyAV, the local segment store."""

from __future__ import annotations

import io
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from ingest.chunker import Chunk, build_chunk_record
from ingest.decode import decode_segment, scaled_size
from ingest.encode import encode_chunk, encode_ladder
from ingest.errors import DecodeError, EncodeBudgetError
from ingest.picture import Picture, picture_from_rgb
from ingest.playlist import MediaPlaylist, parse_playlist
from ingest.storage import SegmentStore, directory_name
from schemas.records import StartSession, utcnow
from schemas.topics import CHUNK_RECORD_BUDGET_BYTES

COMMAND = StartSession(session_id="s-media", stream_id="st", name="n", source_url="http://x/live.m3u8")


def make_ts_segment(seconds: float, fps: int, width: int, height: int, first_pts_seconds: float) -> bytes:
    """A real H.264 MPEG-TS segment whose timestamps start at ``first_pts_seconds`` (like a live one)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        start = round(first_pts_seconds * fps)
        for i in range(round(seconds * fps)):
            image = np.full((height, width, 3), (i * 9) % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = start + i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def noise_picture(rng: np.random.Generator, width: int, height: int) -> Picture:
    return picture_from_rgb(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def empty_chunk() -> Chunk:
    """The chunk whose record is built; its own frames do not matter to the encoder."""
    return Chunk(0, 0.0, 4.0, (), (0,), 0.0, utcnow())


def test_encode_chunk_keeps_small_chunks_at_full_quality() -> None:
    rng = np.random.default_rng(1)
    images = [(i * 0.5, noise_picture(rng, 640, 360)) for i in range(2)]
    encoded = encode_chunk(images, partial(build_chunk_record, empty_chunk(), COMMAND), max_width=320)
    record = encoded.record
    assert encoded.value == record.to_bytes()  # what the publisher sends as the record value
    assert [f.stream_time for f in record.frames] == [0.0, 0.5]
    assert all((f.width, f.height) == (320, 180) for f in record.frames)
    decoded = Image.open(io.BytesIO(record.frames[0].jpeg))
    assert decoded.format == "JPEG" and decoded.size == (320, 180)


def test_encode_chunk_steps_down_until_the_record_fits_the_budget() -> None:
    rng = np.random.default_rng(2)
    # Noise does not compress: 8 full-size frames are far over 1.5 MB at quality 85.
    images = [(i * 0.5, noise_picture(rng, 1280, 720)) for i in range(8)]
    encoded = encode_chunk(images, partial(build_chunk_record, empty_chunk(), COMMAND), max_width=1280)
    record = encoded.record
    assert len(record.frames) == 8  # never drops frames
    assert encoded.value == record.to_bytes() and len(encoded.value) <= CHUNK_RECORD_BUDGET_BYTES
    assert record.frames[0].width < 1280  # quality alone was not enough: the width went down too
    for f in record.frames:
        assert Image.open(io.BytesIO(f.jpeg)).size == (f.width, f.height)


def test_encode_chunk_raises_when_even_the_smallest_setting_is_too_big() -> None:
    rng = np.random.default_rng(3)
    images = [(0.0, noise_picture(rng, 640, 360))]
    with pytest.raises(EncodeBudgetError, match="smallest JPEG setting") as caught:
        encode_chunk(
            images,
            partial(build_chunk_record, empty_chunk(), COMMAND),
            budget_bytes=1500,
            session_id="s-media",
        )
    assert caught.value.context["session_id"] == "s-media"


def test_encode_ladder_goes_from_best_to_smallest() -> None:
    ladder = encode_ladder(640, 85)
    assert (ladder[0].max_width, ladder[0].quality) == (640, 85)
    assert (ladder[-1].max_width, ladder[-1].quality) == (160, 25)
    assert ladder == sorted(ladder, key=lambda s: (-s.max_width, -s.quality))


def test_decode_segment_gives_offsets_from_the_first_pts_and_scaled_pictures() -> None:
    data = make_ts_segment(seconds=2.0, fps=10, width=800, height=450, first_pts_seconds=37.0)
    asked: list[float] = []

    def keep(offset: float) -> bool:
        asked.append(offset)
        return len(asked) % 5 == 1  # every 5th frame

    decoded = decode_segment(data, keep, max_width=640)
    assert decoded.decoded_count == 20
    assert asked == pytest.approx([i / 10 for i in range(20)])
    assert [f.offset for f in decoded.frames] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    picture = decoded.frames[0].picture
    assert (picture.width, picture.height) == (640, 360)
    assert picture.cb.shape == picture.cr.shape == (180, 320)
    assert decoded.source_size == (800, 450)


@pytest.mark.parametrize("data", [b"", b"definitely not video" * 100])
def test_decode_segment_rejects_undecodable_bytes(data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_segment(data, lambda _: True, url="http://x/s.ts")
    assert caught.value.context["url"] == "http://x/s.ts"


def test_scaled_size_keeps_aspect_and_even_sizes() -> None:
    assert scaled_size(1920, 1080, 640) == (640, 360)
    assert scaled_size(320, 240, 640) == (320, 240)
    assert scaled_size(1001, 333, 641) == (640, 214)


def test_segment_store_writes_segments_gaps_and_a_vod_manifest(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "session/../1")
    assert store.directory == tmp_path / directory_name("session/../1")
    assert store.directory.parent == tmp_path
    store.open()
    first = store.add_segment(b"abc", 2.0, "http://x/live/segment_000010.ts?x=1")
    store.add_gap(4.0)
    store.add_segment(b"def", 1.5, "http://x/live/segment_000013.ts", discontinuity=True)
    assert first.read_bytes() == b"abc"
    live = parse_playlist(store.manifest_path.read_text(), store.manifest_path.as_uri())
    assert isinstance(live, MediaPlaylist) and not live.ended
    store.finish()
    text = store.manifest_path.read_text()
    final = parse_playlist(text, store.manifest_path.as_uri())
    assert isinstance(final, MediaPlaylist) and final.ended
    assert [s.duration for s in final.segments] == [2.0, 4.0, 1.5]
    assert sum(s.duration for s in final.segments) == 7.5  # playback time == stream time
    assert "#EXT-X-GAP" in text and text.count("#EXT-X-DISCONTINUITY") == 2
    assert (store.directory / final.segments[2].uri.rsplit("/", 1)[-1]).read_bytes() == b"def"
