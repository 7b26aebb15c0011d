"""Local copy of every fetched segment, with a growing playback manifest per session.

Layout: ``<storage_dir>/<session_id>/index.m3u8`` plus ``seg000000.ts``, ``seg000001.ts``...
numbered in ingest order (the source's media sequence may reset). The manifest is an EVENT
playlist rewritten atomically after each segment, with ``#EXT-X-ENDLIST`` once the session
ends. Segments we missed or could not fetch are written as ``#EXT-X-GAP`` entries of their
duration, so playback time equals the session's stream time.

A resumed session (see ``checkpoint``) reopens its directory and keeps the manifest entries its
checkpoint counted (later ones belong to media it ingests again); on another machine, or if
the manifest is gone, the stream time before the resume point is listed as one gap.

Blocking file I/O: the async session calls these methods through ``asyncio.to_thread``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ingest.errors import StorageError

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


def directory_name(session_id: str) -> str:
    """The session's directory name: its id, with anything path-like replaced by ``_``."""
    name = _UNSAFE_CHARACTERS.sub("_", session_id)[:200]
    return name if name.strip(".") else f"_{name}"


@dataclass(frozen=True)
class _Entry:
    uri: str
    duration: float
    discontinuity: bool
    gap: bool


def manifest_entries(text: str) -> list[_Entry]:
    """The entries of a manifest written by ``SegmentStore.render`` (in order)."""
    entries: list[_Entry] = []
    discontinuity = gap = False
    duration: float | None = None
    for line in (raw.strip() for raw in text.splitlines()):
        if line == "#EXT-X-DISCONTINUITY":
            discontinuity = True
        elif line == "#EXT-X-GAP":
            gap = True
        elif line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
        elif line and not line.startswith("#") and duration is not None:
            entries.append(_Entry(line, duration, discontinuity, gap))
            discontinuity = gap = False
            duration = None
    return entries


class SegmentStore:
    def __init__(self, storage_dir: Path, session_id: str) -> None:
        self.directory = Path(storage_dir) / directory_name(session_id)
        self.session_id = session_id
        self._entries: list[_Entry] = []
        self._ended = False
        self._count = 0

    @property
    def manifest_path(self) -> Path:
        return self.directory / "index.m3u8"

    @property
    def entry_count(self) -> int:
        return len(self._entries)

    def open(self, resume_entries: int | None = None, resume_duration: float = 0.0) -> None:
        """Create the directory and manifest; when resuming, keep the first ``resume_entries``
        entries of an existing manifest and pad it with a gap up to ``resume_duration``."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {self.directory}: {exc}", session_id=self.session_id) from exc
        if resume_entries is not None:
            try:
                text = self.manifest_path.read_text() if self.manifest_path.exists() else ""
            except OSError as exc:
                message = f"cannot read {self.manifest_path}: {exc}"
                raise StorageError(message, session_id=self.session_id) from exc
            self._entries = manifest_entries(text)[:resume_entries]
            self._count = len(self._entries)
            listed = sum(entry.duration for entry in self._entries)
            if resume_duration - listed > 1e-3:
                self._count += 1
                name = f"gap{self._count - 1:06d}.ts"
                self._entries.append(_Entry(name, resume_duration - listed, discontinuity=True, gap=True))
        self._write_manifest()

    def add_segment(self, data: bytes, duration: float, source_uri: str, discontinuity: bool = False) -> Path:
        """Store one segment's bytes and list it in the manifest; return its path."""
        suffix = Path(urlparse(source_uri).path).suffix.lower()
        if suffix not in {".ts", ".m4s", ".mp4", ".aac", ".m2ts"}:
            suffix = ".ts"
        path = self.directory / f"seg{self._count:06d}{suffix}"
        self._count += 1
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc}", session_id=self.session_id) from exc
        self._entries.append(_Entry(path.name, duration, discontinuity, gap=False))
        self._write_manifest()
        return path

    def add_gap(self, duration: float, discontinuity: bool = True) -> None:
        """A stretch of stream time we have no media for (missed or unfetchable segments)."""
        if duration <= 0:
            return
        name = f"gap{self._count:06d}.ts"
        self._count += 1
        self._entries.append(_Entry(name, duration, discontinuity, gap=True))
        self._write_manifest()

    def finish(self) -> None:
        """Append ``#EXT-X-ENDLIST``: the recording is complete."""
        self._ended = True
        self._write_manifest()

    def render(self) -> str:
        longest = max((e.duration for e in self._entries), default=1.0)
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:8" if any(e.gap for e in self._entries) else "#EXT-X-VERSION:3",
            "#EXT-X-PLAYLIST-TYPE:EVENT",
            f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest))}",
            "#EXT-X-MEDIA-SEQUENCE:0",
        ]
        for entry in self._entries:
            if entry.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if entry.gap:
                lines.append("#EXT-X-GAP")
            lines.append(f"#EXTINF:{entry.duration:.6f},")
            lines.append(entry.uri)
        if self._ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def _write_manifest(self) -> None:
        # Write-then-rename, so a player never reads a half-written manifest.
        temporary = self.manifest_path.with_suffix(".m3u8.tmp")
        try:
            temporary.write_text(self.render())
            os.replace(temporary, self.manifest_path)
        except OSError as exc:
            raise StorageError(
                f"cannot write {self.manifest_path}: {exc}", session_id=self.session_id
            ) from exc
