"""Ingest's recordings in the blob store: the S3 mirror (against moto's real server), the
retry of failed uploads, and the wall clock (#EXT-X-PROGRAM-DATE-TIME) of the manifest."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import ingest.storage
from ingest.settings import IngestSettings
from ingest.storage import (
    MANIFEST_NAME,
    RecordingLimits,
    RecordingStorage,
    SegmentStore,
    directory_name,
    manifest_entries,
    recording_mirror,
)
from livestream.blobstore import Blob, BlobInfo, BlobStoreUnavailable, ByteRange
from livestream.blobstore.local import LocalBlobStore
from livestream.blobstore.s3 import S3BlobStore
from livestream.blobstore.settings import BlobStoreSettings
from livestream.blobstore.testing import S3TestServer, dummy_aws_credentials, moto_s3_server

SEGMENT = b"s" * 100
START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3TestServer]:
    with dummy_aws_credentials(), moto_s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3_server: S3TestServer) -> Iterator[S3BlobStore]:
    with dummy_aws_credentials():
        yield s3_server.store()


def _objects(server: S3TestServer, store: S3BlobStore) -> list[str]:
    return [name[len(store.prefix) :] for name in server.object_names(store.prefix)]


def test_a_recording_with_a_gap_pruning_and_an_end_is_mirrored_exactly(
    tmp_path: Path, s3_server: S3TestServer, bucket: S3BlobStore
) -> None:
    storage = RecordingStorage(tmp_path, RecordingLimits(max_bytes_per_session=250), mirror=bucket)
    store = storage.store("s1")
    with dummy_aws_credentials():
        store.open()
        store.add_segment(SEGMENT, 2.0, "http://origin/a.ts", program_date_time=START)
        store.add_segment(SEGMENT, 2.0, "http://origin/b.ts", program_date_time=START + timedelta(seconds=2))
        store.add_gap(2.0)
        store.add_segment(SEGMENT, 2.0, "http://origin/d.ts", program_date_time=START + timedelta(seconds=6))
        store.add_segment(SEGMENT, 2.0, "http://origin/e.ts", program_date_time=START + timedelta(seconds=8))
        store.finish()

        manifest = bucket.get(f"s1/{MANIFEST_NAME}")

    assert _objects(s3_server, bucket) == ["s1/index.m3u8", "s1/seg000003.ts", "s1/seg000004.ts"]
    assert manifest.content_type == "application/vnd.apple.mpegurl"
    assert manifest.data.decode() == (
        "#EXTM3U\n"
        "#EXT-X-VERSION:8\n"
        "#EXT-X-PLAYLIST-TYPE:EVENT\n"
        "#EXT-X-TARGETDURATION:2\n"
        "#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-02T03:04:05.000Z\n"
        "#EXT-X-GAP\n"
        "#EXTINF:2.000000,\nseg000000.ts\n"
        "#EXT-X-GAP\n"
        "#EXTINF:2.000000,\nseg000001.ts\n"
        "#EXT-X-DISCONTINUITY\n"
        "#EXT-X-GAP\n"
        "#EXTINF:2.000000,\ngap000002.ts\n"
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-02T03:04:11.000Z\n"
        "#EXTINF:2.000000,\nseg000003.ts\n"
        "#EXTINF:2.000000,\nseg000004.ts\n"
        "#EXT-X-ENDLIST\n"
    )
    assert manifest.data == store.manifest_path.read_bytes()  # the bucket holds the working copy
    with dummy_aws_credentials():
        assert bucket.get("s1/seg000004.ts").data == SEGMENT
        assert bucket.get("s1/seg000004.ts").content_type == "video/mp2t"

        assert storage.purge("s1") is True

    assert _objects(s3_server, bucket) == []
    assert not store.directory.exists()


def test_the_total_cap_prunes_the_bucket_too(
    tmp_path: Path, s3_server: S3TestServer, bucket: S3BlobStore
) -> None:
    storage = RecordingStorage(tmp_path, RecordingLimits(max_bytes_total=300), mirror=bucket)
    with dummy_aws_credentials():
        old = storage.store("old")
        old.open()
        for name in ("a", "b"):
            old.add_segment(SEGMENT, 2.0, f"http://origin/{name}.ts")
        old.finish()
        new = storage.store("new")
        new.open()
        for name in ("c", "d"):
            new.add_segment(SEGMENT, 2.0, f"http://origin/{name}.ts")

        old_manifest = bucket.get("old/index.m3u8").data.decode()

    assert storage.total_bytes <= 300
    assert _objects(s3_server, bucket) == [
        "new/index.m3u8",
        "new/seg000000.ts",
        "new/seg000001.ts",
        "old/index.m3u8",
    ]  # 400 bytes > 300: pruned down to 270, the oldest first, a finished recording wholly
    assert [entry.gap for entry in manifest_entries(old_manifest)] == [True, True]


def test_a_resumed_recording_reconciles_the_bucket(
    tmp_path: Path, s3_server: S3TestServer, bucket: S3BlobStore
) -> None:
    with dummy_aws_credentials():
        first = SegmentStore(tmp_path, "s1", mirror=bucket)
        first.open()
        for name in ("a", "b", "c"):
            first.add_segment(SEGMENT, 2.0, f"http://origin/{name}.ts")
        first.close()  # crashed: the checkpoint counted two entries
        (tmp_path / "s1" / "seg000001.ts").unlink()  # lost locally: the bucket still has it

        resumed = SegmentStore(tmp_path, "s1", mirror=bucket)
        resumed.open(resume_entries=2, resume_duration=4.0)
        resumed.add_segment(SEGMENT, 2.0, "http://origin/c.ts")

        text = bucket.get("s1/index.m3u8").data.decode()

    # seg000002 of the first run was deleted (ingested again as the new seg000002); seg000001
    # is a gap in the manifest since the working copy lost it, and gone from the bucket too.
    assert _objects(s3_server, bucket) == ["s1/index.m3u8", "s1/seg000000.ts", "s1/seg000002.ts"]
    assert [(e.uri, e.gap) for e in manifest_entries(text)] == [
        ("seg000000.ts", False),
        ("seg000001.ts", True),
        ("seg000002.ts", False),
    ]


# ---------------------------------------------------------------------- failing blob store


class FlakyStore:
    """A local blob store whose writes fail while ``failing`` is set (an S3 outage)."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalBlobStore(root)
        self.failing = False
        self.puts: list[str] = []

    def put(self, key: str, data: bytes, content_type: str) -> None:
        if self.failing:
            raise BlobStoreUnavailable("connection refused", key=key, backend="flaky")
        self.puts.append(key)
        self.inner.put(key, data, content_type)

    def get(self, key: str, byte_range: ByteRange | None = None) -> Blob:
        return self.inner.get(key, byte_range)

    def stat(self, key: str) -> BlobInfo | None:
        return self.inner.stat(key)

    def delete(self, key: str) -> None:
        if self.failing:
            raise BlobStoreUnavailable("connection refused", key=key, backend="flaky")
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(prefix)

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)


def test_a_failed_upload_does_not_fail_the_session_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest.storage, "MIRROR_RETRY_S", 0.0)
    remote = FlakyStore(tmp_path / "remote")
    store = SegmentStore(tmp_path / "work", "s1", mirror=remote)
    store.open()
    store.add_segment(SEGMENT, 2.0, "http://origin/a.ts")

    remote.failing = True
    store.add_segment(SEGMENT, 2.0, "http://origin/b.ts")  # no exception: the upload waits
    store.add_gap(2.0)
    assert sorted(remote.inner.list("s1/")) == ["s1/index.m3u8", "s1/seg000000.ts"]
    # The bucket's manifest still lists only what the bucket holds.
    assert [e.uri for e in manifest_entries(remote.get("s1/index.m3u8").data.decode())] == ["seg000000.ts"]

    remote.failing = False
    store.finish()

    assert sorted(remote.inner.list("s1/")) == ["s1/index.m3u8", "s1/seg000000.ts", "s1/seg000001.ts"]
    assert remote.get("s1/index.m3u8").data == store.manifest_path.read_bytes()


def test_retries_wait_after_a_failure(tmp_path: Path) -> None:
    remote = FlakyStore(tmp_path / "remote")
    store = SegmentStore(tmp_path / "work", "s1", mirror=remote)
    remote.failing = True
    store.open()  # fails: the next tries wait MIRROR_RETRY_S
    remote.failing = False
    store.add_segment(SEGMENT, 2.0, "http://origin/a.ts")

    assert remote.puts == []


def test_with_the_local_backend_the_directory_is_the_store(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "s1")
    store.open()
    store.add_segment(SEGMENT, 2.0, "http://origin/a.ts")
    store.add_segment(SEGMENT, 2.0, "http://origin/b.ts")  # target duration rises: manifest rewritten

    blobs = LocalBlobStore(tmp_path)
    assert sorted(blobs.list("s1/")) == ["s1/index.m3u8", "s1/seg000000.ts", "s1/seg000001.ts"]
    assert blobs.get("s1/index.m3u8").data == store.manifest_path.read_bytes()
    assert recording_mirror(tmp_path, BlobStoreSettings(local_dir=tmp_path)) is None


def test_the_service_storage_mirrors_to_the_configured_s3_bucket(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    blob_settings = BlobStoreSettings(
        backend="s3",
        s3_bucket=s3_server.bucket,
        s3_prefix="svc/",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_path_style=True,
        s3_region="us-east-1",
    )
    with dummy_aws_credentials():
        storage = RecordingStorage.of(IngestSettings(storage_dir=tmp_path), blob_settings)

    assert isinstance(storage.mirror, S3BlobStore)
    assert (storage.mirror.bucket, storage.mirror.prefix) == (s3_server.bucket, "svc/")
    assert RecordingStorage.of(IngestSettings(storage_dir=tmp_path), BlobStoreSettings()).mirror is None


def test_recording_directories_are_never_hidden_names() -> None:
    assert directory_name(".hidden") == "_.hidden"
    assert directory_name("..") == "_.."
    assert directory_name("") == "_"
    assert directory_name("a.b-c_d") == "a.b-c_d"


# ---------------------------------------------------------------------- PROGRAM-DATE-TIME


def _dates(store: SegmentStore) -> list[tuple[str, datetime | None]]:
    return [(e.uri, e.program_date_time) for e in manifest_entries(store.manifest_path.read_text())]


def test_program_date_time_at_the_start_after_gaps_and_discontinuities(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "s1")
    store.open()
    at = [START + timedelta(seconds=2 * i) for i in range(6)]
    store.add_segment(SEGMENT, 2.0, "http://origin/0.ts", program_date_time=at[0])
    store.add_segment(SEGMENT, 2.0, "http://origin/1.ts", program_date_time=at[1])
    store.add_gap(2.0)
    store.add_segment(SEGMENT, 2.0, "http://origin/3.ts", program_date_time=at[3])
    store.add_segment(SEGMENT, 2.0, "http://origin/4.ts", discontinuity=True, program_date_time=at[4])
    store.add_segment(SEGMENT, 2.0, "http://origin/5.ts", program_date_time=at[5])

    assert _dates(store) == [
        ("seg000000.ts", at[0]),
        ("seg000001.ts", None),
        ("gap000002.ts", None),
        ("seg000003.ts", at[3]),
        ("seg000004.ts", at[4]),
        ("seg000005.ts", None),
    ]
    assert "#EXT-X-PROGRAM-DATE-TIME:2026-01-02T03:04:13.000Z\n" in store.manifest_path.read_text()


def test_an_unknown_wall_clock_waits_for_the_next_known_one(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "s1")
    store.open()
    store.add_segment(SEGMENT, 2.0, "http://origin/0.ts")
    store.add_segment(SEGMENT, 2.0, "http://origin/1.ts", program_date_time=START)

    assert _dates(store) == [("seg000000.ts", None), ("seg000001.ts", START)]


def test_program_dates_survive_rewrites_and_resumes(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "s1", RecordingLimits(max_bytes_per_session=150))
    store.open()
    store.add_segment(SEGMENT, 1.0, "http://origin/0.ts", program_date_time=START)
    store.add_segment(SEGMENT, 3.0, "http://origin/1.ts")  # header rewrite, then pruning rewrite
    store.close()

    resumed = SegmentStore(tmp_path, "s1")
    resumed.open(resume_entries=2, resume_duration=4.0)
    resumed.add_segment(SEGMENT, 2.0, "http://origin/2.ts", program_date_time=START + timedelta(seconds=4))

    assert _dates(resumed) == [
        ("seg000000.ts", START),
        ("seg000001.ts", None),
        ("seg000002.ts", START + timedelta(seconds=4)),  # the first segment of a resumed run
    ]
