"""Local copy of every fetched segment, with a playback manifest per session, within caps.

Layout: ``<storage_dir>/<session_id>/index.m3u8`` plus ``seg000000.ts``, ``seg000001.ts``...
numbered in ingest order (the source's media sequence may reset). Segments we missed or could
not fetch are written as ``#EXT-X-GAP`` entries of their duration, so playback time equals the
session's stream time.

The manifest is an EVENT playlist that is opened once and appended to: one write per entry,
flushed, and ``#EXT-X-ENDLIST`` appended once the session ends. It is rewritten whole
(write-then-rename, so a player never reads a half-rewritten file) only when

* its header must change: a longer entry raises ``#EXT-X-TARGETDURATION``, or the first gap
  needs ``#EXT-X-VERSION:8`` (a few times per session at most);
* a session resumes (see ``checkpoint``): it keeps the manifest entries its checkpoint counted
  (later ones belong to media it ingests again, whose files are deleted); on another machine,
  or if the manifest is gone, the stream time before the resume point is listed as one gap;
* pruning deleted segment files (below).

Retention (``RecordingLimits``): a session's segment files are capped in bytes and in age, and
all recordings under the storage directory together are capped in bytes. Past a cap the oldest
segment files are deleted first, in one batch down to ``PRUNE_TO_FRACTION`` of the cap, so the
manifest rewrite that follows is rare. A deleted segment's entry stays in the manifest, as an
``#EXT-X-GAP`` entry of the same duration and name: the stream-time position of every later
segment (where events are placed) does not move, and the entry counts that checkpoints hold stay
valid. A recording still being written keeps its newest segment, so a cap smaller than one
segment does not empty it: the caps may be exceeded by at most that segment. The per-session caps
are checked as a session adds segments; the total cap whenever any recording grows, across every
recording of the directory, finished ones included.

The total is a running count kept by ``RecordingStorage`` (one per ingest service, which must be
the only writer of its storage directory): one scan of the directory at start-up, then every
write and deletion adjusts it. Only segment files count; manifests are small.

Wall clock: ``#EXT-X-PROGRAM-DATE-TIME`` precedes a segment's entry when the session knows when
the segment started (the source's own PROGRAM-DATE-TIME, else ingest's wall clock at fetch: the
same base the chunks' wall-clock times use) and the player needs it: at the start of a recording
(and of a resumed one), after a gap and at a discontinuity. Between those, players extrapolate
from the durations, which is what stream time does too.

Blob store (``livestream.blobstore``, ``LIVESTREAM_STORAGE_*``): the directory above is ingest's
working copy. With the local backend it *is* the blob store (its root is this directory), so
nothing is copied. With the S3 backend every change is mirrored to the bucket, under the same
keys (``<session_dir>/segNNNNNN.ts``, ``<session_dir>/index.m3u8``): a segment is uploaded when
added, the manifest is uploaded whole after each change (objects cannot be appended to), pruned
segments are deleted and a purge deletes the recording's prefix. The bucket never lists a segment
before it holds it: the manifest is uploaded only once every segment it lists is. An upload that
fails (after boto3's retries) does not fail the session: the change stays pending, is retried
with the next change (not sooner than ``MIRROR_RETRY_S``), and ``open`` reconciles the bucket
with the kept entries when a session (re)starts. Changes still pending when the process stops
are lost for a recording that is not resumed (a finished one): its bucket copy may then lack its
last segments or ``#EXT-X-ENDLIST`` (the API ends the playlist of an ended session itself).

Known limit of the S3 backend: the manifest upload costs O(entries) bytes per segment, so a
session's upload traffic for manifests grows quadratically with its length (a 24 h session of 2 s
segments lists 43,200 entries, about 2 MB per upload at the end). Fine for the sessions this
system runs (hours); days-long sessions would want a sliding or chunked manifest.

Blocking file I/O: the async code calls every method that touches files through
``asyncio.to_thread``. Sessions run concurrently, so a store guards its state with a lock, and the
total-cap pruning (which may touch any store) takes one store lock at a time and is never called
with one held, so locks cannot deadlock.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlparse

from ingest.errors import StorageError
from livestream.blobstore import BlobStore, BlobStoreError, content_type_for, open_blob_store
from livestream.blobstore.settings import BlobStoreSettings

if TYPE_CHECKING:
    from ingest.settings import IngestSettings

log = logging.getLogger(__name__)

MANIFEST_NAME = "index.m3u8"
ENDLIST = "#EXT-X-ENDLIST"
PROGRAM_DATE_TIME = "#EXT-X-PROGRAM-DATE-TIME:"
# After a failed upload to the blob store, pending changes wait at least this long (monotonic
# seconds) before the next try, so an unreachable bucket does not slow every segment down.
MIRROR_RETRY_S = 10.0
# Pruning past a cap goes down to this fraction of it, so pruning (and the manifest rewrite it
# needs) happens once per tenth of the cap rather than once per segment.
PRUNE_TO_FRACTION = 0.9

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
_SEGMENT_FILE = re.compile(r"^seg\d{6,}\.[A-Za-z0-9]+$")
_SEGMENT_SUFFIXES = {".ts", ".m4s", ".mp4", ".aac", ".m2ts"}

Clock = Callable[[], float]


def directory_name(session_id: str) -> str:
    """The session's directory name: its id, with anything path-like replaced by ``_``, and never
    hidden (a leading ``.`` gets a ``_`` in front), so it is also a valid blob key segment."""
    name = _UNSAFE_CHARACTERS.sub("_", session_id)[:200]
    return name if name and not name.startswith(".") else f"_{name}"


# Event thumbnails (annotated JPEGs the analyzer stores beside the recording, one per raw event;
# see ``analyzer.thumbnails``): ``<session_dir>/thumbs/<event_id>.jpg``. Inside the session's
# directory, so purging the recording (``RecordingStorage.purge``) removes them too.
THUMBNAILS_DIR = "thumbs"


def thumbnail_name(event_id: str) -> str:
    """The thumbnail's name within the recording (what playback URLs sign)."""
    return f"{THUMBNAILS_DIR}/{event_id}.jpg"


def thumbnail_key(session_id: str, event_id: str) -> str:
    """The blob key of the thumbnail of raw event ``event_id`` of the session."""
    return f"{directory_name(session_id)}/{thumbnail_name(event_id)}"


@dataclass(frozen=True)
class RecordingLimits:
    """Caps on recorded segment files; 0 means unlimited (see the module docstring)."""

    max_bytes_per_session: int = 0
    max_age_seconds: float = 0.0
    max_bytes_total: int = 0

    @classmethod
    def of(cls, settings: IngestSettings) -> RecordingLimits:
        return cls(
            max_bytes_per_session=settings.recording_max_bytes_per_session,
            max_age_seconds=settings.recording_max_age_s,
            max_bytes_total=settings.recording_max_bytes_total,
        )


UNLIMITED = RecordingLimits()


@dataclass(frozen=True)
class _Entry:
    uri: str
    duration: float
    discontinuity: bool
    gap: bool
    program_date_time: datetime | None = None  # wall clock of the entry's start, when written


@dataclass(frozen=True)
class _StoredFile:
    """A segment file on disk (not yet pruned)."""

    name: str
    size: int
    stored_at: float  # wall clock (``time.time``) when written


def manifest_entries(text: str) -> list[_Entry]:
    """The entries of a manifest written by ``SegmentStore`` (in order)."""
    entries: list[_Entry] = []
    discontinuity = gap = False
    duration: float | None = None
    date: datetime | None = None
    for line in (raw.strip() for raw in text.splitlines()):
        if line == "#EXT-X-DISCONTINUITY":
            discontinuity = True
        elif line == "#EXT-X-GAP":
            gap = True
        elif line.startswith(PROGRAM_DATE_TIME):
            date = datetime.fromisoformat(line[len(PROGRAM_DATE_TIME) :])
        elif line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",", 1)[0])
        elif line and not line.startswith("#") and duration is not None:
            entries.append(_Entry(line, duration, discontinuity, gap, date))
            discontinuity = gap = False
            duration = date = None
    return entries


def format_program_date_time(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds (``2026-01-02T03:04:05.678Z``), as players expect."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _target_duration(durations: Iterable[float]) -> int:
    return max(1, math.ceil(max(durations, default=1.0)))


def _render_header(target_duration: int, has_gap: bool) -> str:
    return (
        "#EXTM3U\n"
        + ("#EXT-X-VERSION:8\n" if has_gap else "#EXT-X-VERSION:3\n")  # EXT-X-GAP needs version 8
        + "#EXT-X-PLAYLIST-TYPE:EVENT\n"
        + f"#EXT-X-TARGETDURATION:{target_duration}\n"
        + "#EXT-X-MEDIA-SEQUENCE:0\n"
    )


def _render_entry(entry: _Entry) -> str:
    lines = []
    if entry.discontinuity:
        lines.append("#EXT-X-DISCONTINUITY\n")
    if entry.program_date_time is not None:
        lines.append(f"{PROGRAM_DATE_TIME}{format_program_date_time(entry.program_date_time)}\n")
    if entry.gap:
        lines.append("#EXT-X-GAP\n")
    lines.append(f"#EXTINF:{entry.duration:.6f},\n{entry.uri}\n")
    return "".join(lines)


def render_manifest(entries: Sequence[_Entry], ended: bool) -> str:
    header = _render_header(_target_duration(e.duration for e in entries), any(e.gap for e in entries))
    return header + "".join(_render_entry(e) for e in entries) + (f"{ENDLIST}\n" if ended else "")


class _RecordingMirror:
    """Copies one recording's changes to the blob store (S3 backend; see the module docstring).

    Changes are queued, then ``sync`` applies them: segment uploads first, deletions, and the
    manifest last and only when no upload is pending, so the bucket's manifest never lists a
    segment the bucket lacks. A failure leaves the rest queued for the next ``sync``. Its owner's
    lock guards it.
    """

    def __init__(self, blobs: BlobStore, directory: Path, session_id: str) -> None:
        self.blobs = blobs
        self.directory = directory
        self.session_id = session_id
        self._prefix = f"{directory.name}/"
        self._uploads: dict[str, bytes | None] = {}  # name -> bytes (None: read them from disk)
        self._deletions: set[str] = set()
        self._manifest_stale = False
        self._retry_at = 0.0  # time.monotonic() before which sync does not try again

    @property
    def pending(self) -> bool:
        return bool(self._uploads or self._deletions or self._manifest_stale)

    def segment_added(self, name: str, data: bytes) -> None:
        self._deletions.discard(name)
        self._uploads[name] = data

    def segments_deleted(self, names: Iterable[str]) -> None:
        for name in names:
            self._uploads.pop(name, None)
            self._deletions.add(name)

    def manifest_changed(self) -> None:
        self._manifest_stale = True

    def forget(self) -> None:
        """The recording is being purged: nothing of it is uploaded any more."""
        self._uploads.clear()
        self._deletions.clear()
        self._manifest_stale = False

    def reconcile(self, kept: set[str]) -> None:
        """Make the bucket's segment objects the ``kept`` files (``open``): upload the missing
        ones, delete the others (media ingested again after a resume point, an older recording)."""
        try:
            stored = {
                key[len(self._prefix) :]
                for key in self.blobs.list(self._prefix)
                if _SEGMENT_FILE.match(key[len(self._prefix) :])
            }
        except BlobStoreError as exc:
            log.warning("recording %s: cannot list it in the blob store: %s", self.session_id, exc)
            return
        for name in sorted(kept - stored):
            self._uploads.setdefault(name, None)
        self._deletions |= stored - kept
        self._manifest_stale = True

    def sync(self) -> None:
        """Apply the queued changes; on a failure log it and keep the rest for later."""
        if not self.pending or time.monotonic() < self._retry_at:
            return
        try:
            for name, data in list(self._uploads.items()):
                if data is None:
                    try:
                        data = (self.directory / name).read_bytes()
                    except FileNotFoundError:  # pruned meanwhile: nothing to upload
                        self._uploads.pop(name, None)
                        continue
                self.blobs.put(self._prefix + name, data, content_type_for(name))
                self._uploads.pop(name, None)
            for name in sorted(self._deletions):
                self.blobs.delete(self._prefix + name)
                self._deletions.discard(name)
            if self._manifest_stale:
                manifest = self.directory / MANIFEST_NAME
                try:
                    text = manifest.read_bytes()
                except FileNotFoundError:
                    text = None
                if text is not None:
                    self.blobs.put(self._prefix + MANIFEST_NAME, text, content_type_for(MANIFEST_NAME))
                self._manifest_stale = False
        except (BlobStoreError, OSError) as exc:
            self._retry_at = time.monotonic() + MIRROR_RETRY_S
            # Bytes of a failed upload are read from disk on the retry, not held in memory.
            self._uploads = dict.fromkeys(self._uploads)
            log.warning(
                "recording %s: blob store not updated (%d upload(s), %d deletion(s) pending, retried "
                "with the next change): %s",
                self.session_id,
                len(self._uploads),
                len(self._deletions),
                exc,
            )


class SegmentStore:
    """One session's recording directory (segment files and manifest).

    Every method does blocking file I/O: call it in a worker thread. ``on_change`` is told how
    many bytes of segment files a call added (negative: removed), after the store's lock is
    released; ``RecordingStorage`` keeps its running total with it. ``mirror``: a blob store the
    recording is copied to (S3 backend), None when this directory is the blob store.
    """

    def __init__(
        self,
        storage_dir: Path,
        session_id: str,
        limits: RecordingLimits = UNLIMITED,
        *,
        on_change: Callable[[int], None] | None = None,
        clock: Clock = time.time,
        mirror: BlobStore | None = None,
    ) -> None:
        self.directory = Path(storage_dir) / directory_name(session_id)
        self.session_id = session_id
        self.limits = limits
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._manifest: TextIO | None = None  # append handle while the recording is written
        self._entry_count = 0
        self._target_duration = 1  # what the manifest's header says
        self._has_gap = False  # whether the header says version 8
        self._ended = False
        self._writing = False  # a session writes it (opened, not finished or closed)
        self._purged = False
        self._files: deque[_StoredFile] = deque()  # segment files on disk, oldest first
        self._bytes = 0  # sum of their sizes
        self._date_due = True  # the next segment gets #EXT-X-PROGRAM-DATE-TIME when known
        self._mirror = None if mirror is None else _RecordingMirror(mirror, self.directory, session_id)

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    @property
    def entry_count(self) -> int:
        return self._entry_count

    @property
    def stored_bytes(self) -> int:
        """Bytes of this recording's segment files still on disk."""
        return self._bytes

    # ------------------------------------------------------------------ writing a recording

    def open(self, resume_entries: int | None = None, resume_duration: float = 0.0) -> None:
        """Create the directory and manifest; when resuming, keep the first ``resume_entries``
        entries of an existing manifest and pad it with a gap up to ``resume_duration``.

        Segment files the kept entries do not list (media ingested again after the resume
        point, or an earlier recording of a fresh start) are deleted, so disk and manifest agree.
        """
        with self._changing():
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._failure("create", self.directory, exc) from exc
            entries: list[_Entry] = []
            if resume_entries is not None:
                entries = manifest_entries(self._read_manifest_locked())[:resume_entries]
                listed = sum(entry.duration for entry in entries)
                if resume_duration - listed > 1e-3:
                    name = f"gap{len(entries):06d}.ts"
                    entries.append(_Entry(name, resume_duration - listed, discontinuity=True, gap=True))
            entries = self._adopt_files_locked(entries)
            self._ended = self._purged = False
            self._writing = True
            self._date_due = True
            self._rewrite_locked(entries, ended=False)
            if self._mirror is not None:
                self._mirror.reconcile({stored.name for stored in self._files})
            self._sync_locked()

    def add_segment(
        self,
        data: bytes,
        duration: float,
        source_uri: str,
        discontinuity: bool = False,
        program_date_time: datetime | None = None,
    ) -> Path:
        """Store one segment's bytes and list it in the manifest (then enforce the session's
        caps); return its path. ``program_date_time``: the wall clock of the segment's start,
        when known; written where a player needs it (see the module docstring)."""
        suffix = Path(urlparse(source_uri).path).suffix.lower()
        if suffix not in _SEGMENT_SUFFIXES:
            suffix = ".ts"
        with self._changing():
            if self._purged:
                raise StorageError("the recording was purged", session_id=self.session_id)
            path = self.directory / f"seg{self._entry_count:06d}{suffix}"
            try:
                path.write_bytes(data)
            except OSError as exc:
                raise self._failure("write", path, exc) from exc
            self._files.append(_StoredFile(path.name, len(data), self._clock()))
            self._bytes += len(data)
            if self._mirror is not None:
                self._mirror.segment_added(path.name, data)
            date = program_date_time if self._date_due or discontinuity else None
            self._append_locked(_Entry(path.name, duration, discontinuity, gap=False, program_date_time=date))
            if program_date_time is not None:
                self._date_due = False
            self._prune_session_locked()
            self._sync_locked()
        return path

    def add_gap(self, duration: float, discontinuity: bool = True) -> None:
        """A stretch of stream time we have no media for (missed or unfetchable segments)."""
        if duration <= 0:
            return
        with self._lock:
            self._append_locked(_Entry(f"gap{self._entry_count:06d}.ts", duration, discontinuity, gap=True))
            self._date_due = True
            self._sync_locked()

    def finish(self) -> None:
        """Append ``#EXT-X-ENDLIST``: the recording is complete."""
        with self._lock:
            if not self._ended and not self._purged:
                self._write_locked(f"{ENDLIST}\n")
            self._ended = True
            self._writing = False
            self._close_locked()
            self._sync_locked()

    def close(self) -> None:
        """Stop writing without ending the recording (the session was suspended or crashed)."""
        with self._lock:
            self._writing = False
            self._close_locked()
            self._sync_locked()

    # ------------------------------------------------------------------ pruning and retention

    def load(self) -> int:
        """Take stock of a recording already on disk (storage start-up scan): its segment files,
        oldest first by modification time. Returns their bytes (not reported to ``on_change``:
        the scan counts them all at once)."""
        with self._lock:
            found: list[_StoredFile] = []
            try:
                with os.scandir(self.directory) as listing:
                    for item in listing:
                        if _SEGMENT_FILE.match(item.name) and item.is_file():
                            stat = item.stat()
                            found.append(_StoredFile(item.name, stat.st_size, stat.st_mtime))
            except OSError as exc:
                raise self._failure("list", self.directory, exc) from exc
            found.sort(key=lambda f: (f.stored_at, f.name))
            self._files = deque(found)
            self._bytes = sum(f.size for f in found)
            return self._bytes

    def prunable(self) -> list[_StoredFile]:
        """The segment files pruning may delete, oldest first (a snapshot)."""
        with self._lock:
            return self._prunable_locked()

    def prune_files(self, names: set[str]) -> int:
        """Delete these segment files (if still there) and list them as gaps; return the bytes
        freed. For ``RecordingStorage``'s total cap: the caller accounts for the bytes."""
        with self._lock:
            if self._purged:
                return 0
            victims = [f for f in self._prunable_locked() if f.name in names]
            freed = self._delete_locked(victims, why="total cap") if victims else 0
            self._sync_locked()
            return freed

    def _prunable_locked(self) -> list[_StoredFile]:
        # A recording being written keeps its newest segment (see the module docstring).
        files = list(self._files)
        return files[:-1] if self._writing else files

    def mark_purged(self) -> int:
        """Stop writing and forget every file (the directory is about to be removed); return the
        bytes it held."""
        with self._lock:
            self._close_locked()
            self._purged = True
            self._writing = False
            freed, self._bytes = self._bytes, 0
            self._files.clear()
            if self._mirror is not None:
                self._mirror.forget()
            return freed

    def _prune_session_locked(self) -> int:
        """Enforce the per-session caps after a segment was added; return the bytes freed."""
        limits = self.limits
        candidates = self._prunable_locked()
        if not candidates:
            return 0
        victims: list[_StoredFile] = []
        reasons = []
        if limits.max_age_seconds > 0:
            now = self._clock()
            if candidates[0].stored_at < now - limits.max_age_seconds:
                cutoff = now - limits.max_age_seconds * PRUNE_TO_FRACTION
                victims = list(itertools.takewhile(lambda f: f.stored_at < cutoff, candidates))
                reasons.append("age cap")
        if limits.max_bytes_per_session > 0 and self._bytes > limits.max_bytes_per_session:
            target = limits.max_bytes_per_session * PRUNE_TO_FRACTION
            remaining = self._bytes - sum(f.size for f in victims)
            for stored in candidates[len(victims) :]:
                if remaining <= target:
                    break
                victims.append(stored)
                remaining -= stored.size
            reasons.append("size cap")
        return self._delete_locked(victims, why=" and ".join(reasons)) if victims else 0

    def _delete_locked(self, victims: list[_StoredFile], *, why: str) -> int:
        """Delete ``victims`` (oldest first) and rewrite the manifest listing them as gaps."""
        deleted: set[str] = set()
        freed = 0
        for stored in victims:
            try:
                (self.directory / stored.name).unlink()
            except FileNotFoundError:
                pass  # gone already: it no longer takes space either
            except OSError as exc:
                # Keep it (and the younger ones) counted; the next pruning tries again.
                log.warning("recording %s: cannot delete %s (%s): %s", self.session_id, stored.name, why, exc)
                break
            deleted.add(stored.name)
            freed += stored.size
        if not deleted:
            return 0
        if self._mirror is not None:
            self._mirror.segments_deleted(deleted)
        self._files = deque(f for f in self._files if f.name not in deleted)
        self._bytes -= freed
        text = self._read_manifest_locked()
        entries = [replace(e, gap=True) if e.uri in deleted else e for e in manifest_entries(text)]
        # A finished recording loaded by the start-up scan: its manifest says whether it ended.
        ended = self._ended or any(line.strip() == ENDLIST for line in text.splitlines()[-2:])
        self._rewrite_locked(entries, ended=ended)
        log.info(
            "recording %s: pruned %d oldest segment(s), %d bytes (%s); %d bytes left",
            self.session_id,
            len(deleted),
            freed,
            why,
            self._bytes,
        )
        return freed

    # ------------------------------------------------------------------ manifest file

    def _adopt_files_locked(self, entries: list[_Entry]) -> list[_Entry]:
        """Make the stored files those ``entries`` list: a listed file that is missing becomes a
        gap, an unlisted one is deleted. Returns the entries (with such gaps)."""
        listed = {entry.uri for entry in entries if not entry.gap}
        on_disk: dict[str, os.stat_result] = {}
        try:
            with os.scandir(self.directory) as listing:
                for item in listing:
                    if _SEGMENT_FILE.match(item.name) and item.is_file():
                        on_disk[item.name] = item.stat()
            for name in on_disk.keys() - listed:
                (self.directory / name).unlink()
        except OSError as exc:
            raise self._failure("tidy", self.directory, exc) from exc
        adopted = [
            entry if entry.gap or entry.uri in on_disk else replace(entry, gap=True) for entry in entries
        ]
        self._files = deque(
            _StoredFile(entry.uri, on_disk[entry.uri].st_size, on_disk[entry.uri].st_mtime)
            for entry in adopted
            if not entry.gap
        )
        self._bytes = sum(f.size for f in self._files)
        return adopted

    def _read_manifest_locked(self) -> str:
        try:
            return self.manifest_path.read_text() if self.manifest_path.exists() else ""
        except OSError as exc:
            raise self._failure("read", self.manifest_path, exc) from exc

    def _append_locked(self, entry: _Entry) -> None:
        if self._purged:
            raise StorageError("the recording was purged", session_id=self.session_id)
        needs_header = math.ceil(entry.duration) > self._target_duration or (entry.gap and not self._has_gap)
        if needs_header:
            # The header is at the top of the file: rewrite it whole (rare, see the docstring).
            entries = [*manifest_entries(self._read_manifest_locked()), entry]
            self._rewrite_locked(entries, ended=self._ended)
        else:
            self._write_locked(_render_entry(entry))
            self._entry_count += 1

    def _write_locked(self, text: str) -> None:
        """Append ``text`` with one write, flushed, so a reader sees whole entries."""
        try:
            if self._manifest is None:
                self._manifest = self.manifest_path.open("a")
            self._manifest.write(text)
            self._manifest.flush()
        except OSError as exc:
            raise self._failure("write", self.manifest_path, exc) from exc
        if self._mirror is not None:
            self._mirror.manifest_changed()

    def _rewrite_locked(self, entries: list[_Entry], *, ended: bool) -> None:
        # Write-then-rename, so a player never reads a half-written manifest; the append handle
        # is reopened on the new file.
        self._close_locked()
        # Hidden: the local blob store never lists it as a blob.
        temporary = self.directory / f".{MANIFEST_NAME}.tmp"
        try:
            temporary.write_text(render_manifest(entries, ended))
            os.replace(temporary, self.manifest_path)
        except OSError as exc:
            raise self._failure("write", self.manifest_path, exc) from exc
        self._entry_count = len(entries)
        self._target_duration = _target_duration(e.duration for e in entries)
        self._has_gap = any(e.gap for e in entries)
        if self._mirror is not None:
            self._mirror.manifest_changed()

    def _sync_locked(self) -> None:
        """Copy what changed to the blob store (S3 backend); never raises (see the mirror)."""
        if self._mirror is not None and not self._purged:
            self._mirror.sync()

    def _close_locked(self) -> None:
        manifest, self._manifest = self._manifest, None
        if manifest is not None:
            try:
                manifest.close()
            except OSError as exc:  # everything was flushed already; nothing is lost
                log.warning("recording %s: closing %s: %s", self.session_id, self.manifest_path, exc)

    def _failure(self, action: str, path: Path, exc: OSError) -> StorageError:
        return StorageError(f"cannot {action} {path}: {exc}", session_id=self.session_id)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the lock for a change of the stored files; once it is released (also after an
        error), report how many bytes the change added or removed."""
        delta = 0
        try:
            with self._lock:
                before = self._bytes
                try:
                    yield
                finally:
                    delta = self._bytes - before
        finally:
            if delta and self._on_change is not None:
                self._on_change(delta)


class RecordingStorage:
    """The storage directory of one ingest service: its recordings and their total size cap.

    ``store(session_id)`` hands out the session's ``SegmentStore``. With a total cap, every store
    is registered (finished ones too, until purged) and reports its growth here; the running
    total starts from ``scan()``. Without one, nothing is registered or counted. ``mirror``: the
    blob store every recording is copied to (S3 backend; see ``recording_mirror``).
    """

    def __init__(
        self,
        storage_dir: Path,
        limits: RecordingLimits,
        *,
        clock: Clock = time.time,
        mirror: BlobStore | None = None,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.limits = limits
        self.mirror = mirror
        self._clock = clock
        self._lock = threading.Lock()  # guards _stores and _total; never held while a store's is taken
        self._pruning = threading.Lock()  # one total-cap pruning at a time
        self._stores: dict[str, SegmentStore] = {}
        self._total = 0

    @classmethod
    def of(cls, settings: IngestSettings, blob_settings: BlobStoreSettings | None = None) -> RecordingStorage:
        """The service's storage: ``settings.storage_dir`` with its caps, mirrored to the blob
        store ``blob_settings`` (default: from the environment) configure when that is not this
        directory."""
        blobs = blob_settings if blob_settings is not None else BlobStoreSettings()
        return cls(
            settings.storage_dir,
            RecordingLimits.of(settings),
            mirror=recording_mirror(settings.storage_dir, blobs),
        )

    @property
    def total_bytes(self) -> int:
        """Bytes of segment files under the storage directory, as counted (total cap only)."""
        return self._total

    def store(self, session_id: str) -> SegmentStore:
        """The session's store (no I/O: safe on the event loop)."""
        if self.limits.max_bytes_total <= 0:
            return SegmentStore(
                self.storage_dir, session_id, self.limits, clock=self._clock, mirror=self.mirror
            )
        name = directory_name(session_id)
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                store = self._new_store(session_id)
                self._stores[name] = store
            else:
                store.session_id = session_id  # a scanned store only knew its directory name
            return store

    def scan(self) -> None:
        """Count the recordings already on disk (start-up, once; blocking), then enforce the cap."""
        if self.limits.max_bytes_total <= 0:
            return
        try:
            directories = [item for item in self.storage_dir.iterdir() if item.is_dir()]
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot list {self.storage_dir}: {exc}") from exc
        found = 0
        for directory in directories:
            if directory.name != directory_name(directory.name):
                continue  # not a recording of ours
            with self._lock:
                store = self._stores.setdefault(directory.name, self._new_store(directory.name))
            found += store.load()
        # Counted at once and pruned after the whole scan, so pruning sees every recording.
        self._account(found)
        log.info(
            "recordings in %s: %d, %d bytes of segments (total cap %d)",
            self.storage_dir,
            len(directories),
            self._total,
            self.limits.max_bytes_total,
        )

    def purge(self, session_id: str) -> bool:
        """Delete the session's recording directory, and its copy in the blob store (blocking);
        False if there was none."""
        name = directory_name(session_id)
        with self._lock:
            store = self._stores.pop(name, None)
        if store is not None:
            freed = store.mark_purged()
            with self._lock:
                self._total -= freed
        directory = self.storage_dir / name
        removed = True
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            removed = False  # the bucket may still hold it (written on another machine)
        except OSError as exc:
            raise StorageError(f"cannot delete {directory}: {exc}", session_id=session_id) from exc
        if self.mirror is not None:
            try:
                removed = self.mirror.delete_prefix(f"{name}/") > 0 or removed
            except BlobStoreError as exc:
                raise StorageError(
                    f"cannot delete the recording from the blob store: {exc}", session_id=session_id
                ) from exc
        return removed

    def _new_store(self, session_id: str) -> SegmentStore:
        return SegmentStore(
            self.storage_dir,
            session_id,
            self.limits,
            on_change=self._account,
            clock=self._clock,
            mirror=self.mirror,
        )

    def _account(self, delta: int) -> None:
        with self._lock:
            self._total += delta
            over = self._total > self.limits.max_bytes_total
        if over:
            self._prune_total()

    def _prune_total(self) -> None:
        """Delete the oldest segment files across all recordings, down to PRUNE_TO_FRACTION of
        the total cap. Runs in the thread whose write crossed the cap."""
        if not self._pruning.acquire(blocking=False):
            return  # another thread is pruning; it frees enough for this write too (or the next one will)
        try:
            with self._lock:
                stores = list(self._stores.values())
                excess = self._total - self.limits.max_bytes_total * PRUNE_TO_FRACTION
            if excess <= 0:
                return
            oldest_first = heapq.merge(
                *(
                    [(f.stored_at, store.directory.name, f.name, f.size, store) for f in store.prunable()]
                    for store in stores
                ),
                key=lambda item: item[:3],
            )
            chosen: dict[str, tuple[SegmentStore, set[str]]] = {}
            for _, directory, name, size, store in oldest_first:
                if excess <= 0:
                    break
                chosen.setdefault(directory, (store, set()))[1].add(name)
                excess -= size
            freed = 0
            for directory, (store, names) in chosen.items():
                try:
                    freed += store.prune_files(names)
                except StorageError as exc:
                    # Another session's recording: its own writes report the trouble to it.
                    log.warning("total cap: cannot prune recording %s: %s", directory, exc)
            with self._lock:
                self._total -= freed
        finally:
            self._pruning.release()


def recording_mirror(storage_dir: Path, settings: BlobStoreSettings) -> BlobStore | None:
    """The blob store recordings are copied to, or None when ``storage_dir`` is the store.

    Local backend: the blob store's root is ingest's storage directory (both default to one
    path, and ``LIVESTREAM_INGEST_STORAGE_DIR`` sets both), so nothing is copied; a
    ``LIVESTREAM_STORAGE_LOCAL_DIR`` naming another directory is a misconfiguration (the API would
    read recordings ingest never writes there), reported once here. S3 backend: the bucket.
    """
    if settings.backend == "local":
        if "local_dir" in settings.model_fields_set and not _same_directory(settings.local_dir, storage_dir):
            log.warning(
                "LIVESTREAM_STORAGE_LOCAL_DIR (%s) is not ingest's storage directory (%s): recordings "
                "are written to the latter; point both at one directory",
                settings.local_dir,
                storage_dir,
            )
        return None
    return open_blob_store(settings)


def _same_directory(first: Path, second: Path) -> bool:
    return Path(first).resolve() == Path(second).resolve()
