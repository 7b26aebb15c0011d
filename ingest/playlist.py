"""M3U8 parsing (RFC 8216): master playlists (variants) and media playlists (segments).

Only what ingest needs is modelled; unknown tags are ignored, as the spec asks of clients.
Segment URIs are resolved against the playlist URL, so callers always get absolute URLs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urljoin

from ingest.errors import PlaylistError

# Attribute lists: KEY=value pairs where a quoted value may contain commas.
_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


@dataclass(frozen=True)
class Variant:
    """One ``#EXT-X-STREAM-INF`` entry of a master playlist."""

    uri: str
    bandwidth: int
    resolution: tuple[int, int] | None = None
    codecs: str | None = None


@dataclass(frozen=True)
class MasterPlaylist:
    url: str
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class Segment:
    """One media segment; ``program_date_time`` is explicit or extrapolated from an earlier one."""

    media_sequence: int
    uri: str
    duration: float
    discontinuity: bool = False
    program_date_time: datetime | None = None


@dataclass(frozen=True)
class MediaPlaylist:
    url: str
    target_duration: float
    media_sequence: int
    segments: tuple[Segment, ...]
    ended: bool = False
    playlist_type: str | None = None  # "VOD", "EVENT" or None (live sliding window)

    @property
    def is_vod(self) -> bool:
        return self.ended or self.playlist_type == "VOD"

    @property
    def last_media_sequence(self) -> int | None:
        return self.segments[-1].media_sequence if self.segments else None


def parse_attributes(text: str) -> dict[str, str]:
    """``BANDWIDTH=1280000,CODECS="avc1,mp4a"`` -> ``{"BANDWIDTH": "1280000", "CODECS": "avc1,mp4a"}``."""
    return {key: value.strip('"') for key, value in _ATTRIBUTE.findall(text)}


def parse_playlist(text: str, url: str) -> MasterPlaylist | MediaPlaylist:
    """Parse one M3U8 document fetched from ``url``; raise ``PlaylistError`` when it is not one."""
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    lines = [line for line in lines if line]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError(f"not an M3U8 playlist ({_describe(text)})", url=url)
    if any(line.startswith("#EXT-X-STREAM-INF") for line in lines):
        return _parse_master(lines, url)
    return _parse_media(lines, url)


def _describe(text: str) -> str:
    """What a non-playlist body looks like, readable in a status reason."""
    head = text.strip()[:60]
    if not head:
        return "empty response"
    if any(not (ch.isprintable() or ch.isspace()) or ch == "\ufffd" for ch in head):
        return f"binary content, {len(text)} characters"
    return f"starts with {head.splitlines()[0]!r}"


def _parse_master(lines: list[str], url: str) -> MasterPlaylist:
    variants: list[Variant] = []
    pending: dict[str, str] | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = parse_attributes(line.split(":", 1)[1])
        elif line.startswith("#"):
            continue
        elif pending is not None:
            variants.append(_variant(pending, urljoin(url, line), url))
            pending = None
    if not variants:
        raise PlaylistError("master playlist lists no variant URI", url=url)
    return MasterPlaylist(url=url, variants=tuple(variants))


def _variant(attributes: dict[str, str], uri: str, url: str) -> Variant:
    try:
        bandwidth = int(attributes["BANDWIDTH"])
    except (KeyError, ValueError) as exc:
        raise PlaylistError("variant without a valid BANDWIDTH", url=url, variant=uri) from exc
    resolution = None
    if "RESOLUTION" in attributes:
        width, _, height = attributes["RESOLUTION"].lower().partition("x")
        if width.isdigit() and height.isdigit():
            resolution = (int(width), int(height))
    return Variant(uri=uri, bandwidth=bandwidth, resolution=resolution, codecs=attributes.get("CODECS"))


def _parse_media(lines: list[str], url: str) -> MediaPlaylist:
    target_duration: float | None = None
    first_sequence = 0
    playlist_type: str | None = None
    ended = False
    segments: list[Segment] = []
    duration: float | None = None
    discontinuity = False
    explicit_date: datetime | None = None
    next_date: datetime | None = None  # extrapolated PROGRAM-DATE-TIME of the next segment
    for number, line in enumerate(lines[1:], start=2):
        tag, _, value = line.partition(":")
        try:
            if tag == "#EXT-X-TARGETDURATION":
                target_duration = float(value)
            elif tag == "#EXT-X-MEDIA-SEQUENCE":
                first_sequence = int(value)
            elif tag == "#EXT-X-PLAYLIST-TYPE":
                playlist_type = value.strip().upper()
            elif tag == "#EXT-X-ENDLIST":
                ended = True
            elif tag == "#EXTINF":
                duration = float(value.split(",", 1)[0])
                if duration < 0:
                    raise ValueError("negative duration")
            elif tag == "#EXT-X-DISCONTINUITY":
                discontinuity = True
                next_date = None  # dates do not carry across a discontinuity
            elif tag == "#EXT-X-PROGRAM-DATE-TIME":
                explicit_date = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            elif line.startswith("#"):
                continue
            else:
                if duration is None:
                    raise ValueError("segment URI without #EXTINF")
                date = explicit_date or next_date
                segments.append(
                    Segment(
                        media_sequence=first_sequence + len(segments),
                        uri=urljoin(url, line),
                        duration=duration,
                        discontinuity=discontinuity,
                        program_date_time=date,
                    )
                )
                next_date = date + timedelta(seconds=duration) if date is not None else None
                duration, discontinuity, explicit_date = None, False, None
        except ValueError as exc:
            raise PlaylistError(f"malformed line {number} {line[:60]!r}: {exc}", url=url) from exc
    if target_duration is None:
        raise PlaylistError("media playlist without #EXT-X-TARGETDURATION", url=url)
    if target_duration <= 0:
        raise PlaylistError(f"non-positive #EXT-X-TARGETDURATION {target_duration}", url=url)
    return MediaPlaylist(
        url=url,
        target_duration=target_duration,
        media_sequence=first_sequence,
        segments=tuple(segments),
        ended=ended,
        playlist_type=playlist_type,
    )


def choose_variant(master: MasterPlaylist, max_bandwidth: int | None = None) -> Variant:
    """Policy: the highest BANDWIDTH not above ``max_bandwidth``; the lowest one if all are above.

    Detection quality grows with resolution, and frames are downscaled anyway, so the best
    stream the operator allows is the right default; ties go to the larger resolution.
    """

    def rank(variant: Variant) -> tuple[int, int]:
        pixels = variant.resolution[0] * variant.resolution[1] if variant.resolution else 0
        return variant.bandwidth, pixels

    allowed = [v for v in master.variants if max_bandwidth is None or v.bandwidth <= max_bandwidth]
    if allowed:
        return max(allowed, key=rank)
    return min(master.variants, key=rank)
