"""HLS playlists of the test source: a sliding-window live media playlist and its master playlist.

:class:`SlidingWindowPlaylist` is pure state (segments in, M3U8 text out); :func:`write_atomic`
is the one piece of file I/O, so a client polling the playlist never reads a half-written one.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from livestream.testsource.errors import TestSourceError

MEDIA_PLAYLIST_NAME = "live.m3u8"
MASTER_PLAYLIST_NAME = "master.m3u8"


def segment_name(sequence: int) -> str:
    return f"segment_{sequence:06d}.ts"


@dataclass(frozen=True)
class PlaylistSegment:
    sequence: int  # media sequence number
    uri: str  # relative to the playlist
    duration: float  # seconds (EXTINF)
    program_date_time: datetime | None = None  # wall-clock time of its first frame


class SlidingWindowPlaylist:
    """A live media playlist listing the last ``window`` segments.

    ``#EXT-X-MEDIA-SEQUENCE`` is the sequence number of the oldest listed segment, so it
    advances as segments drop out of the window; :meth:`end` appends ``#EXT-X-ENDLIST``.
    """

    def __init__(self, window: int, target_duration: float) -> None:
        if window < 1:
            raise TestSourceError("playlist window must be at least one segment", window=window)
        self.window = window
        # Target duration: integer seconds >= every EXTINF (rounded, per RFC 8216 4.3.3.1).
        self.target_duration = max(1, math.ceil(target_duration - 1e-9))
        self.segments: deque[PlaylistSegment] = deque(maxlen=window)
        self.ended = False

    def add(self, segment: PlaylistSegment) -> PlaylistSegment | None:
        """Lists ``segment``; returns the segment that dropped out of the window, if any."""
        if self.ended:
            raise TestSourceError("cannot add segments to an ended playlist", sequence=segment.sequence)
        if self.segments and segment.sequence != self.segments[-1].sequence + 1:
            raise TestSourceError(
                "segments must be added in sequence",
                sequence=segment.sequence,
                last=self.segments[-1].sequence,
            )
        dropped = self.segments[0] if len(self.segments) == self.window else None
        self.segments.append(segment)
        self.target_duration = max(self.target_duration, math.ceil(segment.duration - 1e-9))
        return dropped

    def end(self) -> None:
        self.ended = True

    @property
    def media_sequence(self) -> int:
        return self.segments[0].sequence if self.segments else 0

    def render(self) -> str:
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{self.target_duration}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.media_sequence}",
        ]
        for segment in self.segments:
            if segment.program_date_time is not None:
                stamp = segment.program_date_time.isoformat(timespec="milliseconds")
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{stamp}")
            lines.append(f"#EXTINF:{segment.duration:.3f},")
            lines.append(segment.uri)
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


def render_master_playlist(
    media_playlist_uri: str, width: int, height: int, fps: int, bandwidth: int = 1_000_000
) -> str:
    """A master playlist with one variant: the media playlist (H.264 Constrained Baseline 3.0)."""
    return (
        "#EXTM3U\n"
        "#EXT-X-VERSION:3\n"
        f"#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={width}x{height},FRAME-RATE={fps:.3f},"
        'CODECS="avc1.42c01e"\n'
        f"{media_playlist_uri}\n"
    )


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` via a temp file in the same folder and a rename: readers see old or new, never half."""
    payload = data.encode() if isinstance(data, str) else data
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            temp_file.write(payload)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
