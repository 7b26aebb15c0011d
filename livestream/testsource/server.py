"""The live HLS test source: encodes a script in a background thread and serves it over HTTP.

Segment ``k`` is published (segment file written, then the playlist rewritten to list it) at
``start + (k + 1) * segment_seconds`` of wall-clock time, as a live encoder would: a client
sees the playlist grow in real time. ``realtime=False`` publishes as fast as encoding goes.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from livestream.testsource.errors import TestSourceError
from livestream.testsource.hls import (
    MASTER_PLAYLIST_NAME,
    MEDIA_PLAYLIST_NAME,
    PlaylistSegment,
    SlidingWindowPlaylist,
    render_master_playlist,
    segment_name,
    write_atomic,
)
from livestream.testsource.media import (
    EncodedSegment,
    encode_segments,
    frames_per_segment_for,
    render_frames,
)
from livestream.testsource.script import Script

logger = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
}


# --------------------------------------------------------------------------- HTTP


class _HlsRequestHandler(SimpleHTTPRequestHandler):
    """Static files of one folder, with HLS content types and no caching (playlists change)."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **CONTENT_TYPES}

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache, no-store, must-revalidate")
        self.send_header("Access-Control-Allow-Origin", "*")  # hls.js in a browser demo
        super().end_headers()

    def send_head(self) -> Any:
        # Last-Modified has 1 s resolution; a 304 could hide a playlist updated in the same second.
        del self.headers["If-Modified-Since"]
        return super().send_head()

    def list_directory(self, path: Any) -> None:
        self.send_error(404, "Not found")
        return None

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: clients poll the playlist several times a second


class _QuietThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-download (a stopped ingest) are normal, not errors to print.
        logger.debug("HTTP client %s dropped its request", client_address, exc_info=True)


class HlsHttpServer:
    """A threaded static HTTP server for ``directory`` on ``host:port`` (0: a free port)."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = functools.partial(_HlsRequestHandler, directory=str(directory))
        try:
            self._server = _QuietThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise TestSourceError(f"cannot listen: {exc}", host=host, port=port) from exc
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="hls-http", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


# --------------------------------------------------------------------------- the source


class LiveHlsSource:
    """A scripted live HLS stream (H.264 in MPEG-TS, sliding-window playlist) on a local HTTP server.

    >>> with LiveHlsSource(short_script(), realtime=False) as source:
    ...     source.wait_finished(timeout=30)
    ...     source.url  # http://127.0.0.1:PORT/live.m3u8
    """

    def __init__(
        self,
        script: Script,
        out_dir: Path | None = None,
        segment_seconds: float = 2.0,
        fps: int = 12,
        window: int = 6,
        realtime: bool = True,
        loop: bool = False,
        *,
        width: int = 640,
        height: int = 360,
        host: str = "127.0.0.1",
        port: int = 0,
        program_date_time: bool = True,
    ) -> None:
        if width % 2 or height % 2:
            raise TestSourceError("frame size must be even for yuv420p", width=width, height=height)
        self.script = script
        self.segment_seconds = segment_seconds
        self.fps = fps
        self.frames_per_segment = frames_per_segment_for(segment_seconds, fps)
        self.window = window
        self.realtime = realtime
        self.loop = loop
        self.width, self.height = width, height
        self.program_date_time = program_date_time
        self._owns_out_dir = out_dir is None
        self._requested_out_dir = out_dir
        self._host, self._requested_port = host, port
        self.out_dir: Path | None = None
        self._server: HlsHttpServer | None = None
        self._encoder_thread: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._end_requested = threading.Event()
        self._first_published = threading.Event()
        self._error: BaseException | None = None
        self._published = 0
        self._published_lock = threading.Lock()
        self.started_at: datetime | None = None  # wall-clock time of stream time 0

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        if self._server is None:
            raise TestSourceError("the source is not started")
        return self._server.port

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise TestSourceError("the source is not started")
        return self._server.base_url

    @property
    def playlist_url(self) -> str:
        """The live media playlist."""
        return f"{self.base_url}/{MEDIA_PLAYLIST_NAME}"

    @property
    def url(self) -> str:
        """The URL to hand to a consumer: the live media playlist."""
        return self.playlist_url

    @property
    def master_url(self) -> str:
        """A master playlist whose single variant is the media playlist."""
        return f"{self.base_url}/{MASTER_PLAYLIST_NAME}"

    @property
    def total_segments(self) -> int | None:
        """Segments of one pass of the script (``None`` when looping: the stream never ends by itself)."""
        if self.loop:
            return None
        return math.ceil(round(self.script.duration * self.fps) / self.frames_per_segment)

    @property
    def segments_published(self) -> int:
        with self._published_lock:
            return self._published

    @property
    def finished(self) -> bool:
        """The playlist carries ``#EXT-X-ENDLIST`` (or encoding stopped)."""
        return self._encoder_thread is not None and not self._encoder_thread.is_alive()

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_ready: bool = True, timeout: float | None = None) -> LiveHlsSource:
        """Serve and start encoding. With ``wait_ready``, return once the playlist lists its
        first segment (after one segment duration when real time), so clients never see a 404."""
        if self._server is not None:
            raise TestSourceError("the source is already started", url=self.url)
        if self._owns_out_dir:
            self.out_dir = Path(tempfile.mkdtemp(prefix="livestream-hls-"))
        else:
            assert self._requested_out_dir is not None
            self.out_dir = self._requested_out_dir
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for stale in [*self.out_dir.glob("segment_*.ts"), self.out_dir / MEDIA_PLAYLIST_NAME]:
                stale.unlink(missing_ok=True)  # a consumer must not see a previous run's stream
        self._server = HlsHttpServer(self.out_dir, self._host, self._requested_port)
        write_atomic(
            self.out_dir / MASTER_PLAYLIST_NAME,
            render_master_playlist(MEDIA_PLAYLIST_NAME, self.width, self.height, self.fps),
        )
        self._server.start()
        self._encoder_thread = threading.Thread(target=self._run_encoder, name="hls-encoder", daemon=True)
        self._encoder_thread.start()
        if wait_ready:
            ready_timeout = timeout if timeout is not None else self.segment_seconds + 30.0
            if not self._first_published.wait(ready_timeout):
                raise TestSourceError("no segment published in time", url=self.url, timeout=ready_timeout)
            self._raise_if_failed()
        return self

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Wait until the stream has ended (``#EXT-X-ENDLIST`` written); False on timeout.
        Raises :class:`TestSourceError` if encoding failed."""
        if self._encoder_thread is None:
            raise TestSourceError("the source is not started")
        self._encoder_thread.join(timeout)
        self._raise_if_failed()
        return not self._encoder_thread.is_alive()

    def end_stream(self) -> None:
        """End the stream gracefully: the next published segment is the last, with ``#EXT-X-ENDLIST``
        (how a looping source is ended while the server keeps serving)."""
        self._end_requested.set()

    def stop(self) -> None:
        """Stop encoding (without ENDLIST if the stream was still live), stop serving, clean up."""
        self._stop_requested.set()
        if self._encoder_thread is not None:
            self._encoder_thread.join()
        if self._server is not None:
            self._server.stop()
        if self._owns_out_dir and self.out_dir is not None:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def __enter__(self) -> LiveHlsSource:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise TestSourceError(f"encoding failed: {self._error}", url=self.url) from self._error

    # ------------------------------------------------------------------ encoder thread

    def _frames(self) -> Iterator[np.ndarray]:
        passes = itertools.count() if self.loop else range(1)
        for _ in passes:
            yield from render_frames(self.script, self.width, self.height, self.fps)

    def _run_encoder(self) -> None:
        try:
            self._publish_all()
        except BaseException as exc:  # surfaced to the caller by wait_finished / start
            logger.exception("live HLS source failed")
            self._error = exc
        finally:
            self._first_published.set()  # never leave start() waiting

    def _publish_all(self) -> None:
        assert self.out_dir is not None
        out_dir = self.out_dir
        playlist = SlidingWindowPlaylist(self.window, self.segment_seconds)
        retired: deque[str] = deque()  # dropped out of the window; deleted a window later
        started_monotonic = time.monotonic()
        self.started_at = datetime.now(UTC)
        last_index = None if self.total_segments is None else self.total_segments - 1
        segments = encode_segments(self._frames(), self.fps, self.frames_per_segment)
        try:
            for segment in segments:
                if self.realtime:
                    # Published once its last frame's wall-clock time has passed.
                    publish_at = started_monotonic + segment.start_time + segment.duration
                    if self._stop_requested.wait(max(0.0, publish_at - time.monotonic())):
                        return
                elif self._stop_requested.is_set():
                    return
                is_last = segment.index == last_index or self._end_requested.is_set()
                self._publish(out_dir, playlist, retired, segment, is_last)
                if is_last:
                    return
        finally:
            segments.close()  # releases the muxer and any open clip when stopped early

    def _publish(
        self,
        out_dir: Path,
        playlist: SlidingWindowPlaylist,
        retired: deque[str],
        segment: EncodedSegment,
        is_last: bool,
    ) -> None:
        assert self.started_at is not None
        uri = segment_name(segment.index)
        write_atomic(out_dir / uri, segment.data)
        program_date_time = (
            self.started_at + timedelta(seconds=segment.start_time) if self.program_date_time else None
        )
        dropped = playlist.add(PlaylistSegment(segment.index, uri, segment.duration, program_date_time))
        if is_last:
            playlist.end()
        write_atomic(out_dir / MEDIA_PLAYLIST_NAME, playlist.render())
        with self._published_lock:
            self._published += 1
        self._first_published.set()
        # Keep dropped segments for one more window: a client may have just read an older playlist.
        if dropped is not None:
            retired.append(dropped.uri)
            while len(retired) > self.window:
                (out_dir / retired.popleft()).unlink(missing_ok=True)
