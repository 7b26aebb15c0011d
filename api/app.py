"""FastAPI application: the NomadicML-compatible livestream HTTP API over Kafka.

Routes (all ``/api`` routes need an API key, see ``api.auth``):

* ``POST /api/live/start-session`` (form: source_url, name, rapid_review_query?, stream_id?)
* ``POST /api/live/end-session`` (form: stream_id, session_id)
* ``GET  /api/live/live-sessions[?scope=personal|org|all]`` (default personal, as the SDK documents)
* ``GET  /api/live/live-sessions/{stream_id}/{session_id}``
* ``GET  /api/live/live-sessions/{stream_id}/{session_id}/events/stream`` (Server-Sent Events)
* ``GET  /healthz`` (no key): 200 once Kafka clients run and the session view caught up
* ``GET  /`` a small browser page (``api/static/index.html``)

Browsers' ``EventSource`` cannot send headers, so every ``/api`` route also accepts the key
as the ``api_key`` query parameter; prefer the headers elsewhere (query strings end up in
access logs).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from sse_starlette import EventSourceResponse

from analyzer.errors import QueryError
from analyzer.query import parse_query
from api.auth import API_KEY_QUERY_PARAM, ApiKeyAuthenticator
from api.errors import (
    AuthenticationFailed,
    CommandPublishError,
    NotSessionOwner,
    ServiceNotReady,
    SessionNotFound,
)
from api.feeds import SessionFeedHub, session_feed
from api.kafka_io import KafkaRuntime
from api.settings import ApiSettings
from api.views import ENDED_STATUSES, SessionView
from schemas.api import (
    EndSessionForm,
    EndSessionResponse,
    HealthResponse,
    SessionListResponse,
    SessionScope,
    StartSessionForm,
    StartSessionResponse,
)
from schemas.records import EndSession, SessionState, SessionStatus, StartSession

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


# --------------------------------------------------------------------------- dependencies


def authenticated_caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
    api_key: Annotated[str | None, Query(alias=API_KEY_QUERY_PARAM, include_in_schema=False)] = None,
) -> str:
    """The caller's key fingerprint; ``AuthenticationFailed`` (401) without a configured key."""
    authenticator: ApiKeyAuthenticator = request.app.state.authenticator
    return authenticator.authenticate(authorization=authorization, x_api_key=x_api_key, query_api_key=api_key)


Caller = Annotated[str, Depends(authenticated_caller)]


def kafka_runtime(request: Request, *, need_view: bool = True) -> KafkaRuntime:
    """The running Kafka clients; ``ServiceNotReady`` (503) while starting or catching up.

    Called in handler bodies (not as a dependency) so auth and form validation answer first.
    """
    runtime: KafkaRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.started:
        raise ServiceNotReady("Kafka clients are not started")
    if runtime.failure is not None:
        raise ServiceNotReady("a Kafka reader has failed", error=repr(runtime.failure))
    if need_view and not runtime.caught_up:
        raise ServiceNotReady("the session view is still catching up with the session-state topic")
    return runtime


# --------------------------------------------------------------------------- routes

live = APIRouter(prefix="/api/live", tags=["live"], dependencies=[Depends(authenticated_caller)])


@live.post("/start-session", response_model=StartSessionResponse)
async def start_session(
    request: Request, form: Annotated[StartSessionForm, Form()], caller: Caller
) -> StartSessionResponse:
    # Refuse, before anything is started, a query that names nothing the detector can find:
    # otherwise every chunk of the session would fail.
    parse_query(form.rapid_review_query)
    runtime = kafka_runtime(request, need_view=False)
    command = StartSession(
        session_id=uuid.uuid4().hex,
        stream_id=form.stream_id or uuid.uuid4().hex,
        name=form.name,
        source_url=form.source_url,
        rapid_review_query=form.rapid_review_query,
        created_by=caller,
    )
    await runtime.publisher.publish(command)
    runtime.view.add_pending_start(command)
    logger.info(
        "session started (session_id=%s, stream_id=%s, created_by=%s)",
        command.session_id,
        command.stream_id,
        caller,
    )
    return StartSessionResponse(
        session_id=command.session_id, stream_id=command.stream_id, status=SessionStatus.INITIALIZING
    )


@live.post("/end-session", response_model=EndSessionResponse)
async def end_session(
    request: Request, form: Annotated[EndSessionForm, Form()], caller: Caller
) -> EndSessionResponse:
    runtime = kafka_runtime(request)
    state = runtime.view.find(form.stream_id, form.session_id)
    if state is None:
        raise SessionNotFound("session not found", stream_id=form.stream_id, session_id=form.session_id)
    if state.created_by is not None and state.created_by != caller:
        # Any key may watch any session (one deployment is one organisation), but only the
        # key that started a session may end it, as the SDK documents (403).
        raise NotSessionOwner(
            "only the API key that started this session may end it", session_id=state.session_id
        )
    if state.status in ENDED_STATUSES:
        return EndSessionResponse(status="already_ended")
    command = EndSession(session_id=state.session_id, stream_id=state.stream_id)
    await runtime.publisher.publish(command)
    runtime.view.mark_end_requested(command)
    logger.info("session end requested (session_id=%s, by=%s)", state.session_id, caller)
    return EndSessionResponse(status="ended")


@live.get("/live-sessions", response_model=SessionListResponse)
async def list_sessions(
    request: Request, caller: Caller, scope: SessionScope | None = None
) -> SessionListResponse:
    runtime = kafka_runtime(request)
    # The SDK documents no scope as "personal": only the caller's own sessions.
    created_by = None if scope in (SessionScope.ORG, SessionScope.ALL) else caller
    return SessionListResponse(sessions=runtime.view.sessions(created_by=created_by))


@live.get("/live-sessions/{stream_id}/{session_id}", response_model=SessionState)
async def get_session(request: Request, stream_id: str, session_id: str) -> SessionState:
    runtime = kafka_runtime(request)
    state = runtime.view.find(stream_id, session_id)
    if state is None:
        raise SessionNotFound("session not found", stream_id=stream_id, session_id=session_id)
    return state


@live.get("/live-sessions/{stream_id}/{session_id}/events/stream", response_class=EventSourceResponse)
async def stream_session_events(request: Request, stream_id: str, session_id: str) -> EventSourceResponse:
    """``detection`` messages (id = event_id, data = Event JSON), then one ``end`` message."""
    runtime = kafka_runtime(request)
    if runtime.view.find(stream_id, session_id) is None:
        raise SessionNotFound("session not found", stream_id=stream_id, session_id=session_id)
    settings: ApiSettings = request.app.state.settings
    view = runtime.view
    return EventSourceResponse(
        session_feed(runtime.hub, lambda: view.get(session_id), session_id),
        ping=settings.sse_ping_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --------------------------------------------------------------------------- app


def _error_response(status_code: int, exc: Exception, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"detail": str(exc)}, headers=headers)


def create_app(settings: ApiSettings) -> FastAPI:
    """The API app; raises ``ConfigurationError`` when no API key is configured."""
    authenticator = ApiKeyAuthenticator(settings.require_api_keys())
    view = SessionView()
    hub = SessionFeedHub(queue_size=settings.subscriber_queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = KafkaRuntime(settings, view, hub)
        await runtime.start()
        app.state.runtime = runtime
        try:
            yield
        finally:
            app.state.runtime = None
            await runtime.stop()

    app = FastAPI(
        title="Livestream analytics API",
        description="NomadicML-compatible livestream sessions over Kafka.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = authenticator
    app.state.runtime = None

    async def on_auth_failed(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(401, exc, {"WWW-Authenticate": "Bearer"})

    async def on_not_found(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(404, exc)

    async def on_forbidden(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(403, exc)

    async def on_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        logger.warning("answering 503: %s", exc)
        return _error_response(503, exc, {"Retry-After": "1"})

    async def on_bad_query(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(422, exc)

    app.add_exception_handler(QueryError, on_bad_query)
    app.add_exception_handler(AuthenticationFailed, on_auth_failed)
    app.add_exception_handler(SessionNotFound, on_not_found)
    app.add_exception_handler(NotSessionOwner, on_forbidden)
    app.add_exception_handler(ServiceNotReady, on_unavailable)
    app.add_exception_handler(CommandPublishError, on_unavailable)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz(request: Request) -> JSONResponse:
        runtime: KafkaRuntime | None = request.app.state.runtime
        failure = runtime.failure if runtime is not None else None
        health = HealthResponse(
            status="failed" if failure else ("ok" if runtime is not None and runtime.ready else "starting"),
            kafka_clients_started=runtime is not None and runtime.started,
            session_view_caught_up=runtime is not None and runtime.caught_up,
            sessions=len(view),
            error=repr(failure) if failure else None,
        )
        return JSONResponse(status_code=200 if health.status == "ok" else 503, content=health.model_dump())

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.include_router(live)
    return app
