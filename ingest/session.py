"""One ingest session: follow a live HLS source, sample its frames, publish chunks and lifecycle.

Pipeline per segment, strictly in media-sequence order (one asyncio task per session):
fetch (async HTTP) -> store on disk (thread) -> decode + sample (thread) -> chunk (pure) ->
encode within budget (thread) -> produce and await the broker's ack -> count it ->
checkpoint.

Order of effects, and what a crash between them does:

1. ``ACTIVE`` is produced (and acked) once the source answered with a valid media playlist,
   before any chunk; then the session's checkpoint is written.
2. Each chunk is produced and its ack awaited *before* ``chunks_published`` is incremented
   and before the next chunk is produced, so the count only ever includes acknowledged
   chunks and chunks land in chunk_index order. The producer is idempotent, so its internal
   retries never duplicate a chunk.
3. After each segment, once its completed chunks are acked, the checkpoint
   (``IngestCheckpoint``, compacted topic) is overwritten: next chunk index, covered stream
   time, and the resume point (the last segment that ended within the covered time). A
   segment that moved none of these (it completed no chunk) writes nothing: the acked
   checkpoint already says the same.
4. At the end (``#EXT-X-ENDLIST``, EndSession or failure) the partial last chunk is flushed
   and acked, the local manifest gets ``#EXT-X-ENDLIST``, and only then the final
   ``ENDED``/``FAILED`` report carries ``chunks_published`` (final). After that report is
   acked, the checkpoint is deleted (tombstone).

A crash (or a suspend: service shutdown, partition revoked) leaves the last checkpoint; the
ingest instance that owns the session's partition next resumes the session from it (see
``checkpoint``): it re-ingests the media after the resume point and continues at the
checkpoint's chunk index. So a crash between a chunk's ack and the next checkpoint makes the
resumed session publish that chunk index again (same ``chunk_id``, the same frames when the
source still lists its segments): consumers must be (and ours are) idempotent per chunk
index; the aggregator keeps the first result per index, event ids derive from the chunk
index. A crash between the final report and the tombstone resumes a session that already
ended: its source is followed again and it reports a second final report, which the
aggregator ignores (a terminal status never changes). Frames sampled after the last
completed chunk are not checkpointed: the resumed session samples them again.

Crash quarantine (``IngestCheckpoint.crash_resumes``, counted ahead): right after the store is
opened and *before* the source is fetched or anything decoded, a run checkpoints the count of
earlier crashed runs plus itself; a clean suspension checkpoints it back without itself, and so
does getting past the chunk the previous run crashed in (it completed that chunk: whatever
killed the process is behind it, and the count restarts at this run). So a process that dies
running the session (a segment that segfaults PyAV, an OOM kill) leaves the count raised, and
a resumed run that reads ``max_crash_resumes`` or more ends FAILED ("crashed ingest N times")
instead of running again: a crash loop is bounded by that many crashes. Sessions that merely
shared the dying process count too, until they complete one more chunk.

Failures: any exception out of the session's own work (a typed ``IngestError`` or a bug: input
nobody foresaw) ends the session FAILED with a reason and its final count, logged once here;
only cancellation (a crash, as far as the session knows) and a failing final report escape.

Overload (``ingest.lag``, ``lag_policy``): the service measures each session's lag against the
analyzer group's committed offsets (``observe_lag``, every ``lag_check_interval_s``), which steps
the session's policy state; this task applies it before each segment: ``thin`` sets the
sampler's rate, ``skip`` turns segments into gaps with empty chunks (``_skip_segment``).
Neither changes the order of effects above: skipped segments are marked and checkpointed like
ingested ones, chunk indexes stay contiguous, and the checkpoint carries the skipped time and
the count of policy actions. Lag, skipped time, rate and actions go to the aggregator in the
lifecycle reports (an extra ACTIVE one when they change materially, at most every
``lag_report_interval_s``).

Outages (``_follow``): a source that stops answering (refresh fails) or stops growing for
``stall_target_durations`` is polled with capped exponential backoff. When it comes back, the
session continues after its last segment when the source still lists it, else at the source's
live edge after a gap (``PlaylistTracker``: PROGRAM-DATE-TIME, else the wall clock), recorded
as ``#EXT-X-GAP`` in the manifest; stream time stays on the source's timeline. Segments that
cannot be fetched for a transient reason (connection, timeout, 5xx) are gaps and do not count
as bad segments. Only after ``outage_tolerance_s`` without a new segment does the session end:
ENDED (``ended_by="stream"``, with the reason) when it had ingested video, FAILED when it
never had. A source that does not answer when the session *starts* fails it at once (a fresh
session has nothing to survive); a *resumed* session waits out the tolerance there too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal, Protocol, TypeVar

from prometheus_client import Counter, Histogram

from ingest.checkpoint import START_MARK, SegmentMark, build_checkpoint, mark_of, resume_mark, wall_clock_gap
from ingest.chunker import Chunk, Chunker, SampledFrame, build_chunk_record
from ingest.decode import decode_segment, frame_budget
from ingest.encode import EncodedChunk, encode_chunk
from ingest.errors import (
    BrokerOutageError,
    DecodeError,
    DecodeRefusedError,
    FetchError,
    IngestError,
    PlaylistError,
    SessionQuarantinedError,
    SourceStalledError,
    StorageError,
)
from ingest.fetch import Fetched, HttpFetcher
from ingest.lag import (
    COUNTED_ACTIONS,
    MATERIAL_LAG_CHANGE_S,
    ChunkLag,
    LagPolicy,
    LagReport,
    LagState,
    next_state,
    overlap,
    report_due,
    source_edge,
)
from ingest.playlist import MasterPlaylist, MediaPlaylist, PlaylistLimits, choose_variant, parse_playlist
from ingest.sampler import FrameSampler
from ingest.settings import IngestSettings
from ingest.storage import RecordingLimits, RecordingStorage
from ingest.tracker import PlaylistTracker, TrackedSegment, outage_poll_delay, refresh_interval
from livestream.metrics import LATENCY_BUCKETS_S
from livestream.stages import StageTimes, observe
from schemas.records import IngestCheckpoint, IngestState, SessionLifecycle, StartSession, utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")

# A playlist up to this size is parsed on the event loop: a live window of 6-10 segments is
# ~1 KB and parses in ~0.05 ms, a fifth of what handing it to a worker thread costs in CPU
# (~0.25 ms: submit, wake-up, result back through the loop's self-pipe), and it is reloaded
# every second or two. At the limit (~100 segments) parsing holds the loop ~0.6 ms; larger
# ones (DVR windows, up to megabytes) go to a thread.
INLINE_PARSE_MAX_BYTES = 8 * 1024
# "suspend": stop without a final report, leaving the checkpoint for whoever resumes it.
StopReason = Literal["user", "suspend"]

# Prometheus metrics of every session of this process (served by ``livestream.metrics`` when
# LIVESTREAM_INGEST_METRICS_PORT is set). No per-session labels: sums over the process's sessions.
SEGMENTS = Counter(
    "livestream_ingest_segments_total",
    "Media segments handled, by outcome: decoded; fetch_failed, decode_failed, refused (over the "
    "decode limits): each of those is skipped (a gap) unless it is one too many in a row.",
    ["outcome"],
)
MISSED_MEDIA = Counter(
    "livestream_ingest_missed_media_seconds_total",
    "Stream time the source dropped from its playlist before it was fetched (outages, a slow ingest).",
)
FRAMES_DECODED = Counter(
    "livestream_ingest_frames_decoded_total", "Video frames decoded (every frame, kept or not)."
)
FRAMES_SAMPLED = Counter(
    "livestream_ingest_frames_sampled_total", "Frames kept by the sampler, bound for the analyzers."
)
CHUNKS_PUBLISHED = Counter(
    "livestream_ingest_chunks_published_total", "Chunk records produced and acknowledged by the broker."
)
LAG_ACTIONS = Counter(
    "livestream_ingest_lag_actions_total",
    "Overload policy actions on lagging sessions (ingest.lag): skip = a session began skipping "
    "segments, thin = a session's sampling rate halved.",
    ["policy"],
)
for _policy in sorted(COUNTED_ACTIONS):
    LAG_ACTIONS.labels(_policy)
SKIPPED_SECONDS = Counter(
    "livestream_ingest_skipped_seconds_total",
    "Stream time not fetched because the analyzers were too far behind (the skip overload policy).",
)
for _outcome in ("decoded", "fetch_failed", "decode_failed", "refused"):
    SEGMENTS.labels(_outcome)  # every outcome is exported from the start, at 0
SEGMENT_FETCH_SECONDS = Histogram(
    "livestream_ingest_segment_fetch_seconds",
    "Time to download one segment (retries and redirects included), failed fetches too.",
    buckets=LATENCY_BUCKETS_S,
)
SEGMENT_DECODE_SECONDS = Histogram(
    "livestream_ingest_segment_decode_seconds",
    "Time to decode and sample one segment (worker thread), refused and undecodable ones too.",
    buckets=LATENCY_BUCKETS_S,
)
DECODE_CPU_SECONDS = Counter(
    "livestream_ingest_decode_cpu_seconds_total",
    "CPU time of the worker threads decoding and sampling segments (their thread clocks; all of the "
    "decoding's CPU with LIVESTREAM_INGEST_DECODE_THREADS=none, libavcodec's own threads are not counted).",
)


# Where the broker put a chunk record: (partition, offset).
ChunkPosition = tuple[int, int]


class RecordPublisher(Protocol):
    """Where a session's records go; each call returns once the broker acknowledged the record.

    ``publish_chunk`` returns the record's (partition, offset), which the session's lag is
    measured against (None: unknown, e.g. a test double; the lag then counts only ingest's own
    delay)."""

    async def publish_chunk(self, chunk: EncodedChunk, stages: StageTimes) -> ChunkPosition | None: ...

    async def publish_lifecycle(self, record: SessionLifecycle) -> None: ...


class CheckpointWriter(Protocol):
    """Where a session's checkpoints go; each call returns once the broker acknowledged it."""

    async def save_checkpoint(self, checkpoint: IngestCheckpoint) -> None: ...

    async def delete_checkpoint(self, session_id: str) -> None: ...


class IngestSession:
    def __init__(
        self,
        command: StartSession,
        settings: IngestSettings,
        fetcher: HttpFetcher,
        publisher: RecordPublisher,
        checkpoints: CheckpointWriter | None = None,
        resume_from: IngestCheckpoint | None = None,
        storage: RecordingStorage | None = None,
    ) -> None:
        self.command = command
        self.settings = settings
        self.fetcher = fetcher
        self.publisher = publisher
        self.checkpoints = checkpoints
        self.resume_from = resume_from
        # The service shares one storage among its sessions (the total cap spans them all).
        if storage is None:
            storage = RecordingStorage(settings.storage_dir, RecordingLimits.of(settings))
        self.store = storage.store(command.session_id)
        self.tracker = PlaylistTracker(settings.live_edge_segments)
        self.playlist_limits = PlaylistLimits(
            max_entries=settings.playlist_max_entries, max_line_bytes=settings.playlist_max_line_bytes
        )
        self.sampler = FrameSampler(settings.sample_fps)
        self.chunker = Chunker(settings.chunk_seconds)
        self.chunks_published = 0
        self.segments_decoded = 0
        self.final_report: SessionLifecycle | None = None
        self._bad_segments_in_a_row = 0
        self._store_open = False
        self._stop = asyncio.Event()
        self._stop_reason: StopReason | None = None
        # Frames before this stream time are in published chunks already (set when resuming).
        self._covered_time = 0.0
        self._marks: list[SegmentMark] = []  # states after recent segments, for checkpoints
        # (chunks published, resume mark, crash resumes, lag actions) of the last acked checkpoint.
        self._checkpointed: tuple[int, SegmentMark, int, int] | None = None
        self._end_reason: str | None = None  # why the stream is over, when it ended by an outage
        # Crash count written while this run is on (earlier crashed runs + this one; see above),
        # and the chunk the previous run crashed in (None: no crash to get past).
        self._crash_resumes = 1
        self._crash_chunk: int | None = None
        # Overload policy (``ingest.lag``): the service measures the lag (``observe_lag``), this
        # task applies the state between segments (sampling rate, skipping).
        self.lag_policy = LagPolicy.of(settings)
        self.lag_state = LagState.initial(self.lag_policy)
        self.chunk_lag = ChunkLag()
        # When the playlist's last load listed new segments of a live source (event loop clock;
        # None: it listed nothing new, or the playlist ended), and its target duration: what
        # ``source_edge`` needs to count the media made since, while ingest is behind.
        self._edge_listed_at: float | None = None
        self._reload_interval = 0.0
        self.lag_s: float | None = None  # None until first measured
        self.skipped_s = 0.0  # stream time skipped by the policy over the session
        self._skipped_spans: list[tuple[float, float]] = []  # skipped, not yet in a published chunk
        self._lag_reported: LagReport | None = None
        self._lag_reported_at = time.monotonic()
        if resume_from is not None:
            self._restore(resume_from)

    def _restore(self, checkpoint: IngestCheckpoint) -> None:
        mark = mark_of(checkpoint)
        published_something = checkpoint.next_chunk_index > 0 or mark.media_sequence is not None
        # Nothing published or ingested yet: the resumed session simply starts afresh.
        gap = wall_clock_gap(checkpoint, utcnow()) if published_something else None
        self.tracker.resume(mark, gap)
        self.chunks_published = checkpoint.chunks_published
        self.segments_decoded = checkpoint.segments_decoded
        self._covered_time = checkpoint.covered_time
        self._marks = [mark]
        self._crash_resumes = checkpoint.crash_resumes + 1
        self._crash_chunk = checkpoint.next_chunk_index if checkpoint.crash_resumes > 0 else None
        # Skipped time up to the resume point (the media after it is ingested or skipped again).
        # Chunks the interrupted run published but the analyzers had not committed are not
        # known here: the lag counts from the resume on (see ``observe_lag``).
        self.skipped_s = mark.skipped_s
        self.lag_state = LagState.initial(self.lag_policy, checkpoint.lag_actions)
        self.chunk_lag = ChunkLag(analysed_to=checkpoint.covered_time)
        # The anchor dates chunks without frames, as before the interruption.
        anchor_clock = mark.program_date_time or mark.ingested_at
        anchor = (mark.stream_time, anchor_clock) if anchor_clock is not None else None
        self.chunker.resume(checkpoint.next_chunk_index, anchor)
        log.info(
            "session %s resumes at chunk %d (stream time %.2f, after media sequence %s)",
            self.session_id,
            checkpoint.next_chunk_index,
            checkpoint.covered_time,
            mark.media_sequence,
        )

    @property
    def session_id(self) -> str:
        return self.command.session_id

    def request_stop(self, reason: StopReason = "user") -> None:
        """Stop following the source; ``run`` then flushes, publishes and reports."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    # ------------------------------------------------------------------ main flow

    async def run(self) -> SessionLifecycle | None:
        """Follow the source to its end; return the final (already published) lifecycle report,
        or None when the session was suspended (no final report; its checkpoint stays)."""
        try:
            return await self._run()
        finally:
            # Ended, suspended or failed: the manifest's append handle is not needed any more.
            await asyncio.to_thread(self.store.close)

    async def _run(self) -> SessionLifecycle | None:
        try:
            resume = self.resume_from
            if resume is None:
                await asyncio.to_thread(self.store.open)
            else:
                await asyncio.to_thread(self.store.open, resume.manifest_entries, resume.resume_stream_time)
                self._marks = [replace(self._marks[0], manifest_entries=self.store.entry_count)]
            self._store_open = True
            if resume is not None and resume.crash_resumes >= self.settings.max_crash_resumes:
                raise SessionQuarantinedError(
                    f"crashed ingest {resume.crash_resumes} times (the ingest process died while running "
                    f"this session; limit LIVESTREAM_INGEST_MAX_CRASH_RESUMES="
                    f"{self.settings.max_crash_resumes}): not resumed again",
                    session_id=self.session_id,
                )
            # Before any fetch or decode: if this run dies, the count already says so.
            await self._save_checkpoint()
            playlist = await self._open_source()
            if playlist is None:  # stopped while still connecting
                return await self._finish_stopped()
            await self._report(IngestState.ACTIVE)  # again on resume: harmless, shows the count
            await self._save_checkpoint()
            ended_by = await self._follow(playlist)
        except BrokerOutageError:
            raise  # ingest stops for its supervisor; the session resumes from its checkpoint
        except IngestError as exc:
            log.warning("session %s failed: %s", self.session_id, exc)
            return await self.fail(str(exc))
        except Exception as exc:  # a bug, or input nobody foresaw: still a FAILED session, not a lost one
            log.exception("session %s failed with an unexpected error", self.session_id)
            return await self.fail(
                f"internal ingest error ({type(exc).__name__}) while ingesting the source; "
                f"see the ingest log for session {self.session_id}"
            )
        if ended_by == "suspend":
            await self._suspend_cleanly()
            return None
        # Flush (each chunk acked, then counted), ENDLIST on the manifest, then the final report:
        # a crash before the report leaves no ENDED at all, never one with a wrong count.
        await self._flush()
        return await self._report(IngestState.ENDED, ended_by=ended_by, reason=self._end_reason)

    async def fail(self, reason: str) -> SessionLifecycle:
        """Flush what was sampled (best effort) and report FAILED with the final count."""
        try:
            await self._flush()
        except Exception as exc:  # e.g. the partial chunk does not fit the budget, or the same bug again
            log.warning(
                "session %s: could not flush its last chunk (%s: %s)",
                self.session_id,
                type(exc).__name__,
                exc,
            )
        return await self._report(IngestState.FAILED, reason=reason)

    async def _finish_stopped(self) -> SessionLifecycle | None:
        if self._stop_reason == "suspend":
            await self._suspend_cleanly()
            return None
        return await self._report(IngestState.ENDED, ended_by="user")

    async def _suspend_cleanly(self) -> None:
        """A clean stop: checkpoint the crash count without this run (it did not crash)."""
        self._crash_resumes -= 1
        await self._save_checkpoint()
        log.info("session %s suspended at chunk %d", self.session_id, self.chunks_published)

    async def _open_source(self) -> MediaPlaylist | None:
        """The source's media playlist (None when stopped meanwhile). A fresh session fails at
        once when the source does not answer; a resumed one waits out the outage tolerance."""
        if self.resume_from is None:
            return await self._open_source_once()
        loop = asyncio.get_running_loop()
        since = loop.time()
        polls = 0
        while True:
            try:
                return await self._open_source_once()
            except (FetchError, PlaylistError) as exc:
                away = loop.time() - since
                if away > self.settings.outage_tolerance_s or not _transient(exc):
                    raise
                delay = outage_poll_delay(polls, 1.0, self.settings.outage_poll_max_s)
                log.warning(
                    "session %s: source unavailable on resume (%s); retrying in %.1fs",
                    self.session_id,
                    exc,
                    delay,
                )
                polls += 1
                await self._wait_or_stop(delay)
                if self._stop.is_set():
                    return None

    async def _open_source_once(self) -> MediaPlaylist | None:
        """Fetch the source URL; for a master playlist, pick a variant and fetch its media playlist."""
        url = self.command.source_url
        parsed = await self._until_stopped(self._load(url))
        if isinstance(parsed, MasterPlaylist):
            variant = choose_variant(parsed, self.settings.max_variant_bandwidth)
            log.info(
                "session %s: master playlist, chose variant %s (%d bit/s, %s)",
                self.session_id,
                variant.uri,
                variant.bandwidth,
                variant.resolution,
            )
            parsed = await self._until_stopped(self._load(variant.uri))
            if isinstance(parsed, MasterPlaylist):
                raise PlaylistError(
                    "variant of a master playlist is itself a master playlist", url=variant.uri
                )
        return parsed

    async def _load(self, url: str) -> MasterPlaylist | MediaPlaylist:
        fetched = await self.fetcher.get(url, kind="playlist")
        try:
            if len(fetched.content) <= INLINE_PARSE_MAX_BYTES:
                return _parse_fetched(fetched, self.playlist_limits)
            # Linear, but a playlist can be megabytes: parsed off the event loop.
            return await asyncio.to_thread(_parse_fetched, fetched, self.playlist_limits)
        except PlaylistError as exc:
            raise PlaylistError(exc.message, **exc.context, content_type=fetched.content_type) from exc

    async def _follow(self, playlist: MediaPlaylist) -> Literal["stream", "user", "suspend"]:
        """Ingest each new segment, reload the playlist, survive outages (see the module docstring)."""
        loop = asyncio.get_running_loop()
        loaded_at = last_progress = loop.time()
        refresh_error: IngestError | None = None
        outage_polls = 0  # polls since the outage began (0: no outage)
        while True:
            update = self.tracker.update(playlist)
            listed_at = time.time()  # the segments' ``segment_listed`` stamp (livestream.stages)
            self._edge_listed_at = loop.time() if update.new_segments and not update.ended else None
            self._reload_interval = playlist.target_duration
            for item in update.new_segments:
                if self._stop.is_set() or self._outage_over(loop.time() - last_progress):
                    break
                ingested = await self._ingest_segment(item, listed_at)
                if ingested:
                    await self._save_checkpoint()
                if ingested == "progress":
                    last_progress = loop.time()
                await self._report_lag_if_due()
            await self._report_lag_if_due()
            if self._stop.is_set():
                return self._stop_reason or "user"
            quiet_for = loop.time() - last_progress
            if self._outage_over(quiet_for):  # also when segments of an ended playlist stayed away
                return self._end_by_outage(quiet_for, refresh_error, playlist)
            if update.ended:
                if self.segments_decoded == 0:
                    raise DecodeError("stream ended without any decodable video", url=playlist.url)
                return "stream"
            in_outage = (
                refresh_error is not None
                or quiet_for > self.settings.stall_target_durations * playlist.target_duration
            )
            if not in_outage:
                if outage_polls:
                    log.info("session %s: source is back after %d poll(s)", self.session_id, outage_polls)
                outage_polls = 0
                interval = refresh_interval(playlist, update.changed)
            else:
                if outage_polls == 0:
                    log.warning(
                        "session %s: source %s (%s); polling with backoff for up to %gs",
                        self.session_id,
                        "unavailable" if refresh_error else "stopped growing",
                        refresh_error or f"no new segment for {quiet_for:.1f}s",
                        self.settings.outage_tolerance_s,
                    )
                interval = outage_poll_delay(
                    outage_polls, playlist.target_duration, self.settings.outage_poll_max_s
                )
                outage_polls += 1
            # Reload no sooner than that, counted from the last load; never past the tolerance.
            deadline = last_progress + self.settings.outage_tolerance_s + 1e-3
            wake_at = min(loaded_at + interval, max(deadline, loop.time()))
            await self._wait_or_stop(max(0.0, wake_at - loop.time()))
            if self._stop.is_set():
                return self._stop_reason or "user"
            loaded_at = loop.time()
            try:
                reloaded = await self._until_stopped(self._load(playlist.url))
            except (FetchError, PlaylistError) as exc:
                # Origin trouble (down, a 5xx, an error page): an outage until the tolerance decides.
                log.debug("session %s: playlist refresh failed: %s", self.session_id, exc)
                refresh_error = exc
                continue
            if reloaded is None:
                continue  # stopped: the loop returns at the top
            if isinstance(reloaded, MasterPlaylist):
                raise PlaylistError("media playlist turned into a master playlist", url=playlist.url)
            playlist, refresh_error = reloaded, None

    def _outage_over(self, quiet_for: float) -> bool:
        return quiet_for > self.settings.outage_tolerance_s

    def _end_by_outage(
        self, quiet_for: float, refresh_error: IngestError | None, playlist: MediaPlaylist
    ) -> Literal["stream"]:
        """The outage outlasted the tolerance: the stream is over (ENDED with the reason) if it
        ever gave video, else the session fails (``SourceStalledError``)."""
        what = f"last playlist refresh failed: {refresh_error.message}" if refresh_error else "no new segment"
        reason = (
            f"source stopped: nothing new for {quiet_for:.0f}s ({what}), longer than the outage tolerance "
            f"of {self.settings.outage_tolerance_s:g}s (LIVESTREAM_INGEST_OUTAGE_TOLERANCE_S)"
        )
        if self.segments_decoded == 0:
            raise SourceStalledError(f"{reason}; no video was ever ingested", url=playlist.url)
        log.info("session %s: %s", self.session_id, reason)
        self._end_reason = reason
        return "stream"

    # ------------------------------------------------------------------ one segment

    async def _ingest_segment(
        self, item: TrackedSegment, listed_at: float
    ) -> Literal["progress", "gap", False]:
        """Ingest one segment: "progress" when the source delivered it (decoded, or refused as
        bad), "gap" when it could not be fetched for a transient reason (no progress: part of an
        outage), False when a stop interrupted it (it is then not part of the session)."""
        segment = item.segment
        if item.missed_duration_before > 0:
            MISSED_MEDIA.inc(item.missed_duration_before)
            await asyncio.to_thread(self.store.add_gap, item.missed_duration_before)
        # The policy's state changes between segments only (the decode thread uses the sampler).
        if self.sampler.fps != self.lag_state.sample_fps:
            self.sampler.set_fps(self.lag_state.sample_fps)
        if self.lag_state.skipping:
            return await self._skip_segment(item)
        started = time.perf_counter()
        try:
            fetched = await self._until_stopped(self.fetcher.get(segment.uri, kind="segment"))
        except FetchError as exc:
            SEGMENT_FETCH_SECONDS.observe(time.perf_counter() - started)
            SEGMENTS.labels("fetch_failed").inc()
            await self._bad_segment(item, exc)
            return "gap" if _transient(exc) else "progress"
        if fetched is None:
            return False  # stopped mid-download: the segment is not part of the session
        SEGMENT_FETCH_SECONDS.observe(time.perf_counter() - started)
        stages = observe(StageTimes().at("segment_listed", listed_at), "segment_fetched")
        arrival = utcnow()
        self.chunker.add_segment(segment.media_sequence, item.stream_start, item.stream_end)

        covered = self._covered_time

        def keep(offset: float) -> bool:  # runs in the decode thread; only this task uses the sampler
            stream_time = item.stream_start + offset
            # Re-ingested media of a resumed session: frames before covered time are published.
            return stream_time >= covered - 1e-6 and self.sampler.accept(stream_time)

        try:
            decoded = await asyncio.to_thread(
                _stored_and_decoded,
                functools.partial(
                    self.store.add_segment,
                    fetched.content,
                    segment.duration,
                    segment.uri,
                    item.discontinuity,
                    segment.program_date_time or arrival,  # the same wall-clock base as its frames'
                ),
                functools.partial(
                    decode_segment,
                    fetched.content,
                    keep,
                    max_width=self.settings.max_frame_width,
                    max_pixels=self.settings.decode_max_pixels,
                    max_frames=frame_budget(segment.duration, self.settings.decode_max_fps),
                    url=segment.uri,
                    skip=self.settings.decode_skip,
                    thread_type=self.settings.decode_threads.upper(),  # type: ignore[arg-type]
                ),
            )
        except DecodeError as exc:  # refused ones too: skipped like undecodable ones
            SEGMENTS.labels("refused" if isinstance(exc, DecodeRefusedError) else "decode_failed").inc()
            await self._bad_segment(item, exc, stored=True)
            return "progress"
        stages = observe(stages, "segment_decoded")
        SEGMENTS.labels("decoded").inc()
        FRAMES_DECODED.inc(decoded.decoded_count)
        FRAMES_SAMPLED.inc(len(decoded.frames))
        self._bad_segments_in_a_row = 0
        self.segments_decoded += 1
        wall_clock_base = segment.program_date_time or arrival
        completed: list[Chunk] = []
        for frame in decoded.frames:
            sampled = SampledFrame(
                stream_time=item.stream_start + frame.offset,
                captured_at=wall_clock_base + timedelta(seconds=frame.offset),
                picture=frame.picture,
                media_sequence=segment.media_sequence,
            )
            completed += self.chunker.add(sampled)
        completed += self.chunker.advance_to(item.stream_end)
        await self._publish(completed, stages)
        self._mark(item, arrival)
        return "progress"

    async def _skip_segment(self, item: TrackedSegment) -> Literal["progress"]:
        """The ``skip`` policy: the analyzers are too far behind, so this segment is not fetched.

        Like an unfetchable segment it is a gap in the recording (``#EXT-X-GAP``) and its chunks
        are published without frames (chunk indexes stay contiguous, and the analyzers get
        through them at once); the chunks covering it say how much of them was skipped
        (``ChunkRecord.skipped_s``). It counts as progress: the source is fine. A crash during a
        skip resumes after the last checkpointed segment, skipped or not, with the policy at
        rest: the segments after it are fetched again if the source still lists them, until the
        next lag measurement (every ``lag_check_interval_s``) starts skipping again."""
        duration = item.segment.duration
        SKIPPED_SECONDS.inc(duration)
        self.skipped_s += duration
        self._skipped_spans.append((item.stream_start, item.stream_end))
        await asyncio.to_thread(self.store.add_gap, duration, item.discontinuity)
        await self._publish(self.chunker.advance_to(item.stream_end))
        self._mark(item, utcnow())
        return "progress"

    async def _bad_segment(self, item: TrackedSegment, error: IngestError, *, stored: bool = False) -> None:
        """A segment that cannot be fetched, decoded or afforded: a gap, unless too many come in a
        row (transient fetch failures are an outage: they never count)."""
        if not _transient(error):
            self._bad_segments_in_a_row += 1
        limit = self.settings.max_consecutive_bad_segments
        if self._bad_segments_in_a_row >= limit:
            if isinstance(error, DecodeRefusedError):
                what = "segments refused"
            elif isinstance(error, DecodeError):
                what = "no decodable video"
            else:
                what = "segments cannot be fetched"
            message = f"{what}: {limit} segment(s) in a row failed, last: {error.message}"
            if isinstance(error, FetchError):
                raise FetchError(message, url=error.url, status=error.status) from error
            raise DecodeError(message, **error.context) from error
        log.warning("session %s: skipping segment %d: %s", self.session_id, item.media_sequence, error)
        if not stored:
            await asyncio.to_thread(self.store.add_gap, item.segment.duration, item.discontinuity)
        await self._publish(self.chunker.advance_to(item.stream_end))
        self._mark(item, utcnow())

    # ------------------------------------------------------------------ checkpoints

    def _mark(self, item: TrackedSegment, ingested_at: datetime) -> None:
        date = item.segment.program_date_time
        self._marks.append(
            SegmentMark(
                media_sequence=item.media_sequence,
                stream_time=item.stream_end,
                program_date_time=date + timedelta(seconds=item.segment.duration) if date else None,
                ingested_at=ingested_at,
                segments_decoded=self.segments_decoded,
                manifest_entries=self.store.entry_count,
                segments_yielded=item.ordinal + 1,
                skipped_s=self.skipped_s,
            )
        )

    async def _save_checkpoint(self) -> None:
        """Overwrite the session's checkpoint with the current resume point (acked on return)."""
        covered = self.chunks_published * self.settings.chunk_seconds
        mark = resume_mark(self._marks, covered) if self._marks else START_MARK
        # Marks before the resume point are never needed again.
        self._marks = [m for m in self._marks if m.stream_time >= mark.stream_time]
        if self._crash_chunk is not None and self.chunks_published > self._crash_chunk:
            log.info(
                "session %s got past chunk %d, where its last run crashed: crash count reset",
                self.session_id,
                self._crash_chunk,
            )
            self._crash_resumes, self._crash_chunk = 1, None
        if self.checkpoints is None:
            return
        resume_point = (self.chunks_published, mark, self._crash_resumes, self.lag_state.actions)
        if resume_point == self._checkpointed and mark.ingested_at is not None:
            # The topic already holds this checkpoint, acked: a segment that completed no chunk
            # (half of them with 4 s chunks of 2 s segments) leaves the resume point where it
            # was. Only ``updated_at`` would change, which a resume reads only when the resume
            # point has no ``ingested_at`` (the start), so such checkpoints are always written.
            return
        checkpoint = build_checkpoint(
            self.command,
            self.chunks_published,
            self.settings.chunk_seconds,
            mark,
            self._crash_resumes,
            lag_actions=self.lag_state.actions,
        )
        await self.checkpoints.save_checkpoint(checkpoint)
        self._checkpointed = resume_point

    # ------------------------------------------------------------------ output

    async def _publish(self, chunks: list[Chunk], stages: StageTimes | None = None) -> None:
        """Encode and publish ``chunks``; ``stages``: the stamps of the segment that completed them
        (none for chunks completed by a skip, a bad segment or the end of the stream)."""
        for chunk in chunks:
            pictures = [(frame.stream_time, frame.picture) for frame in chunk.frames]
            skipped = overlap(self._skipped_spans, chunk.start_time, chunk.end_time)
            self._skipped_spans = [span for span in self._skipped_spans if span[1] > chunk.end_time]
            encoded = await asyncio.to_thread(
                encode_chunk,
                pictures,
                functools.partial(
                    build_chunk_record,
                    chunk,
                    self.command,
                    skipped_s=round(skipped, 6),
                    sample_fps=self.sampler.fps,
                ),
                max_width=self.settings.max_frame_width,
                quality=self.settings.jpeg_quality,
                session_id=self.session_id,
                chunk_index=chunk.index,
            )
            position = await self.publisher.publish_chunk(  # returns after the broker's ack
                encoded, observe(stages or StageTimes(), "chunk_published")
            )
            if position is not None:
                self.chunk_lag.published(*position, chunk.start_time, chunk.end_time)
            self.chunks_published += 1
            CHUNKS_PUBLISHED.inc()

    async def _flush(self) -> None:
        await self._publish(self.chunker.flush(self.tracker.stream_time))

    async def _report(
        self,
        state: IngestState,
        *,
        reason: str | None = None,
        ended_by: Literal["stream", "user"] | None = None,
    ) -> SessionLifecycle:
        if state is not IngestState.ACTIVE and self._store_open:
            try:
                await asyncio.to_thread(self.store.finish)
            except StorageError as exc:  # the report matters more than the local playback copy
                log.warning("session %s: %s", self.session_id, exc)
        report = SessionLifecycle(
            session_id=self.session_id,
            stream_id=self.command.stream_id,
            state=state,
            reason=reason,
            ended_by=ended_by,
            chunks_published=self.chunks_published,
            manifest_path=str(self.store.manifest_path.resolve()) if self._store_open else None,
            lag_s=self.lag_s,
            skipping=self.lag_state.skipping,
            skipped_s=self.skipped_s,
            sample_fps=self.sampler.fps,
            lag_actions=self.lag_state.actions,
        )
        await self.publisher.publish_lifecycle(report)
        self._lag_reported, self._lag_reported_at = self._lag_report(), time.monotonic()
        if state is not IngestState.ACTIVE:
            self.final_report = report
            # Only after the final report is acked: a crash in between resumes the session.
            if self.checkpoints is not None:
                await self.checkpoints.delete_checkpoint(self.session_id)
        log.info(
            "session %s %s (chunks=%d%s)",
            self.session_id,
            state.value,
            self.chunks_published,
            f", reason={reason}" if reason else f", ended_by={ended_by}" if ended_by else "",
        )
        return report

    # ------------------------------------------------------------------ overload policy

    def observe_lag(self, committed: Mapping[int, int], now: float) -> float:
        """Measure the lag against the analyzer group's ``committed`` offsets (by partition of the
        chunk topic) and step the overload policy (``ingest.lag``); return the lag.

        Called by the service on the event loop between this task's awaits; it only changes
        state, which ``_ingest_segment`` applies before the next segment. ``now`` is the event
        loop's clock. The source's live edge is the end of the newest segment the playlist
        listed, plus the media made since when ingest is overdue for its next load
        (``ingest.lag.source_edge``). After a resume, chunks published by the interrupted run
        are taken as analysed (their offsets were not kept): the lag is underestimated until
        the analyzers are past them.
        """
        self.chunk_lag.committed(committed)
        edge = source_edge(self.tracker.stream_time, self._edge_listed_at, self._reload_interval, now)
        lag = self.chunk_lag.lag(edge)
        self.lag_s = round(lag, 3)
        step = next_state(self.lag_policy, self.lag_state, lag, now)
        self.lag_state = step.state
        if step.action is not None:
            if step.action in COUNTED_ACTIONS:
                LAG_ACTIONS.labels(step.action).inc()
            what = {
                "skip": "skipping segments until the analyzers catch up",
                "resume": "the analyzers caught up: fetching segments again at the live edge",
                "thin": f"sampling rate lowered to {step.state.sample_fps:g} fps",
                "restore": f"sampling rate back to {step.state.sample_fps:g} fps",
            }[step.action]
            log.warning(
                "session %s: lag %.1fs (max %gs, policy %s): %s",
                self.session_id,
                lag,
                self.lag_policy.max_lag_s,
                self.lag_policy.policy,
                what,
            )
        return lag

    def _lag_report(self) -> LagReport:
        return LagReport(
            lag_s=self.lag_s or 0.0,
            skipped_s=self.skipped_s,
            sample_fps=self.sampler.fps,
            lag_actions=self.lag_state.actions,
            skipping=self.lag_state.skipping,
        )

    async def _report_lag_if_due(self) -> None:
        """An ACTIVE report when the lag view changed materially (rate-limited, ``report_due``)."""
        if self.lag_s is None:
            return
        due = report_due(
            self._lag_reported,
            self._lag_report(),
            time.monotonic() - self._lag_reported_at,
            self.settings.lag_report_interval_s,
            max(MATERIAL_LAG_CHANGE_S, self.lag_policy.max_lag_s / 10),
        )
        if due:
            await self._report(IngestState.ACTIVE)

    # ------------------------------------------------------------------ waiting

    async def _wait_or_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _until_stopped(self, work: Awaitable[T]) -> T | None:
        """Await ``work`` unless a stop is requested first (then cancel it and return None)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
        if not task.done() or task.cancelled():
            # Let the cancelled request unwind (closes its connection) before moving on.
            await asyncio.gather(task, return_exceptions=True)
            return None
        return task.result()


def _stored_and_decoded(store: Callable[[], object], decode: Callable[[], T]) -> T:
    """Store a segment (the recording's copy), then decode it, in one worker-thread hop: each
    hop costs the event loop a wake-up and the threads a hand-over of the GIL. The decoding's
    wall time is ``SEGMENT_DECODE_SECONDS`` and its CPU time (this thread's clock)
    ``DECODE_CPU_SECONDS``: with the whole stack's CPU under load, what decoding itself costs
    (``bench/capacity.py`` reports its share of ingest's CPU)."""
    store()
    started, cpu_started = time.perf_counter(), time.thread_time()
    try:
        return decode()
    finally:
        DECODE_CPU_SECONDS.inc(time.thread_time() - cpu_started)
        SEGMENT_DECODE_SECONDS.observe(time.perf_counter() - started)


def _parse_fetched(fetched: Fetched, limits: PlaylistLimits) -> MasterPlaylist | MediaPlaylist:
    """Decode and parse a fetched playlist (CPU work: in a worker thread when it is large)."""
    return parse_playlist(fetched.text, fetched.url, limits)


def _transient(error: IngestError) -> bool:
    """Whether ``error`` says the source is away for now (connection, timeout, 5xx), as opposed
    to what it serves being wrong: the former is an outage, the latter a bad segment or source."""
    if isinstance(error, FetchError):
        return error.retryable and (error.status is None or error.status >= 500)
    # A playlist that does not parse during an outage is typically an origin's error page.
    return isinstance(error, PlaylistError)
