"""Bounded local recordings: an appended manifest, per-session size and age caps, a total cap.

Real files in ``tmp_path``; caps are a few hundred bytes so each test stays instant. The clock
is injected where ages matter.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from ingest.playlist import MediaPlaylist, parse_playlist
from ingest.settings import IngestSettings
from ingest.storage import (
    PRUNE_TO_FRACTION,
    RecordingLimits,
    RecordingStorage,
    SegmentStore,
    manifest_entries,
)

SEGMENT = b"x" * 100  # 100 bytes per segment file


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def segment_files(store: SegmentStore) -> list[str]:
    return sorted(p.name for p in store.directory.glob("seg*"))


def starts(store: SegmentStore) -> dict[str, float]:
    """Stream-time position of every manifest entry, by name."""
    entries = manifest_entries(store.manifest_path.read_text())
    positions = itertools.accumulate((e.duration for e in entries), initial=0.0)
    return {e.uri: start for e, start in zip(entries, positions, strict=False)}


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("*/seg*"))


# --------------------------------------------------------------------------- the appended manifest


def test_manifest_is_appended_per_entry_and_rewritten_only_when_its_header_changes(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "s1")
    store.open()
    store.add_segment(SEGMENT, 2.0, "http://x/a.ts")  # target duration 1 -> 2: header rewritten
    inode = store.manifest_path.stat().st_ino
    texts = [store.manifest_path.read_text()]
    for name in "bcdef":
        store.add_segment(SEGMENT, 2.0, f"http://x/{name}.ts")
        texts.append(store.manifest_path.read_text())
    store.finish()
    texts.append(store.manifest_path.read_text())

    # Same file throughout, and each version is the previous one plus one entry: appended.
    assert store.manifest_path.stat().st_ino == inode
    for before, after in itertools.pairwise(texts):
        assert after.startswith(before) and len(after) > len(before)
    assert texts[-1].endswith("#EXT-X-ENDLIST\n")
    assert texts[-1].count("#EXTINF") == 6 and "#EXT-X-TARGETDURATION:2\n" in texts[-1]
    recorded = parse_playlist(texts[-1], store.manifest_path.as_uri())
    assert isinstance(recorded, MediaPlaylist) and recorded.ended and len(recorded.segments) == 6

    # A longer entry raises the target duration: a rewrite (the header is at the top), then
    # appending goes on in the new file.
    longer = SegmentStore(tmp_path, "s2")
    longer.open()
    longer.add_segment(SEGMENT, 2.0, "http://x/a.ts")
    first_inode = longer.manifest_path.stat().st_ino
    longer.add_segment(SEGMENT, 5.5, "http://x/b.ts")
    assert longer.manifest_path.stat().st_ino != first_inode
    assert "#EXT-X-TARGETDURATION:6\n" in longer.manifest_path.read_text()
    second_inode = longer.manifest_path.stat().st_ino
    longer.add_segment(SEGMENT, 2.0, "http://x/c.ts")
    longer.add_gap(3.0)  # the first gap needs version 8: one more rewrite
    third_inode = longer.manifest_path.stat().st_ino
    assert third_inode != second_inode and "#EXT-X-VERSION:8\n" in longer.manifest_path.read_text()
    longer.add_gap(2.0)
    longer.add_segment(SEGMENT, 2.0, "http://x/d.ts")
    assert longer.manifest_path.stat().st_ino == third_inode
    assert [(e.duration, e.gap) for e in manifest_entries(longer.manifest_path.read_text())] == [
        (2.0, False),
        (5.5, False),
        (2.0, False),
        (3.0, True),
        (2.0, True),
        (2.0, False),
    ]
    assert longer.entry_count == 6


def test_a_closed_recording_can_still_be_finished(tmp_path: Path) -> None:
    # A session that crashed closes its store; the service's fallback FAILED report finishes it.
    store = SegmentStore(tmp_path, "s1")
    store.open()
    store.add_segment(SEGMENT, 1.0, "http://x/a.ts")
    store.close()
    store.finish()
    store.finish()  # idempotent
    text = store.manifest_path.read_text()
    assert text.count("#EXT-X-ENDLIST") == 1 and text.count("#EXTINF") == 1


# --------------------------------------------------------------------------- per-session caps


def test_size_cap_prunes_the_oldest_in_batches_and_keeps_stream_time_positions(tmp_path: Path) -> None:
    cap = 1000
    store = SegmentStore(tmp_path, "s1", RecordingLimits(max_bytes_per_session=cap))
    store.open()
    rewrites = 0
    for index in range(30):
        inode = store.manifest_path.stat().st_ino  # a rewrite (write-then-rename) changes it
        store.add_segment(SEGMENT, 1.0 + (index % 3) * 0.5, f"http://x/{index}.ts")
        rewrites += store.manifest_path.stat().st_ino != inode
        assert store.stored_bytes <= cap
    reference = SegmentStore(tmp_path / "unlimited", "s1")
    reference.open()
    for index in range(30):
        reference.add_segment(SEGMENT, 1.0 + (index % 3) * 0.5, f"http://x/{index}.ts")

    files = segment_files(store)
    assert store.stored_bytes == len(files) * len(SEGMENT) > cap * PRUNE_TO_FRACTION - len(SEGMENT)
    # The newest segments are the ones kept.
    assert files == [f"seg{n:06d}.ts" for n in range(30 - len(files), 30)]
    # Every entry is still listed with its duration: pruned ones as gaps, so every segment
    # starts at the same stream time as in an unpruned recording.
    entries = manifest_entries(store.manifest_path.read_text())
    assert [(e.uri, e.duration) for e in entries] == [
        (e.uri, e.duration) for e in manifest_entries(reference.manifest_path.read_text())
    ]
    assert [e.uri for e in entries if not e.gap] == files
    assert starts(store) == starts(reference)
    text = store.manifest_path.read_text()
    assert "#EXT-X-GAP" in text and "#EXT-X-VERSION:8" in text
    # Batches down to 90% of the cap: one rewrite per 2 segments here (a segment is 10% of the
    # cap), plus the first header rewrite, not one per segment.
    assert 1 < rewrites <= 1 + (30 - 10) // 2


def test_size_cap_smaller_than_a_segment_keeps_the_newest_one(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "s1", RecordingLimits(max_bytes_per_session=50))
    store.open()
    for index in range(3):
        store.add_segment(SEGMENT, 1.0, f"http://x/{index}.ts")
        assert segment_files(store) == [f"seg{index:06d}.ts"]
    assert [e.gap for e in manifest_entries(store.manifest_path.read_text())] == [True, True, False]


def test_age_cap_prunes_segments_older_than_the_cap_in_batches(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SegmentStore(tmp_path, "s1", RecordingLimits(max_age_seconds=100.0), clock=clock)
    store.open()
    rewrites = 0
    for index in range(60):  # one segment every 5 s of wall clock: 300 s in all
        inode = store.manifest_path.stat().st_ino
        store.add_segment(SEGMENT, 5.0, f"http://x/{index}.ts")
        rewrites += store.manifest_path.stat().st_ino != inode
        clock.now += 5.0
        kept = [int(name[3:9]) for name in segment_files(store)]
        # Nothing older than the cap survives a write; after pruning at most 90% of it is kept.
        assert (index - kept[0]) * 5.0 <= 100.0
    assert rewrites <= 1 + (60 - 20) // 2  # first header, then once per 10 s of age at most
    entries = manifest_entries(store.manifest_path.read_text())
    assert len(entries) == 60 and sum(e.duration for e in entries) == 300.0
    pruned = [e.uri for e in entries if e.gap]
    assert pruned == [f"seg{n:06d}.ts" for n in range(len(pruned))]
    assert not any((store.directory / name).exists() for name in pruned)


# --------------------------------------------------------------------------- the total cap


def test_total_cap_prunes_the_oldest_across_recordings_with_a_running_total(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = RecordingStorage(tmp_path, RecordingLimits(max_bytes_total=2000), clock=clock)
    finished = storage.store("old-session")
    finished.open()
    for index in range(8):
        finished.add_segment(SEGMENT, 2.0, f"http://x/{index}.ts")
        clock.now += 2.0
    finished.finish()
    live = storage.store("live-session")
    live.open()
    for index in range(20):
        live.add_segment(SEGMENT, 2.0, f"http://x/{index}.ts")
        clock.now += 2.0
        assert storage.total_bytes == disk_bytes(tmp_path) <= 2000

    # The finished recording was older: it went first, entirely, before any of the live one.
    assert segment_files(finished) == []
    finished_text = finished.manifest_path.read_text()
    assert finished_text.endswith("#EXT-X-ENDLIST\n")
    assert [(e.gap, e.duration) for e in manifest_entries(finished_text)] == [(True, 2.0)] * 8
    kept = segment_files(live)
    assert kept[-1] == "seg000019.ts" and len(kept) < 20
    live_entries = manifest_entries(live.manifest_path.read_text())
    assert [e.uri for e in live_entries if not e.gap] == kept and len(live_entries) == 20
    assert sum(e.duration for e in live_entries) == 40.0


def test_startup_scan_counts_existing_recordings_and_enforces_the_total_cap(tmp_path: Path) -> None:
    for session_id, count in (("a", 6), ("b", 6)):
        store = SegmentStore(tmp_path, session_id)
        store.open()
        for index in range(count):
            store.add_segment(SEGMENT, 1.0, f"http://x/{index}.ts")
        store.finish()
    # Make "b" the older recording on disk.
    for offset, path in enumerate(sorted((tmp_path / "b").glob("seg*"))):
        os.utime(path, (1000.0 + offset, 1000.0 + offset))
    (tmp_path / "not a recording").mkdir()

    unlimited = RecordingStorage(tmp_path, RecordingLimits(max_bytes_total=0))
    unlimited.scan()
    assert unlimited.total_bytes == 0  # nothing to count without a total cap

    storage = RecordingStorage(tmp_path, RecordingLimits(max_bytes_total=1000))
    storage.scan()
    assert storage.total_bytes == disk_bytes(tmp_path) == 900
    assert sorted(p.name for p in (tmp_path / "b").glob("seg*")) == [
        "seg000003.ts",
        "seg000004.ts",
        "seg000005.ts",
    ]
    assert len(list((tmp_path / "a").glob("seg*"))) == 6
    b_entries = manifest_entries((tmp_path / "b" / "index.m3u8").read_text())
    assert [e.gap for e in b_entries] == [True, True, True, False, False, False]
    assert (tmp_path / "b" / "index.m3u8").read_text().endswith("#EXT-X-ENDLIST\n")

    # A session resumed on that storage adopts the scanned recording: the total stays exact.
    resumed = storage.store("a")
    resumed.open(resume_entries=4, resume_duration=4.0)  # entries 4 and 5 are ingested again
    assert storage.total_bytes == disk_bytes(tmp_path) == 700
    resumed.add_segment(SEGMENT, 1.0, "http://x/again.ts")
    assert storage.total_bytes == disk_bytes(tmp_path) == 800

    assert storage.purge("a") is True
    assert not (tmp_path / "a").exists()
    assert storage.total_bytes == disk_bytes(tmp_path) == 300
    assert storage.purge("a") is False  # idempotent
    assert storage.purge("never-recorded") is False


def test_resume_keeps_pruned_entries_as_gaps_and_deletes_files_it_ingests_again(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "s1", RecordingLimits(max_bytes_per_session=500))
    store.open()
    for index in range(8):
        store.add_segment(SEGMENT, 2.0, f"http://x/{index}.ts")
    pruned = [e.uri for e in manifest_entries(store.manifest_path.read_text()) if e.gap]
    assert pruned  # the first ones

    resumed = SegmentStore(tmp_path, "s1", RecordingLimits(max_bytes_per_session=500))
    resumed.open(resume_entries=6, resume_duration=12.0)
    entries = manifest_entries(resumed.manifest_path.read_text())
    assert len(entries) == 6 and [e.uri for e in entries if e.gap] == pruned
    assert segment_files(resumed) == [e.uri for e in entries if not e.gap]  # seg 6 and 7 deleted
    assert resumed.stored_bytes == len(segment_files(resumed)) * len(SEGMENT)
    resumed.add_segment(SEGMENT, 2.0, "http://x/6.ts")
    assert resumed.entry_count == 7 and segment_files(resumed)[-1] == "seg000006.ts"


def test_recording_settings_default_to_bounded_and_zero_means_unlimited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = RecordingLimits.of(IngestSettings())
    assert defaults == RecordingLimits(
        max_bytes_per_session=2 * 1024**3, max_age_seconds=7 * 24 * 3600.0, max_bytes_total=20 * 1024**3
    )
    monkeypatch.setenv("LIVESTREAM_INGEST_RECORDING_MAX_BYTES_PER_SESSION", "0")
    monkeypatch.setenv("LIVESTREAM_INGEST_RECORDING_MAX_AGE_S", "0")
    monkeypatch.setenv("LIVESTREAM_INGEST_RECORDING_MAX_BYTES_TOTAL", "12345")
    limits = RecordingLimits.of(IngestSettings())
    assert limits == RecordingLimits(max_bytes_per_session=0, max_age_seconds=0.0, max_bytes_total=12345)
