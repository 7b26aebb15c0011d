"""Replayed live HLS streams: a script encoded once, served as any number of independent live streams.

:class:`LiveHlsSource` renders and x264-encodes its script in real time, which costs a few
tenths of a core per 720p25 stream. For load tests that run many streams on the machine under
test, :func:`encode_script` encodes the script ONCE, ahead of time, with the test source's own
renderer and encoder/segmenter (:func:`~livestream.testsource.media.render_frames`,
:func:`~livestream.testsource.media.encode_segments`), and each :class:`ReplayHlsSource` then
serves those same segment bytes from memory as a live stream of its own:

* segment ``k`` is published at ``start + (k + 1) * segment_seconds`` of wall-clock time (after
  its last frame's time, as :class:`LiveHlsSource` publishes it), each source from its own start;
* the live media playlist (``live.m3u8``, a :class:`SlidingWindowPlaylist`) grows as segments
  are published, with ``#EXT-X-MEDIA-SEQUENCE``, an ``#EXT-X-PROGRAM-DATE-TIME`` per segment
  (``started_at`` + the segment's stream time) and ``#EXT-X-ENDLIST`` after the last segment;
* a small threaded HTTP server on 127.0.0.1 serves the playlist, ``master.m3u8`` and the
  published segments (404 for a segment not yet published).

It exposes what a caller of :class:`LiveHlsSource` uses: ``url``, ``started_at``,
``segments_published``, ``total_segments``, ``finished``, ``start``/``wait_finished``/``stop``
and the context manager. Every stream carries the same H.264 bytes, so a consumer still decodes
real video; only the encoding cost is gone from the machine.

>>> encoded = encode_script(short_script(), segment_seconds=2.0, fps=25, width=1280, height=720)
>>> with ReplayHlsSource(encoded) as one, ReplayHlsSource(encoded) as two:
...     print(one.url, two.url)
...     one.wait_finished(timeout=30)
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from livestream.testsource.errors import TestSourceError
from livestream.testsource.hls import (
    MASTER_PLAYLIST_NAME,
    MEDIA_PLAYLIST_NAME,
    PlaylistSegment,
    SlidingWindowPlaylist,
    render_master_playlist,
    segment_name,
)
from livestream.testsource.media import (
    EncodedSegment,
    encode_segments,
    frames_per_segment_for,
    render_frames,
)
from livestream.testsource.script import Script

logger = logging.getLogger(__name__)

_SEGMENT_PATH = re.compile(r"^/segment_(\d{6})\.ts$")


@dataclass(frozen=True)
class EncodedStream:
    """A script's whole stream, encoded once: self-contained MPEG-TS segments and their format."""

    segments: tuple[EncodedSegment, ...]
    segment_seconds: float
    fps: int
    width: int
    height: int

    @property
    def duration(self) -> float:
        return sum(segment.duration for segment in self.segments)

    @property
    def nbytes(self) -> int:
        return sum(len(segment.data) for segment in self.segments)


def encode_script(
    script: Script,
    *,
    segment_seconds: float = 2.0,
    fps: int = 12,
    width: int = 640,
    height: int = 360,
    profile: str = "zerolatency",
) -> EncodedStream:
    """Render and encode ``script`` as :class:`LiveHlsSource` does (same renderer, encoder and
    segmenter; ``profile``: the x264 settings, ``media.ENCODER_PROFILES``), as fast as it goes;
    the result can be replayed by any number of sources."""
    if width % 2 or height % 2:
        raise TestSourceError("frame size must be even for yuv420p", width=width, height=height)
    frames_per_segment = frames_per_segment_for(segment_seconds, fps)
    segments = encode_segments(
        render_frames(script, width, height, fps), fps, frames_per_segment, profile=profile
    )
    try:
        encoded = tuple(segments)
    finally:
        segments.close()
    if not encoded:
        raise TestSourceError("the script has no frames", duration=script.duration)
    return EncodedStream(encoded, segment_seconds, fps, width, height)


# --------------------------------------------------------------------------- HTTP


class _ReplayRequestHandler(BaseHTTPRequestHandler):
    """Serves one :class:`ReplayHlsSource` from memory (``self.server.source``)."""

    protocol_version = "HTTP/1.1"  # keep-alive: a poller reuses its connection
    timeout = 30  # an idle keep-alive connection is closed after this many seconds

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def _respond(self, *, body: bool) -> None:
        source: ReplayHlsSource = self.server.source  # type: ignore[attr-defined]
        found = source._resource(self.path.split("?", 1)[0])
        if found is None:
            self.send_error(404, "Not found")
            return
        payload, content_type = found
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, no-store, must-revalidate")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: clients poll the playlist several times a second


class _ReplayHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], source: ReplayHlsSource) -> None:
        self.source = source
        super().__init__(address, _ReplayRequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("HTTP client %s dropped its request", client_address, exc_info=True)


# --------------------------------------------------------------------------- the source


class ReplayHlsSource:
    """One live HLS stream replaying an :class:`EncodedStream` in real time from its own start,
    on its own HTTP server (127.0.0.1, a free port unless ``port``)."""

    def __init__(
        self,
        encoded: EncodedStream,
        window: int | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        program_date_time: bool = True,
    ) -> None:
        self.encoded = encoded
        self.segment_seconds = encoded.segment_seconds
        self.fps = encoded.fps
        self.width, self.height = encoded.width, encoded.height
        # Default: the playlist lists every segment (a replayed stream is short).
        self.window = window if window is not None else len(encoded.segments) + 1
        self.program_date_time = program_date_time
        self._host, self._requested_port = host, port
        self._server: _ReplayHttpServer | None = None
        self._server_thread: threading.Thread | None = None
        self._publisher: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._first_published = threading.Event()
        self._lock = threading.Lock()
        self._published = 0
        self._playlist_text = b""
        self._master = render_master_playlist(MEDIA_PLAYLIST_NAME, self.width, self.height, self.fps).encode()
        self.started_at: datetime | None = None  # wall-clock time of stream time 0
        self.out_dir: Path | None = None  # nothing on disk: the segments are in ``encoded``

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        if self._server is None:
            raise TestSourceError("the source is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def playlist_url(self) -> str:
        return f"{self.base_url}/{MEDIA_PLAYLIST_NAME}"

    @property
    def url(self) -> str:
        """The URL to hand to a consumer: the live media playlist."""
        return self.playlist_url

    @property
    def master_url(self) -> str:
        return f"{self.base_url}/{MASTER_PLAYLIST_NAME}"

    @property
    def total_segments(self) -> int:
        return len(self.encoded.segments)

    @property
    def segments_published(self) -> int:
        with self._lock:
            return self._published

    @property
    def finished(self) -> bool:
        """The playlist carries ``#EXT-X-ENDLIST`` (or the source was stopped)."""
        return self._publisher is not None and not self._publisher.is_alive()

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_ready: bool = True, timeout: float | None = None) -> ReplayHlsSource:
        """Serve and start the live clock. With ``wait_ready``, return once the playlist lists
        its first segment (after one segment duration), so clients never see an empty playlist."""
        if self._server is not None:
            raise TestSourceError("the source is already started", url=self.url)
        try:
            self._server = _ReplayHttpServer((self._host, self._requested_port), self)
        except OSError as exc:
            raise TestSourceError(
                f"cannot listen: {exc}", host=self._host, port=self._requested_port
            ) from exc
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="replay-http", daemon=True
        )
        self._server_thread.start()
        self._publisher = threading.Thread(target=self._publish_all, name="replay-publisher", daemon=True)
        self._publisher.start()
        if wait_ready:
            ready_timeout = timeout if timeout is not None else self.segment_seconds + 30.0
            if not self._first_published.wait(ready_timeout):
                raise TestSourceError("no segment published in time", url=self.url, timeout=ready_timeout)
        return self

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Wait until the stream has ended (``#EXT-X-ENDLIST`` listed); False on timeout."""
        if self._publisher is None:
            raise TestSourceError("the source is not started")
        self._publisher.join(timeout)
        return not self._publisher.is_alive()

    def stop(self) -> None:
        """Stop publishing (without ENDLIST if the stream was still live) and stop serving."""
        self._stop_requested.set()
        if self._publisher is not None:
            self._publisher.join()
        if self._server is not None:
            if self._server_thread is not None and self._server_thread.is_alive():
                self._server.shutdown()
                self._server_thread.join()
            self._server.server_close()

    def __enter__(self) -> ReplayHlsSource:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ publishing and serving

    def _publish_all(self) -> None:
        try:
            playlist = SlidingWindowPlaylist(self.window, self.segment_seconds)
            started_monotonic = time.monotonic()
            self.started_at = datetime.now(UTC)
            last = len(self.encoded.segments) - 1
            for segment in self.encoded.segments:
                # Published once its last frame's wall-clock time has passed, as LiveHlsSource does.
                publish_at = started_monotonic + segment.start_time + segment.duration
                if self._stop_requested.wait(max(0.0, publish_at - time.monotonic())):
                    return
                program_date_time = (
                    self.started_at + timedelta(seconds=segment.start_time)
                    if self.program_date_time
                    else None
                )
                uri = segment_name(segment.index)
                playlist.add(PlaylistSegment(segment.index, uri, segment.duration, program_date_time))
                if segment.index == last:
                    playlist.end()
                text = playlist.render().encode()
                with self._lock:
                    self._playlist_text = text
                    self._published = segment.index + 1
                self._first_published.set()
        finally:
            self._first_published.set()  # never leave start() waiting

    def _resource(self, path: str) -> tuple[bytes, str] | None:
        """The bytes and content type served at ``path``; None: 404."""
        with self._lock:
            published, playlist = self._published, self._playlist_text
        if path == f"/{MEDIA_PLAYLIST_NAME}":
            return (playlist, "application/vnd.apple.mpegurl") if published else None
        if path == f"/{MASTER_PLAYLIST_NAME}":
            return self._master, "application/vnd.apple.mpegurl"
        match = _SEGMENT_PATH.match(path)
        if match is None:
            return None
        index = int(match.group(1))
        # Segments that left the sliding window stay served, as LiveHlsSource keeps them a while.
        if index >= published or index >= len(self.encoded.segments):
            return None
        return self.encoded.segments[index].data, "video/mp2t"
