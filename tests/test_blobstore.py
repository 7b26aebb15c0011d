"""One contract for every BlobStore backend: the local directory and S3 (moto's real server).

The same tests run against both, so the API and ingest can rely on one behaviour whatever the
deployment picks. Backend-specific checks (symlink escape, S3 paging and batching) follow.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from livestream.blobstore import (
    BlobKeyError,
    BlobNotFound,
    BlobRangeError,
    BlobStore,
    BlobStoreUnavailable,
    content_type_for,
    open_blob_store,
    validate_key,
)
from livestream.blobstore.local import LocalBlobStore
from livestream.blobstore.s3 import S3BlobStore
from livestream.blobstore.settings import DEFAULT_LOCAL_DIR, BlobStoreSettings
from livestream.blobstore.testing import S3TestServer, dummy_aws_credentials, moto_s3_server
from livestream.errors import LivestreamError

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "a/../../outside",
    "a/./b",
    "a//b",
    ".hidden",
    "a\\..\\b",
    "a\x00b",
    "a\nb",
    "a b",
    "caf\u00e9.ts",
    "a:b",
    "a%2F..",
]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3TestServer]:
    with dummy_aws_credentials(), moto_s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
    else:
        server: S3TestServer = request.getfixturevalue("s3_server")
        with dummy_aws_credentials():
            yield server.store()


# ---------------------------------------------------------------------- the contract


def test_put_then_get_returns_the_bytes_and_content_type(store: BlobStore) -> None:
    store.put("s1/seg000000.ts", b"0123456789", "video/mp2t")

    blob = store.get("s1/seg000000.ts")

    assert (blob.data, blob.total_size, blob.content_type, blob.start) == (b"0123456789", 10, "video/mp2t", 0)


def test_put_replaces_a_blob_whole(store: BlobStore) -> None:
    store.put("s1/index.m3u8", b"#EXTM3U\nold\n", "application/vnd.apple.mpegurl")
    store.put("s1/index.m3u8", b"#EXTM3U\n", "application/vnd.apple.mpegurl")

    assert store.get("s1/index.m3u8").data == b"#EXTM3U\n"


@pytest.mark.parametrize(
    ("byte_range", "data", "start"),
    [
        ((0, 0), b"0", 0),
        ((2, 4), b"234", 2),
        ((7, None), b"789", 7),
        ((8, 100), b"89", 8),  # an end past the blob is clipped, like HTTP
        ((0, None), b"0123456789", 0),
    ],
)
def test_range_reads_return_the_inclusive_slice(
    store: BlobStore, byte_range: tuple[int, int | None], data: bytes, start: int
) -> None:
    store.put("s1/seg000001.ts", b"0123456789", "video/mp2t")

    blob = store.get("s1/seg000001.ts", byte_range)

    assert (blob.data, blob.start, blob.end, blob.total_size) == (data, start, start + len(data) - 1, 10)


@pytest.mark.parametrize("byte_range", [(10, None), (10, 20), (5, 2), (-1, 3)])
def test_unsatisfiable_ranges_are_refused(store: BlobStore, byte_range: tuple[int, int | None]) -> None:
    store.put("s1/seg000002.ts", b"0123456789", "video/mp2t")

    with pytest.raises(BlobRangeError) as raised:
        store.get("s1/seg000002.ts", byte_range)

    assert "s1/seg000002.ts" in str(raised.value)


def test_an_empty_blob_reads_whole_but_has_no_byte_to_range(store: BlobStore) -> None:
    store.put("s1/empty.ts", b"", "video/mp2t")

    blob = store.get("s1/empty.ts")

    assert (blob.data, blob.total_size) == (b"", 0)
    with pytest.raises(BlobRangeError):
        store.get("s1/empty.ts", (0, None))


def test_a_missing_blob_is_not_found_and_stat_says_none(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound) as raised:
        store.get("s1/missing.ts")

    assert "s1/missing.ts" in str(raised.value)
    assert isinstance(raised.value, LivestreamError)
    assert store.stat("s1/missing.ts") is None


def test_stat_gives_size_content_type_and_a_recent_time(store: BlobStore) -> None:
    store.put("s1/thumb.jpg", b"\xff\xd8jpeg", "image/jpeg")

    info = store.stat("s1/thumb.jpg")

    assert info is not None
    assert (info.size, info.content_type) == (6, "image/jpeg")
    assert abs(datetime.now(UTC) - info.modified) < timedelta(minutes=5)


def test_a_content_type_other_than_the_suffix_one_is_kept(store: BlobStore) -> None:
    store.put("s1/notes.bin", b"{}", "application/json")

    assert store.get("s1/notes.bin").content_type == "application/json"
    info = store.stat("s1/notes.bin")
    assert info is not None and info.content_type == "application/json"


def test_list_yields_the_keys_under_a_prefix(store: BlobStore) -> None:
    for key in ("s1/seg000000.ts", "s1/seg000001.ts", "s1/index.m3u8", "s10/seg000000.ts", "s2/x.ts"):
        store.put(key, b"x", content_type_for(key))

    assert sorted(store.list("s1/")) == ["s1/index.m3u8", "s1/seg000000.ts", "s1/seg000001.ts"]
    assert sorted(store.list("s1/seg")) == ["s1/seg000000.ts", "s1/seg000001.ts"]
    assert sorted(store.list("s1")) == [
        "s1/index.m3u8",
        "s1/seg000000.ts",
        "s1/seg000001.ts",
        "s10/seg000000.ts",
    ]
    assert len(list(store.list(""))) == 5
    assert list(store.list("nothing/")) == []


def test_delete_removes_one_blob_and_a_missing_one_is_fine(store: BlobStore) -> None:
    store.put("s1/seg000000.ts", b"x", "video/mp2t")
    store.put("s1/seg000001.ts", b"y", "video/mp2t")

    store.delete("s1/seg000000.ts")
    store.delete("s1/seg000000.ts")
    store.delete("never/was.ts")

    assert sorted(store.list("s1/")) == ["s1/seg000001.ts"]


def test_delete_prefix_removes_a_recording_and_counts_it(store: BlobStore) -> None:
    for key in ("s1/seg000000.ts", "s1/index.m3u8", "s1/thumbs/e1.jpg", "s10/seg000000.ts"):
        store.put(key, b"x", content_type_for(key))

    assert store.delete_prefix("s1/") == 3
    assert store.delete_prefix("s1/") == 0
    assert list(store.list("")) == ["s10/seg000000.ts"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused_by_every_method(store: BlobStore, key: str) -> None:
    calls = [
        lambda: store.put(key, b"x", "video/mp2t"),
        lambda: store.get(key),
        lambda: store.stat(key),
        lambda: store.delete(key),
    ]
    for call in calls:
        with pytest.raises(BlobKeyError):
            call()


@pytest.mark.parametrize("prefix", ["../", "/abs/", "a/../", "a\\b"])
def test_unsafe_prefixes_are_refused(store: BlobStore, prefix: str) -> None:
    with pytest.raises(BlobKeyError):
        list(store.list(prefix))
    with pytest.raises(BlobKeyError):
        store.delete_prefix(prefix)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("s/seg000000.ts", "video/mp2t"),
        ("s/seg000000.m4s", "video/mp4"),
        ("s/init.mp4", "video/mp4"),
        ("s/seg000000.aac", "audio/aac"),
        ("s/index.m3u8", "application/vnd.apple.mpegurl"),
        ("s/thumbs/e.jpg", "image/jpeg"),
        ("s/unknown.xyz", "application/octet-stream"),
        ("s/noext", "application/octet-stream"),
    ],
)
def test_content_types_of_recording_files(store: BlobStore, key: str, expected: str) -> None:
    assert content_type_for(key) == expected
    store.put(key, b"x", content_type_for(key))

    assert store.get(key).content_type == expected


# ---------------------------------------------------------------------- key validation


@pytest.mark.parametrize("key", ["s1/seg000000.ts", "a-b_c.D/e.f", "x"])
def test_safe_keys_pass_validation(key: str) -> None:
    assert validate_key(key) == key


def test_a_key_error_names_the_key_and_backend() -> None:
    with pytest.raises(BlobKeyError) as raised:
        validate_key("../etc/passwd", backend="local")

    assert "../etc/passwd" in str(raised.value) and "local" in str(raised.value)


# ---------------------------------------------------------------------- local backend


def test_local_refuses_a_symlink_leading_outside_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.ts").write_bytes(b"secret")
    root = tmp_path / "blobs"
    root.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "s1").mkdir()
    (root / "s1" / "seg000000.ts").symlink_to(outside / "secret.ts")
    store = LocalBlobStore(root)

    for key in ("escape/secret.ts", "s1/seg000000.ts"):
        with pytest.raises(BlobKeyError):
            store.get(key)
        with pytest.raises(BlobKeyError):
            store.put(key, b"overwrite", "video/mp2t")
        with pytest.raises(BlobKeyError):
            store.delete(key)
    assert list(store.list("")) == []  # symlinks are not followed when listing
    store.delete_prefix("")
    assert (outside / "secret.ts").read_bytes() == b"secret"


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put("s1/seg000000.ts", b"a", "video/mp2t")
    store.put("s1/seg000000.ts", b"b", "video/mp2t")

    assert sorted(os.listdir(tmp_path / "s1")) == ["seg000000.ts"]


def test_local_delete_prefix_removes_the_emptied_directories(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put("s1/thumbs/e.jpg", b"x", "image/jpeg")
    store.put("s1/odd.bin", b"x", "text/plain")

    store.delete_prefix("s1/")

    assert not (tmp_path / "s1").exists()
    assert not (tmp_path / ".content-types" / "s1").exists()


def test_local_list_survives_a_directory_deleted_while_it_lists(tmp_path: Path) -> None:
    """A purge in another process can remove a directory between the walk seeing it and
    entering it: the listing goes on without it instead of failing as if the disk were gone."""
    store = LocalBlobStore(tmp_path)
    for key in ("s1/a/seg000000.ts", "s1/a/seg000001.ts", "s1/b/seg000000.ts"):
        store.put(key, b"x", "video/mp2t")
    listing = store.list("s1/")
    first = next(listing)  # the walk is inside s1/a now and has seen s1/b, not entered it
    shutil.rmtree(tmp_path / "s1" / "b")

    assert [first, *listing] == ["s1/a/seg000000.ts", "s1/a/seg000001.ts"]


def test_local_disk_errors_are_store_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a directory")
    store = LocalBlobStore(tmp_path / "file")

    with pytest.raises(BlobStoreUnavailable) as raised:
        store.put("s1/seg000000.ts", b"x", "video/mp2t")

    assert "s1/seg000000.ts" in str(raised.value)


# ---------------------------------------------------------------------- S3 backend


def test_s3_lists_and_deletes_past_one_page(s3_server: S3TestServer) -> None:
    with dummy_aws_credentials():
        store = s3_server.store()
        keys = [f"big/seg{i:06d}.ts" for i in range(1005)]
        for key in keys:
            store.put(key, b"", "video/mp2t")

        assert sorted(store.list("big/")) == keys  # two ListObjectsV2 pages
        assert store.delete_prefix("big/") == 1005  # two DeleteObjects batches
        assert list(store.list("big/")) == []


def test_s3_keys_live_under_the_prefix_in_the_bucket(s3_server: S3TestServer) -> None:
    with dummy_aws_credentials():
        store = s3_server.store("stack-a/")
        store.put("s1/seg000000.ts", b"x", "video/mp2t")

        assert s3_server.object_names("stack-a/") == ["stack-a/s1/seg000000.ts"]
        assert list(store.list("")) == ["s1/seg000000.ts"]
        store.delete_prefix("")


def test_s3_an_unreachable_server_is_a_store_error(s3_server: S3TestServer) -> None:
    with dummy_aws_credentials():
        # Port 9 (discard) on loopback: nothing listens there.
        store = S3BlobStore("bucket", endpoint_url="http://127.0.0.1:9", path_style=True, connect_timeout=1)
        with pytest.raises(BlobStoreUnavailable) as raised:
            store.put("s1/seg000000.ts", b"x", "video/mp2t")

    assert "s1/seg000000.ts" in str(raised.value) and "s3" in str(raised.value)


def test_s3_a_missing_bucket_is_a_store_error(s3_server: S3TestServer) -> None:
    with dummy_aws_credentials():
        store = S3BlobStore("no-such-bucket", endpoint_url=s3_server.endpoint_url, path_style=True)
        with pytest.raises(BlobStoreUnavailable):
            store.put("s1/seg000000.ts", b"x", "video/mp2t")


# ---------------------------------------------------------------------- settings


def test_settings_default_to_ingests_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest.settings import IngestSettings

    monkeypatch.delenv("LIVESTREAM_INGEST_STORAGE_DIR", raising=False)
    monkeypatch.delenv("LIVESTREAM_STORAGE_LOCAL_DIR", raising=False)

    assert BlobStoreSettings().local_dir == DEFAULT_LOCAL_DIR == IngestSettings().storage_dir


def test_settings_accept_the_ingest_variable_and_prefer_their_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LIVESTREAM_INGEST_STORAGE_DIR", str(tmp_path / "ingest"))
    assert BlobStoreSettings().local_dir == tmp_path / "ingest"

    monkeypatch.setenv("LIVESTREAM_STORAGE_LOCAL_DIR", str(tmp_path / "own"))
    assert BlobStoreSettings().local_dir == tmp_path / "own"


def test_settings_s3_needs_a_bucket() -> None:
    with pytest.raises(ValidationError, match="S3_BUCKET"):
        BlobStoreSettings(backend="s3")


def test_settings_refuse_a_prefix_without_its_slash() -> None:
    with pytest.raises(ValidationError):
        BlobStoreSettings(backend="s3", s3_bucket="recordings", s3_prefix="stack")


def test_settings_are_frozen() -> None:
    settings = BlobStoreSettings()
    with pytest.raises(ValidationError):
        settings.backend = "s3"  # type: ignore[misc]


def test_open_blob_store_builds_the_configured_backend(tmp_path: Path, s3_server: S3TestServer) -> None:
    local = open_blob_store(BlobStoreSettings(local_dir=tmp_path))
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path

    with dummy_aws_credentials():
        settings = BlobStoreSettings(
            backend="s3",
            s3_bucket=s3_server.bucket,
            s3_prefix="opened/",
            s3_endpoint_url=s3_server.endpoint_url,
            s3_region="us-east-1",
            s3_path_style=True,
        )
        remote = open_blob_store(settings)
        remote.put("k.ts", b"x", "video/mp2t")

    assert isinstance(remote, S3BlobStore)
    assert s3_server.object_names("opened/") == ["opened/k.ts"]
