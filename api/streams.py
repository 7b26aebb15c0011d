"""Named streams (the SDK's ``attach_stream``) and the session page link NomadicML's docs print.

* ``POST /api/live/attach-stream`` (form: stream_id, stream_name, source_url; key required) ->
  ``{"ok": true}``: records a named stream of the caller's tenant on the compacted
  ``<p>.streams`` topic (``AttachedStream``, key ``<tenant>/<stream_id>``). Attaching an id
  again replaces its name and source. ``source_url`` passes the same checks as start-session's
  (http/https, then the egress policy), and bad fields answer 422 with a readable ``detail``.
* ``GET /events/{stream_id}/{session_id}`` (no key): the web page, which opens that session
  once it has the user's key (the page asks for it as it does at ``/``). It serves the same
  page for any ids, so it tells nobody which sessions exist.

``start-session`` and streams, as NomadicML documents ``stream_id`` ("Existing parent stream ID.
Omit it to let the backend create one"; the SDK: "must already exist"):

* ``stream_id`` omitted: the API creates an id and records it as a stream of the caller's
  tenant (named after the session, with its source), so later sessions may pass it. Such a
  stream is retired (tombstoned) once retention purged the last session on it
  (``api.kafka_io``), so these records stay bounded like sessions; attached streams stay.
* ``stream_id`` of a stream the caller's tenant has (attached, or created by an earlier start):
  the session belongs to it. ``source_url`` and ``name`` stay required (the docs list both as
  required) and are the session's own; the stream's name and source are not substituted.
* any other ``stream_id`` (unknown, or another tenant's): 404 ``StreamNotFound``, with a
  detail naming attach-stream; nothing is started. Another tenant's stream answers exactly
  like an unknown one.

Streams survive API restarts and are shared by API replicas because every replica replays the
topic into its store (``api.store``) before it reports ready; a replica knows a stream it
wrote itself at once, the others once they read its record (well under a second).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse

from api.dependencies import HeaderCaller, kafka_runtime
from api.errors import ServiceNotReady, SessionNotFound
from api.kafka_io import KafkaRuntime
from api.tenants import Caller
from livestream.egress import check_source_url
from schemas.api import AttachStreamForm, AttachStreamResponse, StartSessionForm
from schemas.records import AttachedStream

logger = logging.getLogger(__name__)

INDEX_PAGE = Path(__file__).parent / "static" / "index.html"


class StreamNotFound(SessionNotFound):
    """``start-session`` named a ``stream_id`` the caller's tenant has not got (HTTP 404).

    A kind of ``SessionNotFound`` so the app's 404 handler answers it: the session cannot
    start because its parent stream does not exist.
    """


router = APIRouter(tags=["live"])


@router.post("/api/live/attach-stream", response_model=AttachStreamResponse)
async def attach_stream(
    request: Request, form: Annotated[AttachStreamForm, Form()], caller: HeaderCaller
) -> AttachStreamResponse:
    """Record (or rename) a stream of the caller's tenant; later sessions may pass its id."""
    await check_source_url(form.source_url, request.app.state.egress_policy)
    # Writing needs no view; the record reaches every replica's store through the topic.
    runtime = kafka_runtime(request, need_view=False)
    stream = AttachedStream(
        stream_id=form.stream_id,
        tenant=caller.tenant,
        stream_name=form.stream_name,
        source_url=form.source_url,
        origin="attach-stream",
        attached_by=caller.key_id,
    )
    await runtime.publisher.publish_stream(stream)
    runtime.sessions.add_pending_stream(stream)
    logger.info(
        "stream attached (stream_id=%s, tenant=%s, by=%s)", stream.stream_id, caller.tenant, caller.key_id
    )
    return AttachStreamResponse()


async def session_stream_id(runtime: KafkaRuntime, caller: Caller, form: StartSessionForm) -> str:
    """The ``stream_id`` a new session gets (see the module docstring for the rules).

    ``StreamNotFound`` (404) for a stream the caller's tenant has not got; ``ServiceNotReady``
    (503) while the streams topic is still being replayed; ``CommandPublishError`` (503) when
    the record of a created stream is not acknowledged (the session is then not started).
    """
    if form.stream_id is None:
        # Recorded before the session's command, so the id the caller gets back is always usable.
        stream = AttachedStream(
            stream_id=uuid.uuid4().hex,
            tenant=caller.tenant,
            stream_name=form.name,
            source_url=form.source_url,
            origin="start-session",
            attached_by=caller.key_id,
        )
        await runtime.publisher.publish_stream(stream)
        runtime.sessions.add_pending_stream(stream)
        return stream.stream_id
    if not runtime.caught_up:
        raise ServiceNotReady("the stream list is still catching up with the streams topic")
    if await runtime.sessions.find_stream(caller.tenant, form.stream_id) is None:
        raise StreamNotFound(
            f"stream {form.stream_id!r} not found: attach it first (POST /api/live/attach-stream) "
            "or omit stream_id to let the backend create one",
            stream_id=form.stream_id,
        )
    return form.stream_id


@router.get("/events/{stream_id}/{session_id}", include_in_schema=False)
async def session_page(stream_id: str, session_id: str) -> FileResponse:
    """The web page; its script opens this session (the link NomadicML's docs print)."""
    return FileResponse(INDEX_PAGE, media_type="text/html")
