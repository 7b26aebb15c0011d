"""M3U8 parsing: master and media playlists, URI resolution, dates, errors."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urljoin

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import PlaylistError
from ingest.playlist import (
    MasterPlaylist,
    MediaPlaylist,
    Variant,
    _UriResolver,
    choose_variant,
    parse_playlist,
)

MASTER = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360,CODECS="avc1.42c01e,mp4a.40.2"
low/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2500000,RESOLUTION=1280x720
mid/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=6000000,RESOLUTION=1920x1080
https://cdn.example.com/high/index.m3u8
"""

LIVE = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:120
#EXT-X-PROGRAM-DATE-TIME:2024-05-01T12:00:00.000Z
#EXTINF:4.000,
seg120.ts
#EXTINF:3.5,
/abs/seg121.ts?token=a
#EXT-X-DISCONTINUITY
#EXTINF:4,title here
seg122.ts
"""


def test_master_playlist_variants_are_parsed_and_resolved() -> None:
    master = parse_playlist(MASTER, "http://origin.test/live/master.m3u8")
    assert isinstance(master, MasterPlaylist)
    assert [v.bandwidth for v in master.variants] == [800_000, 2_500_000, 6_000_000]
    assert master.variants[0] == Variant(
        uri="http://origin.test/live/low/index.m3u8",
        bandwidth=800_000,
        resolution=(640, 360),
        codecs="avc1.42c01e,mp4a.40.2",
    )
    assert master.variants[2].uri == "https://cdn.example.com/high/index.m3u8"


def test_choose_variant_takes_highest_bandwidth_under_the_cap() -> None:
    master = parse_playlist(MASTER, "http://origin.test/master.m3u8")
    assert isinstance(master, MasterPlaylist)
    assert choose_variant(master).bandwidth == 6_000_000
    assert choose_variant(master, max_bandwidth=3_000_000).resolution == (1280, 720)
    assert choose_variant(master, max_bandwidth=2_500_000).bandwidth == 2_500_000
    # Every variant above the cap: the cheapest one still plays.
    assert choose_variant(master, max_bandwidth=100).bandwidth == 800_000


def test_media_playlist_segments_sequence_durations_and_uris() -> None:
    playlist = parse_playlist(LIVE, "http://origin.test/live/index.m3u8")
    assert isinstance(playlist, MediaPlaylist)
    assert playlist.target_duration == 4
    assert playlist.media_sequence == 120
    assert not playlist.ended and not playlist.is_vod
    assert [s.media_sequence for s in playlist.segments] == [120, 121, 122]
    assert [s.duration for s in playlist.segments] == [4.0, 3.5, 4.0]
    assert [s.uri for s in playlist.segments] == [
        "http://origin.test/live/seg120.ts",
        "http://origin.test/abs/seg121.ts?token=a",
        "http://origin.test/live/seg122.ts",
    ]
    assert [s.discontinuity for s in playlist.segments] == [False, False, True]
    assert playlist.last_media_sequence == 122


def test_program_date_time_is_extrapolated_until_a_discontinuity() -> None:
    playlist = parse_playlist(LIVE, "http://origin.test/index.m3u8")
    assert isinstance(playlist, MediaPlaylist)
    first, second, third = playlist.segments
    assert first.program_date_time == datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert second.program_date_time == datetime(2024, 5, 1, 12, 0, 4, tzinfo=UTC)
    assert third.program_date_time is None


def test_endlist_and_vod_type() -> None:
    text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\n#EXT-X-ENDLIST\n"
    ended = parse_playlist(text, "http://x/p.m3u8")
    assert isinstance(ended, MediaPlaylist) and ended.ended and ended.is_vod
    assert ended.media_sequence == 0
    vod = parse_playlist("#EXTM3U\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-TARGETDURATION:2\n", "http://x/p.m3u8")
    assert isinstance(vod, MediaPlaylist) and vod.is_vod and not vod.ended and vod.segments == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not an HLS playlist: no #EXTM3U header \\(empty response\\)"),
        ("<!doctype html><html><body>hello</body></html>", "not an HLS playlist: no #EXTM3U header"),
        ("#EXTM3U\n#EXTINF:2,\na.ts\n", "without #EXT-X-TARGETDURATION"),
        (
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:abc,\na.ts\n",
            "line 3: #EXTINF duration is not a number",
        ),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:2\na.ts\n", "without #EXTINF"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:RESOLUTION=1x1\nv.m3u8\n", "BANDWIDTH"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n", "no variant"),
    ],
)
def test_invalid_playlists_raise_a_typed_error_with_the_url(text: str, message: str) -> None:
    with pytest.raises(PlaylistError, match=message) as caught:
        parse_playlist(text, "http://origin.test/bad.m3u8")
    assert caught.value.context["url"] == "http://origin.test/bad.m3u8"
    assert "url=http://origin.test/bad.m3u8" in str(caught.value)


# --------------------------------------------------------------------------- URI resolution

_BASES = st.one_of(
    st.sampled_from(
        [
            "http://127.0.0.1:8080/live/stream.m3u8",
            "https://cdn.example.test/a/b/../c/./index.m3u8?token=x#frag",
            "http://[::1]:9000/live.m3u8",
            "http://host/",
            "http://host",
            "http://host/dir/",
            "http://host/a/b/c.m3u8;params?q=1",
            "rtmp://host/app/stream",
            "file:///srv/hls/live.m3u8",
            "relative/path.m3u8",
        ]
    ),
    st.builds(
        lambda scheme, path, query: f"{scheme}://origin.test{path}{query}",
        st.sampled_from(["http", "https", "HTTP"]),
        st.from_regex(r"(/[A-Za-z0-9._~%-]{0,8}){0,4}", fullmatch=True),
        st.sampled_from(["", "?a=b", "?", "#x", "?a=b#x"]),
    ),
)
_URIS = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.~%+,=@-]{1,12}(\?[A-Za-z0-9_.~%+,=@&;/:-]{0,10})?", fullmatch=True),
    st.text(alphabet="ab./?#:%@-_~", min_size=1, max_size=12),
    st.sampled_from([".", "..", "../x.ts", "./x.ts", "/abs.ts", "//other.test/x.ts", "?q", "#f", "x:y.ts"]),
)


@given(base=_BASES, uri=_URIS)
def test_segment_uris_resolve_exactly_as_urljoin_does(base: str, uri: str) -> None:
    resolve = _UriResolver(base)
    assert resolve(uri, 1) == urljoin(base, uri)


def test_a_media_playlist_resolves_plain_and_other_uris() -> None:
    text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + "".join(
        f"#EXTINF:2.0,\n{uri}\n"
        for uri in ("seg_1.ts", "seg_2.ts?t=a", "../up/seg_3.ts", "//cdn.test/seg_4.ts")
    )
    playlist = parse_playlist(text, "https://origin.test/live/a/index.m3u8?token=x")
    assert isinstance(playlist, MediaPlaylist)
    assert [s.uri for s in playlist.segments] == [
        "https://origin.test/live/a/seg_1.ts",
        "https://origin.test/live/a/seg_2.ts?t=a",
        "https://origin.test/live/up/seg_3.ts",
        "https://cdn.test/seg_4.ts",
    ]
