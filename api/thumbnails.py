"""Event thumbnails over HTTP: a signed ``thumbnail_url`` on every event, and the route serving it.

The analyzer stores one annotated JPEG per raw event beside the recording
(``<session_dir>/thumbs/<event_id>.jpg``, see ``analyzer.thumbnails``) before it produces the
event, and a merged event names the one of its most confident detection
(``Event.thumbnail_event_id``). The API adds to every event it returns (``get_session``, the
session list with ``include_events``, the ``/events`` page, both SSE feeds):

* ``thumbnail_url``: ``<base>/playback/<session_id>/thumbs/<thumbnail_event_id>.jpg?expires=&sig=``,
  signed exactly like playlist URLs (``api.playback``'s signer: same secret, rotation and
  lifetime; the signed name is ``thumbs/<id>.jpg``, so a signature for one thumbnail or session
  is worth nothing for another), or ``null`` when the event has no thumbnail. Each response (each
  SSE message) is signed when it is sent, so URLs from a long-lived feed are fresh too.
* ``GET|HEAD /playback/{session_id}/thumbs/{event_id}.jpg?expires=&sig=``: the JPEG
  (``image/jpeg``), no API key (``<img src>`` cannot send one): the signature is the credential,
  checked first; tampered or expired is 403 with a JSON ``detail``. Only names of the form
  ``<uuid>.jpg`` under the session's own ``thumbs/`` directory are served, whatever the URL says;
  a thumbnail that is gone (merged away, purged) is 404.

Response bodies are assembled from the store's JSON text (``api.sessions``): the URL is spliced
into each event's text in the store's thread, never by decoding whole bodies on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from api.errors import RecordingNotFound
from api.feeds import SseMessage
from api.playback import EXPIRES_QUERY, SIGNATURE_QUERY, Playback
from api.signing import PlaybackSigner
from ingest.storage import THUMBNAILS_DIR, thumbnail_key, thumbnail_name
from livestream.blobstore import BlobKeyError, BlobNotFound

THUMBNAIL_URL_FIELD = "thumbnail_url"
# Event ids are uuid5 strings (``schemas.records.event_id_for``): nothing else is a thumbnail.
THUMBNAIL_FILE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jpg$")
THUMBNAIL_CONTENT_TYPE = "image/jpeg"
# SSE messages whose data is an event (``api.feeds``).
EVENT_MESSAGES = frozenset({"detection", "update"})


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class ThumbnailLinks:
    """Signs thumbnail URLs for one response: the playback signer and where URLs start."""

    signer: PlaybackSigner
    base_url: str

    def url(self, session_id: str, thumbnail_event_id: str | None) -> str | None:
        """The signed URL of the thumbnail, or None when the event has none."""
        if not thumbnail_event_id or not session_id:
            return None
        signed = self.signer.sign(session_id, thumbnail_name(thumbnail_event_id))
        return (
            f"{self.base_url}/playback/{quote(session_id, safe='')}/{THUMBNAILS_DIR}/"
            f"{quote(thumbnail_event_id, safe='')}.jpg?{signed.query()}"
        )

    def event_json(self, session_id: str, event_json: str, thumbnail_event_id: str | None) -> str:
        """An ``Event``'s stored JSON object with ``thumbnail_url`` added (spliced, not re-encoded)."""
        return with_thumbnail_url(event_json, self.url(session_id, thumbnail_event_id))

    def record_json(self, session_id: str, record_json: str, thumbnail_event_id: str | None) -> str:
        """A ``SessionEvent``'s stored JSON with ``thumbnail_url`` added to its ``event``."""
        record = json.loads(record_json)
        record["event"][THUMBNAIL_URL_FIELD] = self.url(session_id, thumbnail_event_id)
        return json.dumps(record, separators=(",", ":"))

    def sse_message(self, message: SseMessage) -> SseMessage:
        """An SSE message with ``thumbnail_url`` in its data when it carries an event."""
        if message.get("event") not in EVENT_MESSAGES:
            return message
        data = json.loads(message["data"])
        data[THUMBNAIL_URL_FIELD] = self.url(str(data.get("session_id", "")), data.get("thumbnail_event_id"))
        return {**message, "data": json.dumps(data)}


def with_thumbnail_url(object_json: str, url: str | None) -> str:
    """``object_json`` (a non-empty JSON object, as pydantic writes it) with ``thumbnail_url`` last."""
    return f"{object_json[:-1]},{json.dumps(THUMBNAIL_URL_FIELD)}:{json.dumps(url)}}}"


async def with_thumbnail_urls(
    messages: AsyncIterator[SseMessage], links: ThumbnailLinks
) -> AsyncIterator[SseMessage]:
    """The feed's messages, events signed as each one is sent."""
    try:
        async for message in messages:
            yield links.sse_message(message)
    finally:
        # A client that goes away closes this generator: close the feed now too, so its
        # subscription is released at once rather than whenever the feed is collected.
        if isinstance(messages, AsyncGenerator):
            await messages.aclose()


def thumbnail_links(request: Request) -> ThumbnailLinks:
    """The links of this request's response (base: ``public_base_url`` or the request's)."""
    playback: Playback = request.app.state.playback
    base = playback.public_base_url or str(request.base_url).rstrip("/")
    return ThumbnailLinks(playback.signer, base)


# --------------------------------------------------------------------------- route

router = APIRouter(tags=["playback"])


@router.api_route(
    f"/playback/{{session_id}}/{THUMBNAILS_DIR}/{{name}}", methods=["GET", "HEAD"], include_in_schema=False
)
async def thumbnail(
    request: Request, session_id: str, name: str, expires: EXPIRES_QUERY = None, sig: SIGNATURE_QUERY = None
) -> Response:
    playback: Playback = request.app.state.playback
    # The signature first: without a valid one nothing about the session is revealed.
    until = playback.signer.verify(session_id, f"{THUMBNAILS_DIR}/{name}", expires, sig)
    if not THUMBNAIL_FILE.match(name):
        raise RecordingNotFound("not a thumbnail of a recording", session_id=session_id)
    event_id = name.removesuffix(".jpg")
    try:
        blob = await asyncio.to_thread(playback.store.get, thumbnail_key(session_id, event_id))
    except (BlobNotFound, BlobKeyError):
        raise RecordingNotFound(
            "no such thumbnail in the session's recording", session_id=session_id
        ) from None
    headers = {
        # A thumbnail never changes under its name; keep it for the signature's lifetime (capped).
        "Cache-Control": f"private, max-age={max(0, min(3600, until - int(playback.signer.clock())))}",
        "Content-Length": str(len(blob.data)),
    }
    body = b"" if request.method == "HEAD" else blob.data
    return Response(content=body, media_type=THUMBNAIL_CONTENT_TYPE, headers=headers)


__all__ = ["ThumbnailLinks", "router", "thumbnail_links", "with_thumbnail_url", "with_thumbnail_urls"]
