"""Signed playback URLs and the pure parts of the playback routes (no Kafka, no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest
from pydantic import ValidationError

from api.errors import RangeNotSatisfiable, SignatureExpired, SignatureInvalid
from api.playback import complete_lines, has_segment, parse_range, recording_key, signed_playlist
from api.settings import ApiSettings
from api.signing import PlaybackSigner
from ingest.storage import directory_name

SECRET = b"s" * 32
OTHER = b"o" * 32
NOW = 1_800_000_000.0
SESSION = "0123456789abcdef0123456789abcdef"


class Clock:
    """A settable clock for the signer."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signer(clock: Clock, secret: bytes = SECRET, **kwargs: object) -> PlaybackSigner:
    return PlaybackSigner(secret=secret, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_a_signature_verifies_for_its_session_path_and_expiry() -> None:
    clock = Clock()
    signed = signer(clock).sign(SESSION, "index.m3u8")
    assert signed.expires == NOW + 3600
    assert signed.expires_at == datetime.fromtimestamp(NOW + 3600, UTC)
    assert parse_qs(signed.query()) == {"expires": [str(signed.expires)], "sig": [signed.signature]}
    assert (
        signer(clock).verify(SESSION, "index.m3u8", str(signed.expires), signed.signature) == signed.expires
    )


def test_expiry_follows_the_configured_ttl() -> None:
    assert signer(Clock(), ttl_s=90.5).sign(SESSION, "index.m3u8").expires == NOW + 91


@pytest.mark.parametrize(
    ("session_id", "path", "expires_delta", "mangle"),
    [
        ("fedcba9876543210fedcba9876543210", "index.m3u8", 0, False),  # another session
        (SESSION, "seg000001.ts", 0, False),  # another file
        (SESSION, "index.m3u8", 1, False),  # extended expiry
        (SESSION, "index.m3u8", 0, True),  # altered signature
    ],
)
def test_tampered_urls_are_refused(session_id: str, path: str, expires_delta: int, mangle: bool) -> None:
    clock = Clock()
    signed = signer(clock).sign(SESSION, "index.m3u8")
    signature = signed.signature
    if mangle:
        signature = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(SignatureInvalid):
        signer(clock).verify(session_id, path, str(signed.expires + expires_delta), signature)


@pytest.mark.parametrize(
    ("expires", "signature"),
    [
        (None, "x" * 43),
        ("1800003600", None),
        ("-1", "x" * 43),
        ("18e8", "x" * 43),
        ("1" * 40, "x" * 43),
        ("1800003600", "x" * 44),
        ("1800003600", ""),
    ],
)
def test_missing_or_malformed_signatures_are_refused(expires: str | None, signature: str | None) -> None:
    with pytest.raises(SignatureInvalid):
        signer(Clock()).verify(SESSION, "index.m3u8", expires, signature)


def test_a_path_with_a_newline_cannot_forge_another_message() -> None:
    clock = Clock()
    signed = signer(clock).sign(SESSION, "index.m3u8")
    with pytest.raises(SignatureInvalid):
        signer(clock).verify(SESSION, "index.m3u8\n", str(signed.expires), signed.signature)


def test_an_expired_url_is_refused_as_expired() -> None:
    clock = Clock()
    signed = signer(clock, ttl_s=60).sign(SESSION, "seg000000.ts")
    clock.now = NOW + 59
    assert signer(clock).verify(SESSION, "seg000000.ts", signed.expires, signed.signature) == signed.expires
    clock.now = NOW + 60
    with pytest.raises(SignatureExpired):
        signer(clock).verify(SESSION, "seg000000.ts", signed.expires, signed.signature)


def test_another_secret_refuses_the_signature() -> None:
    clock = Clock()
    signed = signer(clock, OTHER).sign(SESSION, "index.m3u8")
    with pytest.raises(SignatureInvalid):
        signer(clock).verify(SESSION, "index.m3u8", signed.expires, signed.signature)


def test_the_previous_secret_is_accepted_until_its_instant_only() -> None:
    clock = Clock()
    old = signer(clock, OTHER, ttl_s=7200).sign(SESSION, "index.m3u8")
    rotated = signer(clock, previous_secret=OTHER, previous_valid_until=NOW + 600)
    assert rotated.verify(SESSION, "index.m3u8", old.expires, old.signature) == old.expires
    # New URLs are signed with the current secret only.
    fresh = rotated.sign(SESSION, "index.m3u8")
    with pytest.raises(SignatureInvalid):
        signer(clock, OTHER).verify(SESSION, "index.m3u8", fresh.expires, fresh.signature)
    clock.now = NOW + 600
    with pytest.raises(SignatureInvalid):
        rotated.verify(SESSION, "index.m3u8", old.expires, old.signature)
    # A previous secret without an instant is never accepted.
    clock.now = NOW
    with pytest.raises(SignatureInvalid):
        signer(clock, previous_secret=OTHER).verify(SESSION, "index.m3u8", old.expires, old.signature)


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PlaybackSigner(secret=b"short")


def test_settings_rotation_needs_an_aware_instant_and_long_secrets() -> None:
    key = "k" * 32
    with pytest.raises(ValidationError, match="VALID_UNTIL"):
        ApiSettings(keys=key, playback_previous_secret="p" * 16)
    with pytest.raises(ValidationError, match="time zone"):
        ApiSettings(
            keys=key,
            playback_previous_secret="p" * 16,
            playback_previous_secret_valid_until="2030-01-01T00:00:00",
        )
    with pytest.raises(ValidationError, match="at least 16"):
        ApiSettings(keys=key, playback_secret="short")
    settings = ApiSettings(
        keys=key,
        playback_secret="c" * 16,
        playback_previous_secret="p" * 16,
        playback_previous_secret_valid_until="2030-01-01T00:00:00Z",
        public_base_url="https://video.example.com/",
    )
    assert settings.playback_previous_secret_valid_until == datetime(2030, 1, 1, tzinfo=UTC)
    assert settings.public_base_url == "https://video.example.com"
    assert settings.playback_url_ttl_s == 3600


# --------------------------------------------------------------------------- playlists

MANIFEST = """#EXTM3U
#EXT-X-VERSION:8
#EXT-X-PLAYLIST-TYPE:EVENT
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-PROGRAM-DATE-TIME:2026-11-29T01:00:00.000Z
#EXTINF:2.000000,
seg000000.ts
#EXT-X-DISCONTINUITY
#EXT-X-GAP
#EXTINF:4.000000,
gap000001.ts
#EXTINF:2.000000,
seg000002.ts
"""


def sign_for_test(name: str) -> str:
    return f"{name}?sig=x"


def test_playlist_signs_media_uris_and_passes_tags_through() -> None:
    out = signed_playlist(MANIFEST, sign_for_test, ended=False)
    lines = out.splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        "seg000000.ts?sig=x",
        "gap000001.ts?sig=x",
        "seg000002.ts?sig=x",
    ]
    assert [line for line in lines if line.startswith("#")] == [
        line for line in MANIFEST.splitlines() if line.startswith("#")
    ]
    assert "#EXT-X-ENDLIST" not in out


def test_playlist_ends_when_the_manifest_or_the_session_says_so() -> None:
    assert signed_playlist(MANIFEST, sign_for_test, ended=True).endswith(
        "seg000002.ts?sig=x\n#EXT-X-ENDLIST\n"
    )
    finished = MANIFEST + "#EXT-X-ENDLIST\n"
    assert signed_playlist(finished, sign_for_test, ended=False).count("#EXT-X-ENDLIST") == 1
    assert signed_playlist(finished, sign_for_test, ended=True).count("#EXT-X-ENDLIST") == 1


def test_a_manifest_caught_mid_append_loses_its_unfinished_entry() -> None:
    partial = MANIFEST + "#EXT-X-DISCONTINUITY\n#EXTINF:2.000000,\nseg0000"
    assert complete_lines(partial)[-1] == "seg000002.ts"
    out = signed_playlist(partial, sign_for_test, ended=True)
    assert out.endswith("seg000002.ts?sig=x\n#EXT-X-ENDLIST\n")


def test_a_recording_has_a_segment_only_once_a_non_gap_entry_is_listed() -> None:
    header = "#EXTM3U\n#EXT-X-VERSION:8\n#EXT-X-TARGETDURATION:2\n"
    assert not has_segment("")
    assert not has_segment(header)
    assert not has_segment(header + "#EXT-X-GAP\n#EXTINF:2.0,\ngap000000.ts\n")
    assert not has_segment(header + "#EXTINF:2.0,\nseg000000")  # still being written
    assert has_segment(header + "#EXT-X-GAP\n#EXTINF:2.0,\ngap000000.ts\n#EXTINF:2.0,\nseg000001.ts\n")


def test_recording_keys_stay_in_the_session_directory() -> None:
    assert recording_key(SESSION, "seg000001.ts") == f"{SESSION}/seg000001.ts"
    # A path-like id is flattened into one directory name (ingest's layout), never a path.
    for hostile in ("../etc", "a/b", "..", "/abs", "a\\b"):
        key = recording_key(hostile, "seg000001.ts")
        assert key == f"{directory_name(hostile)}/seg000001.ts"
        directory = key.split("/")[0]
        assert key.count("/") == 1 and directory not in ("", ".", ".."), key


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=-100", (900, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes = 5-9", (5, 9)),
        ("bytes=9-5", None),  # reversed: ignored, the whole file
        ("bytes=0-1,5-9", None),  # several ranges: ignored
        ("items=0-9", None),  # another unit: ignored
        ("bytes=-", None),
        ("bytes=a-b", None),
    ],
)
def test_range_headers(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=1000-", 1000), ("bytes=-0", 1000), ("bytes=0-", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as excinfo:
        parse_range(header, size)
    assert excinfo.value.size == size
