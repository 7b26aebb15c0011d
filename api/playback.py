"""Signed playback of a session's recording (HLS), for any player.

* ``POST /api/live/session/{session_id}/signed-manifest`` (API key; the ``nomadic`` SDK's
  ``get_signed_manifest``): ``{"url", "expires_at", "method": "GET"}``, a URL of the session's
  playlist signed for ``playback_url_ttl_s``. 404 for an unknown session or another tenant's
  (exactly as the other routes), and 404 with a readable ``detail`` until the recording has a
  segment.
* ``GET /playback/{session_id}/index.m3u8?expires=&sig=``: the recording's playlist (an EVENT
  playlist that grows while the session runs, ``#EXT-X-ENDLIST`` once it ended) with every media
  URI replaced by a relative URI signed with the same expiry (``seg000012.ts?expires=&sig=``), so
  the playlist keeps working behind a proxy that mounts the API under a path.
  ``#EXT-X-GAP``/``#EXT-X-DISCONTINUITY``/``#EXT-X-PROGRAM-DATE-TIME`` pass through unchanged.
* ``GET|HEAD /playback/{session_id}/{segment}?expires=&sig=``: one segment file of the recording,
  with single-range requests (206, ``Content-Range``; 416 when unsatisfiable).

The playback routes take no API key (players cannot send one): the signature is the credential,
checked before anything else, so without a valid one nothing about a session is revealed. A
tampered or expired URL answers 403 with a JSON ``detail``. Only names of the recording's segment
files (``seg<digits>.<media suffix>``) are served, under the session's own directory of the blob
store (whose keys cannot leave it, see ``livestream.blobstore``).

Recordings are read through the ``BlobStore`` (``LIVESTREAM_STORAGE_*``): a local directory shared
with ingest, or an S3-compatible bucket.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from api.dependencies import HeaderCaller, kafka_runtime
from api.errors import PlaybackDenied, RangeNotSatisfiable, RecordingNotFound, SessionNotFound
from api.settings import ApiSettings
from api.signing import EXPIRES_PARAM, SIGNATURE_PARAM, PlaybackSigner
from api.tenants import session_tenant
from ingest.storage import MANIFEST_NAME, directory_name
from livestream.blobstore import (
    BlobKeyError,
    BlobNotFound,
    BlobRangeError,
    BlobStore,
    BlobStoreUnavailable,
    ByteRange,
    content_type_for,
)
from schemas.api import SignedManifestResponse
from schemas.records import SessionHeader

logger = logging.getLogger(__name__)

PLAYLIST_CONTENT_TYPE = "application/vnd.apple.mpegurl"
ENDLIST = "#EXT-X-ENDLIST"
# Segment files ingest writes (``ingest.storage``); nothing else of a recording is served here.
SEGMENT_NAME = re.compile(r"^seg\d{6,}\.(ts|m2ts|m4s|mp4|aac)$")
# A media URI of the manifest that gets signed: a plain file name beside the playlist.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Tags that belong to the next media entry: a manifest caught mid-append may end with them.
_ENTRY_TAGS = ("#EXTINF:", "#EXT-X-GAP", "#EXT-X-DISCONTINUITY", "#EXT-X-PROGRAM-DATE-TIME:")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# No length limits here: ``PlaybackSigner.verify`` refuses malformed values itself, so every bad
# signature answers 403 rather than a validation error.
SIGNATURE_QUERY = Annotated[str | None, Query(alias=SIGNATURE_PARAM)]
EXPIRES_QUERY = Annotated[str | None, Query(alias=EXPIRES_PARAM)]


# --------------------------------------------------------------------------- pure parts


def recording_key(session_id: str, name: str) -> str:
    """The blob key of a file of the session's recording (ingest's layout)."""
    return f"{directory_name(session_id)}/{name}"


def complete_lines(text: str) -> list[str]:
    """The manifest's lines without a trailing partial line or the tags of an unfinished entry.

    Ingest appends whole entries with one write, but a reader may still catch a write half done.
    """
    lines = [line.strip() for line in text.split("\n")]
    if not text.endswith("\n"):
        lines = lines[:-1]
    lines = [line for line in lines if line]
    while lines and lines[-1].startswith(_ENTRY_TAGS):
        lines.pop()
    return lines


def has_segment(text: str) -> bool:
    """Whether the manifest lists at least one recorded segment (not a gap)."""
    gap = False
    for line in complete_lines(text):
        if line == "#EXT-X-GAP":
            gap = True
        elif not line.startswith("#"):
            if not gap and SEGMENT_NAME.match(line):
                return True
            gap = False
    return False


def signed_playlist(text: str, sign_uri: Callable[[str], str], *, ended: bool) -> str:
    """The manifest with its media URIs signed, ending with ``#EXT-X-ENDLIST`` when the
    manifest says so or ``ended`` (the session is over); every other line as it is."""
    out: list[str] = []
    has_endlist = False
    for line in complete_lines(text):
        if line == ENDLIST:
            has_endlist = True
        elif not line.startswith("#") and _PLAIN_NAME.match(line):
            out.append(sign_uri(line))
        else:
            out.append(line)
    if has_endlist or ended:
        out.append(ENDLIST)
    return "\n".join(out) + "\n"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The inclusive byte range a ``Range`` header selects in ``size`` bytes, or None (whole).

    Only single ``bytes=`` ranges are honoured; anything else (other units, several ranges,
    malformed or reversed ranges) is ignored as RFC 9110 allows, so the whole file is served.
    ``RangeNotSatisfiable`` when a well-formed range selects no byte.
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable("the requested range selects no byte", size=size)
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable("the requested range starts past the end", size=size)
    return start, size - 1 if end is None else min(end, size - 1)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Playback:
    """What the playback routes need: the signer, the recordings and where URLs start."""

    signer: PlaybackSigner
    store: BlobStore
    public_base_url: str | None

    async def read(self, session_id: str, name: str, byte_range: ByteRange | None = None) -> bytes:
        """A file of the recording; ``RecordingNotFound`` if it does not exist."""
        try:
            blob = await asyncio.to_thread(self.store.get, recording_key(session_id, name), byte_range)
        except (BlobNotFound, BlobKeyError):
            raise RecordingNotFound(
                "no such file in the session's recording", session_id=session_id
            ) from None
        return blob.data

    async def manifest(self, session_id: str) -> str:
        """The recording's manifest; ``RecordingNotFound`` until ingest wrote a segment."""
        try:
            text = (await self.read(session_id, MANIFEST_NAME)).decode("utf-8")
        except RecordingNotFound:
            text = ""
        except UnicodeDecodeError:
            raise RecordingNotFound(
                "the session's recording manifest is unreadable", session_id=session_id
            ) from None
        if not has_segment(text):
            raise RecordingNotFound(
                "the session has no recorded segment yet: ask again once its first segment is stored",
                session_id=session_id,
            )
        return text


def signer_from_settings(settings: ApiSettings) -> PlaybackSigner:
    """The signer the settings describe; without a secret, a random one (logged once)."""
    if settings.playback_secret is None:
        secret = secrets.token_bytes(32)
        logger.warning(
            "LIVESTREAM_API_PLAYBACK_SECRET is not set: playback URLs are signed with a random secret, "
            "so they stop working when this API restarts, and several API replicas behind one address "
            "must be given the same secret"
        )
    else:
        secret = settings.playback_secret.get_secret_value().encode()
    previous = settings.playback_previous_secret
    until = settings.playback_previous_secret_valid_until
    return PlaybackSigner(
        secret=secret,
        ttl_s=settings.playback_url_ttl_s,
        previous_secret=previous.get_secret_value().encode() if previous is not None else None,
        previous_valid_until=until.timestamp() if until is not None else None,
    )


def install(app: FastAPI, settings: ApiSettings, store: BlobStore) -> None:
    """Add the playback routes, their state and their error answers to the API app."""
    app.state.playback = Playback(signer_from_settings(settings), store, settings.public_base_url)

    async def on_denied(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc)})

    async def on_missing(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    async def on_range(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RangeNotSatisfiable)
        headers = {"Content-Range": f"bytes */{exc.size}", "Accept-Ranges": "bytes"}
        return JSONResponse(status_code=416, content={"detail": str(exc)}, headers=headers)

    async def on_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        logger.warning("answering 503: %s", exc)
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "1"})

    app.add_exception_handler(PlaybackDenied, on_denied)
    app.add_exception_handler(RecordingNotFound, on_missing)
    app.add_exception_handler(RangeNotSatisfiable, on_range)
    app.add_exception_handler(BlobStoreUnavailable, on_unavailable)
    app.include_router(router)


# --------------------------------------------------------------------------- routes

router = APIRouter(tags=["playback"])


def _playback(request: Request) -> Playback:
    return request.app.state.playback


async def _visible_header(request: Request, session_id: str, tenant: str) -> SessionHeader:
    """The session's header if the tenant may see it; else ``SessionNotFound`` (404), as for an
    unknown session."""
    runtime = kafka_runtime(request)
    header = await runtime.sessions.header(session_id)
    default_tenant = request.app.state.settings.default_tenant
    if header is None or session_tenant(header, default_tenant) != tenant:
        raise SessionNotFound("session not found", session_id=session_id)
    return header


@router.post("/api/live/session/{session_id}/signed-manifest", response_model=SignedManifestResponse)
async def signed_manifest(request: Request, session_id: str, caller: HeaderCaller) -> SignedManifestResponse:
    """A playlist URL of the session's recording, signed for ``playback_url_ttl_s``."""
    await _visible_header(request, session_id, caller.tenant)
    playback = _playback(request)
    await playback.manifest(session_id)  # 404 until a segment is recorded
    signed = playback.signer.sign(session_id, MANIFEST_NAME)
    base = playback.public_base_url or str(request.base_url).rstrip("/")
    url = f"{base}/playback/{quote(session_id, safe='')}/{MANIFEST_NAME}?{signed.query()}"
    return SignedManifestResponse(url=url, expires_at=signed.expires_at, method="GET")


@router.get(f"/playback/{{session_id}}/{MANIFEST_NAME}", include_in_schema=False)
async def playlist(
    request: Request, session_id: str, expires: EXPIRES_QUERY = None, sig: SIGNATURE_QUERY = None
) -> Response:
    playback = _playback(request)
    until = playback.signer.verify(session_id, MANIFEST_NAME, expires, sig)
    runtime = kafka_runtime(request)
    header = await runtime.sessions.header(session_id)
    if header is None:  # purged since the URL was signed
        raise RecordingNotFound("the session's recording no longer exists", session_id=session_id)
    text = await playback.manifest(session_id)

    def sign_uri(name: str) -> str:
        return f"{name}?{playback.signer.sign(session_id, name, until).query()}"

    ended = header.status.terminal
    body = signed_playlist(text, sign_uri, ended=ended)
    # A growing playlist must be fetched again each time; a finished one may be cached until
    # its signatures expire.
    cache = f"private, max-age={_seconds_left(until)}" if body.endswith(f"{ENDLIST}\n") else "no-cache"
    return Response(content=body, media_type=PLAYLIST_CONTENT_TYPE, headers={"Cache-Control": cache})


@router.api_route("/playback/{session_id}/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def segment(
    request: Request,
    session_id: str,
    name: str,
    expires: EXPIRES_QUERY = None,
    sig: SIGNATURE_QUERY = None,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    playback = _playback(request)
    until = playback.signer.verify(session_id, name, expires, sig)
    if not SEGMENT_NAME.match(name):
        raise RecordingNotFound("not a segment of a recording", session_id=session_id)
    key = recording_key(session_id, name)
    try:
        info = await asyncio.to_thread(playback.store.stat, key)
    except BlobKeyError:
        info = None
    if info is None:
        raise RecordingNotFound("no such segment in the session's recording", session_id=session_id)
    byte_range = parse_range(range_header, info.size)
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": f"private, max-age={_seconds_left(until)}",
    }
    media_type = content_type_for(name)
    if request.method == "HEAD":
        start, end = byte_range if byte_range is not None else (0, info.size - 1)
        return _media_response(
            b"", media_type, headers, start, end, info.size, partial=byte_range is not None
        )
    try:
        blob = await asyncio.to_thread(playback.store.get, key, byte_range)
    except BlobNotFound:  # pruned between stat and get
        raise RecordingNotFound("no such segment in the session's recording", session_id=session_id) from None
    except BlobRangeError:  # replaced by a shorter file between stat and get
        raise RangeNotSatisfiable("the requested range starts past the end", size=info.size) from None
    return _media_response(
        blob.data, media_type, headers, blob.start, blob.end, blob.total_size, partial=byte_range is not None
    )


def _media_response(
    data: bytes, media_type: str, headers: dict[str, str], start: int, end: int, size: int, *, partial: bool
) -> Response:
    headers = headers | {"Content-Length": str(end - start + 1)}
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(content=data, status_code=206 if partial else 200, media_type=media_type, headers=headers)


def _seconds_left(until: int) -> int:
    return max(0, min(3600, math.floor(until - time.time())))
