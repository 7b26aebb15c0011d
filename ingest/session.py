"""One ingest session: follow a live HLS source, sample its frames, publish chunks and lifecycle.

Pipeline per segment, strictly in media-sequence order (one asyncio task per session):
fetch (async HTTP) -> store on disk (thread) -> decode + sample (thread) -> chunk (pure) ->
encode within budget (thread) -> produce and await the broker's ack -> count it.

Order of effects, and what a crash between them does:

1. ``ACTIVE`` is produced (and acked) once the source answered with a valid media playlist,
   before any chunk.
2. Each chunk is produced and its ack awaited *before* ``chunks_published`` is incremented
   and before the next chunk is produced, so the count only ever includes acknowledged
   chunks and chunks land in chunk_index order. The producer is idempotent, so its internal
   retries never duplicate a chunk.
3. At the end (``#EXT-X-ENDLIST``, EndSession, failure or service shutdown) the partial
   last chunk is flushed and acked, the local manifest gets ``#EXT-X-ENDLIST``, and only then
   the final ``ENDED``/``FAILED`` report carries ``chunks_published`` (final).

A crash of the process at any point loses the session's progress: no final report is
produced, and the session is not resumed (the command offset was committed when the session
started; see ``service``). Chunks acked before the crash stay on the topic. This is a
documented limitation: resuming a live source mid-way would need the tracker/chunker state
checkpointed in Kafka.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import Literal, Protocol, TypeVar

from ingest.chunker import Chunk, Chunker, SampledFrame, build_chunk_record
from ingest.decode import decode_segment
from ingest.encode import encode_chunk
from ingest.errors import (
    DecodeError,
    FetchError,
    IngestError,
    PlaylistError,
    SourceStalledError,
    StorageError,
)
from ingest.fetch import HttpFetcher
from ingest.playlist import MasterPlaylist, MediaPlaylist, choose_variant, parse_playlist
from ingest.sampler import FrameSampler
from ingest.settings import IngestSettings
from ingest.storage import SegmentStore
from ingest.tracker import PlaylistTracker, TrackedSegment, refresh_interval
from schemas.records import ChunkRecord, IngestState, SessionLifecycle, StartSession, utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")
StopReason = Literal["user", "shutdown"]

SHUTDOWN_REASON = "ingest service shut down while the session was running"


class RecordPublisher(Protocol):
    """Where a session's records go; each call returns once the broker acknowledged the record."""

    async def publish_chunk(self, record: ChunkRecord) -> None: ...

    async def publish_lifecycle(self, record: SessionLifecycle) -> None: ...


class IngestSession:
    def __init__(
        self,
        command: StartSession,
        settings: IngestSettings,
        fetcher: HttpFetcher,
        publisher: RecordPublisher,
    ) -> None:
        self.command = command
        self.settings = settings
        self.fetcher = fetcher
        self.publisher = publisher
        self.store = SegmentStore(settings.storage_dir, command.session_id)
        self.tracker = PlaylistTracker(settings.live_edge_segments)
        self.sampler = FrameSampler(settings.sample_fps)
        self.chunker = Chunker(settings.chunk_seconds)
        self.chunks_published = 0
        self.segments_decoded = 0
        self.final_report: SessionLifecycle | None = None
        self._bad_segments_in_a_row = 0
        self._store_open = False
        self._stop = asyncio.Event()
        self._stop_reason: StopReason | None = None

    @property
    def session_id(self) -> str:
        return self.command.session_id

    def request_stop(self, reason: StopReason = "user") -> None:
        """Stop following the source; ``run`` then flushes, publishes and reports."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    # ------------------------------------------------------------------ main flow

    async def run(self) -> SessionLifecycle:
        """Follow the source to its end; return the final (already published) lifecycle report."""
        try:
            await asyncio.to_thread(self.store.open)
            self._store_open = True
            playlist = await self._open_source()
            if playlist is None:  # stopped while still connecting
                return await self._finish_stopped()
            await self._report(IngestState.ACTIVE)
            ended_by = await self._follow(playlist)
        except IngestError as exc:
            log.warning("session %s failed: %s", self.session_id, exc)
            return await self.fail(str(exc))
        if ended_by == "shutdown":
            return await self.fail(SHUTDOWN_REASON)
        # Flush (each chunk acked, then counted), ENDLIST on the manifest, then the final report:
        # a crash before the report leaves no ENDED at all, never one with a wrong count.
        await self._flush()
        return await self._report(IngestState.ENDED, ended_by=ended_by)

    async def fail(self, reason: str) -> SessionLifecycle:
        """Flush what was sampled (best effort) and report FAILED with the final count."""
        try:
            await self._flush()
        except IngestError as exc:  # e.g. the partial chunk does not fit the budget
            log.warning("session %s: could not flush its last chunk: %s", self.session_id, exc)
        return await self._report(IngestState.FAILED, reason=reason)

    async def _finish_stopped(self) -> SessionLifecycle:
        if self._stop_reason == "shutdown":
            return await self.fail(SHUTDOWN_REASON)
        return await self._report(IngestState.ENDED, ended_by="user")

    async def _open_source(self) -> MediaPlaylist | None:
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
        fetched = await self.fetcher.get(url)
        try:
            return parse_playlist(fetched.text, fetched.url)
        except PlaylistError as exc:
            raise PlaylistError(exc.message, **exc.context, content_type=fetched.content_type) from exc

    async def _follow(self, playlist: MediaPlaylist) -> Literal["stream", "user", "shutdown"]:
        loop = asyncio.get_running_loop()
        loaded_at = last_progress = loop.time()
        refresh_error: IngestError | None = None
        while True:
            update = self.tracker.update(playlist)
            for item in update.new_segments:
                if self._stop.is_set():
                    break
                await self._ingest_segment(item)
                last_progress = loop.time()
            if self._stop.is_set():
                return self._stop_reason or "user"
            if update.ended:
                if self.segments_decoded == 0:
                    raise DecodeError("stream ended without any decodable video", url=playlist.url)
                return "stream"
            stalled_for = loop.time() - last_progress
            stall_limit = self.settings.stall_target_durations * playlist.target_duration
            if stalled_for > stall_limit:
                detail = f"; last playlist refresh failed: {refresh_error}" if refresh_error else ""
                raise SourceStalledError(
                    f"source stalled: no new segment for {stalled_for:.1f}s "
                    f"({self.settings.stall_target_durations:g} target durations){detail}",
                    url=playlist.url,
                    session_id=self.session_id,
                )
            # Reload no sooner than the spec allows, counted from the last load.
            interval = refresh_interval(playlist, update.changed)
            await self._wait_or_stop(max(0.0, loaded_at + interval - loop.time()))
            if self._stop.is_set():
                return self._stop_reason or "user"
            loaded_at = loop.time()
            try:
                reloaded = await self._until_stopped(self._load(playlist.url))
            except (FetchError, PlaylistError) as exc:
                # Transient origin trouble is retried until the stall timeout decides.
                log.warning("session %s: playlist refresh failed: %s", self.session_id, exc)
                refresh_error = exc
                continue
            if reloaded is None:
                continue  # stopped: the loop returns at the top
            if isinstance(reloaded, MasterPlaylist):
                raise PlaylistError("media playlist turned into a master playlist", url=playlist.url)
            playlist, refresh_error = reloaded, None

    # ------------------------------------------------------------------ one segment

    async def _ingest_segment(self, item: TrackedSegment) -> None:
        segment = item.segment
        if item.missed_before:
            await asyncio.to_thread(self.store.add_gap, item.missed_duration_before)
        try:
            fetched = await self._until_stopped(self.fetcher.get(segment.uri))
        except FetchError as exc:
            await self._bad_segment(item, exc)
            return
        if fetched is None:
            return  # stopped mid-download: the segment is not part of the session
        arrival = utcnow()
        await asyncio.to_thread(
            self.store.add_segment, fetched.content, segment.duration, segment.uri, item.discontinuity
        )
        self.chunker.add_segment(segment.media_sequence, item.stream_start, item.stream_end)

        def keep(offset: float) -> bool:  # runs in the decode thread; only this task uses the sampler
            return self.sampler.accept(item.stream_start + offset)

        try:
            decoded = await asyncio.to_thread(
                decode_segment,
                fetched.content,
                keep,
                max_width=self.settings.max_frame_width,
                url=segment.uri,
            )
        except DecodeError as exc:
            await self._bad_segment(item, exc, stored=True)
            return
        self._bad_segments_in_a_row = 0
        self.segments_decoded += 1
        wall_clock_base = segment.program_date_time or arrival
        completed: list[Chunk] = []
        for frame in decoded.frames:
            sampled = SampledFrame(
                stream_time=item.stream_start + frame.offset,
                capture_time=wall_clock_base + timedelta(seconds=frame.offset),
                image=frame.image,
                media_sequence=segment.media_sequence,
            )
            completed += self.chunker.add(sampled)
        completed += self.chunker.advance_to(item.stream_end)
        await self._publish(completed)

    async def _bad_segment(self, item: TrackedSegment, error: IngestError, *, stored: bool = False) -> None:
        """A segment that cannot be fetched or decoded: a gap, unless too many come in a row."""
        self._bad_segments_in_a_row += 1
        limit = self.settings.max_consecutive_bad_segments
        if self._bad_segments_in_a_row >= limit:
            what = "no decodable video" if isinstance(error, DecodeError) else "segments cannot be fetched"
            message = f"{what}: {limit} segment(s) in a row failed, last: {error.message}"
            if isinstance(error, FetchError):
                raise FetchError(message, url=error.url, status=error.status) from error
            raise DecodeError(message, **error.context) from error
        log.warning("session %s: skipping segment %d: %s", self.session_id, item.media_sequence, error)
        if not stored:
            await asyncio.to_thread(self.store.add_gap, item.segment.duration, item.discontinuity)
        await self._publish(self.chunker.advance_to(item.stream_end))

    # ------------------------------------------------------------------ output

    async def _publish(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            images = [(frame.stream_time, frame.image) for frame in chunk.frames]
            record = await asyncio.to_thread(
                encode_chunk,
                images,
                functools.partial(build_chunk_record, chunk, self.command),
                max_width=self.settings.max_frame_width,
                quality=self.settings.jpeg_quality,
                session_id=self.session_id,
                chunk_index=chunk.index,
            )
            await self.publisher.publish_chunk(record)  # returns after the broker's ack
            self.chunks_published += 1

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
        )
        await self.publisher.publish_lifecycle(report)
        if state is not IngestState.ACTIVE:
            self.final_report = report
        log.info(
            "session %s %s (chunks=%d%s)",
            self.session_id,
            state.value,
            self.chunks_published,
            f", reason={reason}" if reason else f", ended_by={ended_by}" if ended_by else "",
        )
        return report

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
