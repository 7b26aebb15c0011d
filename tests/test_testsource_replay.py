"""Replayed live HLS streams: one encoding, several independent live streams on loopback."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from ingest.decode import decode_segment
from livestream.testsource import short_script
from livestream.testsource.errors import TestSourceError
from livestream.testsource.replay import EncodedStream, ReplayHlsSource, encode_script

SEGMENT_SECONDS = 1.0
FPS = 10


@pytest.fixture(scope="module")
def encoded() -> EncodedStream:
    # 3 scenes of 1 s, 1 s segments: 3 segments, 3 s of live stream per source.
    return encode_script(
        short_script(seconds_per_scene=1.0), segment_seconds=SEGMENT_SECONDS, fps=FPS, width=320, height=180
    )


def listed(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


def test_encoding(encoded: EncodedStream) -> None:
    assert len(encoded.segments) == 3
    assert [s.index for s in encoded.segments] == [0, 1, 2]
    assert encoded.duration == pytest.approx(3.0)
    assert all(s.data[:1] == b"\x47" for s in encoded.segments)  # MPEG-TS sync byte


def test_live_playlist_grows_and_ends(encoded: EncodedStream) -> None:
    with ReplayHlsSource(encoded) as source, httpx.Client(timeout=5) as client:
        assert source.url.startswith("http://127.0.0.1:")
        assert source.started_at is not None
        first = client.get(source.url)
        assert first.status_code == 200
        assert first.headers["content-type"] == "application/vnd.apple.mpegurl"
        assert "#EXT-X-ENDLIST" not in first.text
        assert "#EXT-X-MEDIA-SEQUENCE:0" in first.text
        assert listed(first.text) == ["segment_000000.ts"]
        assert source.segments_published == 1
        # Not yet published: 404.
        assert client.get(f"{source.base_url}/segment_000002.ts").status_code == 404
        assert client.get(source.master_url).status_code == 200
        assert not source.finished

        time.sleep(1.1)
        grown = client.get(source.url).text
        assert len(listed(grown)) == 2
        assert "#EXT-X-ENDLIST" not in grown

        assert source.wait_finished(timeout=10)
        assert source.finished
        assert source.segments_published == 3
        final = client.get(source.url).text
        assert final.rstrip().endswith("#EXT-X-ENDLIST")
        assert listed(final) == [f"segment_{k:06d}.ts" for k in range(3)]
        # One PROGRAM-DATE-TIME per segment: started_at + the segment's stream time.
        stamps = [
            datetime.fromisoformat(line.split(":", 1)[1])
            for line in final.splitlines()
            if line.startswith("#EXT-X-PROGRAM-DATE-TIME:")
        ]
        assert len(stamps) == 3
        for k, stamp in enumerate(stamps):
            expected = source.started_at.timestamp() + k * SEGMENT_SECONDS
            assert stamp.timestamp() == pytest.approx(expected, abs=0.002)
        # Published no earlier than its last frame's time, as the live source publishes it.
        assert time.time() >= source.started_at.timestamp() + 3 * SEGMENT_SECONDS - 0.01

        # The segments are real H.264 that decodes on its own.
        for uri in listed(final):
            response = client.get(f"{source.base_url}/{uri}")
            assert response.status_code == 200
            assert response.headers["content-type"] == "video/mp2t"
            decoded = decode_segment(response.content, lambda offset: True, max_width=320)
            assert decoded.decoded_count == FPS * SEGMENT_SECONDS
            assert decoded.source_size == (320, 180)
            assert len(decoded.frames) == decoded.decoded_count


def test_two_streams_from_one_encoding_are_independent(encoded: EncodedStream) -> None:
    one = ReplayHlsSource(encoded)
    two = ReplayHlsSource(encoded)
    with httpx.Client(timeout=5) as client:
        try:
            one.start()
            time.sleep(0.5)
            two.start()
            assert one.port != two.port
            assert one.started_at is not None and two.started_at is not None
            assert (two.started_at - one.started_at).total_seconds() >= 1.4  # 0.5 s + one's first segment
            # Each has its own clock: one is further along than two.
            assert one.segments_published >= two.segments_published
            # one ends (3 s after its start) while two, started ~1.5 s later, is still live.
            assert one.wait_finished(timeout=10)
            assert one.segments_published == 3
            assert two.segments_published < 3
            assert not two.finished
            assert "#EXT-X-ENDLIST" in client.get(one.url).text
            assert "#EXT-X-ENDLIST" not in client.get(two.url).text
            # The same bytes behind both.
            a = client.get(f"{one.base_url}/segment_000000.ts").content
            b = client.get(f"{two.base_url}/segment_000000.ts").content
            assert a == b == encoded.segments[0].data
            assert two.wait_finished(timeout=10)
            assert "#EXT-X-ENDLIST" in client.get(two.url).text
        finally:
            one.stop()
            two.stop()


def test_stop_before_the_end_and_not_started() -> None:
    encoded = encode_script(
        short_script(seconds_per_scene=1.0), segment_seconds=1.0, fps=5, width=64, height=36
    )
    source = ReplayHlsSource(encoded)
    with pytest.raises(TestSourceError):
        source.wait_finished(timeout=0)
    source.start()
    source.stop()  # mid-stream: no ENDLIST, publisher and server gone
    assert source.finished
    assert source.segments_published == 1


def test_the_b_frame_profile_cuts_segments_on_keyframes_that_decode_alone() -> None:
    """With B-frames (a typical live encoder), each segment still starts with its IDR frame and
    holds its own frames: every segment decodes on its own, to its whole duration."""
    encoded = encode_script(
        short_script(seconds_per_scene=1.0),
        segment_seconds=SEGMENT_SECONDS,
        fps=FPS,
        width=320,
        height=180,
        profile="bframes",
    )
    assert len(encoded.segments) == 3
    for segment in encoded.segments:
        decoded = decode_segment(segment.data, lambda _: True, skip="exact")
        assert decoded.decoded_count == segment.frame_count == FPS
        assert [round(f.offset, 3) for f in decoded.frames] == [i / FPS for i in range(FPS)]
    with pytest.raises(TestSourceError, match="unknown encoder profile"):
        encode_script(short_script(seconds_per_scene=1.0), profile="none")
