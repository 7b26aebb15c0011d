"""FastAPI application: the NomadicML-compatible livestream HTTP API over Kafka.

Routes (all ``/api`` routes need an API key, see ``api.auth``; a caller sees only its own
tenant's sessions, another tenant's answer 404 like unknown ones):

* ``POST /api/live/start-session`` (form: source_url, name, rapid_review_query?, stream_id?);
  429 when the key or its tenant has as many running sessions as it may
* ``POST /api/live/end-session`` (form: stream_id, session_id): ``ended`` (also re-sent while the
  session is ENDING, so a lost end command can be repeated) or ``already_ended``
* ``GET  /api/live/live-sessions[?scope=personal|org|all&limit=100&cursor=...&include_events=false]``:
  a page of sessions newest first (default personal, as the SDK documents; ``org`` and ``all``
  both mean the caller's tenant), ``next_cursor``
* ``GET  /api/live/live-sessions/{stream_id}/{session_id}``
  ``[?events_after&events_limit&chunks_after&chunks_limit]``: the session with ALL its merged
  events by default (the SDK's ``iter_events`` reads them) and its most recent 1000 chunks
* ``GET  /api/live/live-sessions/{stream_id}/{session_id}/events?after=<cursor>&limit=100``:
  the latest version of each merged event after a cursor, in cursor order
* ``GET  /api/live/live-sessions/{stream_id}/{session_id}/events/stream`` (SSE, resumable)
* ``GET  /api/live/events/stream?scope=personal|org|all`` (SSE of every visible session, resumable)
* ``POST /api/live/feed-token``: a short-lived token for the SSE routes (``?token=``)
* ``POST /api/live/session/{session_id}/signed-manifest``: a signed playlist URL of the session's
  recording; ``/playback/...`` serves it without a key (see ``api.playback``)
* every event returned carries ``thumbnail_url``, signed like the playlist and served by
  ``/playback/{session_id}/thumbs/<id>.jpg`` (see ``api.thumbnails``)
* ``POST /api/live/attach-stream`` (form: stream_id, stream_name, source_url): a named stream
  of the caller's tenant that later sessions pass as ``stream_id`` (see ``api.streams``)
* ``GET  /healthz`` (no key): 200 once Kafka clients run and the session topics are caught up;
  503 once a broker outage outlasted ``broker_outage_limit_s`` (the process then exits 2)
* ``GET  /events/{stream_id}/{session_id}`` (no key): the web app, opened on that session (the
  link the SDK's docs print after start-session)
* ``GET  /`` the web app (``api/static/index.html``; its assets under ``/static/``)

Prometheus metrics (``livestream_api_...``: requests by route template and status class, open SSE
feeds, SSE messages) are never served on this port: this API is meant to be exposed and the
scrape endpoint has no key. With ``LIVESTREAM_API_METRICS_PORT`` set, a listener of their own
serves them (``livestream.metrics``), bound to ``LIVESTREAM_API_METRICS_HOST`` (default: the
API's host), for the operator to keep off the public network; unset (the default), none.

The SSE messages are described in ``api.feeds``. Browsers' ``EventSource`` cannot send
headers, so the SSE routes also accept ``?token=`` (and ``?api_key=`` unless disabled) and
``last_event_id`` for ``Last-Event-ID``; every other route refuses credentials in the query
string (401). Per key: a request rate (429 with ``Retry-After``) and a number of open SSE feeds
(429); request bodies above ``max_body_bytes`` answer 413 before authentication.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Gauge, Histogram
from sse_starlette import EventSourceResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from analyzer.understanding.runtime import shared_interpreter
from api import playback
from api.auth import API_KEY_QUERY_PARAM, TOKEN_QUERY_PARAM, Authenticator
from api.dependencies import HeaderCaller, kafka_runtime
from api.errors import (
    AuthenticationFailed,
    CommandPublishError,
    InvalidCursor,
    LimitExceeded,
    NotSessionOwner,
    QueryRefused,
    ServiceNotReady,
    SessionNotFound,
    StoreError,
)
from api.feeds import AllSessionsFeed, SessionFeedHub, SseMessage, all_sessions_feed, session_feed
from api.kafka_io import KafkaRuntime
from api.limits import FeedLease, FeedSlots, RateLimiter, SessionQuota
from api.sessions import Sessions
from api.settings import ApiSettings
from api.store import NO_CURSOR, ListsQuery, StoreWorker
from api.streams import router as streams_router
from api.streams import session_stream_id
from api.tenants import Audience, Caller, KeyRing
from api.thumbnails import router as thumbnails_router
from api.thumbnails import thumbnail_links, with_thumbnail_urls
from api.tokens import FeedTokens
from api.views import SessionView
from livestream.blobstore import BlobStore, open_blob_store
from livestream.blobstore.settings import BlobStoreSettings
from livestream.egress import EgressError, EgressPolicy, check_source_url
from livestream.metrics import LATENCY_BUCKETS_S, start_metrics_server
from schemas.api import (
    EndSessionForm,
    EndSessionResponse,
    FeedTokenResponse,
    HealthResponse,
    SessionEventsPage,
    SessionListResponse,
    SessionResponse,
    SessionScope,
    StartSessionForm,
    StartSessionResponse,
)
from schemas.interpretation import Interpretation
from schemas.records import EndSession, SessionStatus, StartSession

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

SESSIONS_PAGE_DEFAULT = 100  # what the SDK's get_sessions (no parameters) sees: the newest 100
SESSIONS_PAGE_MAX = 1000
CHUNKS_PAGE_DEFAULT = 1000
CHUNKS_PAGE_MAX = 10_000
EVENTS_PAGE_DEFAULT = 100
EVENTS_PAGE_MAX = 1000
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# --------------------------------------------------------------------------- metrics

# Labels stay bounded: the route's path template (never the raw URL, which holds ids), a known
# method or "other", a status class; SSE feeds by kind ("session" or "all").
HTTP_REQUESTS = Counter(
    "livestream_api_http_requests_total",
    "HTTP requests answered, by route template (unmatched: no route), method and status class (2xx..5xx).",
    ["route", "method", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "livestream_api_http_request_seconds",
    "Time from a request's arrival to its response headers, by route template (an SSE feed: until "
    "it starts streaming).",
    ["route"],
    buckets=LATENCY_BUCKETS_S,
)
SSE_SUBSCRIBERS = Gauge("livestream_api_sse_subscribers", "Open SSE feeds, by kind.", ["feed"])
SSE_MESSAGES = Counter(
    "livestream_api_sse_messages_total",
    "SSE messages (detection, update, end, resync...) handed to open feeds, by kind; pings excluded.",
    ["feed"],
)
for _feed in ("session", "all"):
    SSE_SUBSCRIBERS.labels(_feed)
    SSE_MESSAGES.labels(_feed)
UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The path template of the route that handled ``scope`` (a mount's prefix), else "unmatched"."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class RequestMetrics:
    """ASGI middleware counting each HTTP request when its response starts.

    Pure ASGI rather than ``BaseHTTPMiddleware``, which would buffer nothing but wrap every
    streaming (SSE) response in a task of its own. The router records the matched route in the
    scope before any response starts, so its template is known by then; a request whose handler
    raised without answering is counted as the 500 the outer error middleware sends.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        def record(status: int) -> None:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            HTTP_REQUESTS.labels(route, method, status_class(status)).inc()
            HTTP_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)

        async def send_counted(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if not answered:
                record(500)


async def counted_messages(content: AsyncIterator[SseMessage], feed: str) -> AsyncIterator[SseMessage]:
    """``content``, counting each message handed on to the connection."""
    messages = SSE_MESSAGES.labels(feed)
    async for message in content:
        messages.inc()
        yield message


# --------------------------------------------------------------------------- dependencies


def feed_caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
    api_key: Annotated[str | None, Query(alias=API_KEY_QUERY_PARAM, include_in_schema=False)] = None,
    token: Annotated[
        str | None,
        Query(alias=TOKEN_QUERY_PARAM, description="A feed token from POST /api/live/feed-token."),
    ] = None,
) -> Caller:
    """The caller of an SSE route: header key, ``?token=`` or ``?api_key=``; then its rate limit."""
    authenticator: Authenticator = request.app.state.authenticator
    caller = authenticator.for_feed(
        authorization=authorization, x_api_key=x_api_key, query_api_key=api_key, token=token
    )
    request.app.state.rate_limiter.check(caller.key_id)
    return caller


FeedCaller = Annotated[Caller, Depends(feed_caller)]
LastEventIdHeader = Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=False)]
LastEventIdQuery = Annotated[
    str | None,
    Query(description="For browsers' EventSource: the Last-Event-ID to resume after (the header wins)."),
]


def audience(scope: SessionScope | None, caller: Caller) -> Audience:
    """The caller's tenant's sessions; only its own key's for ``personal`` (the SDK's default).

    ``org`` and ``all`` both mean the whole tenant: no scope crosses tenants.
    """
    return Audience(caller.tenant, None if scope in (SessionScope.ORG, SessionScope.ALL) else caller.key_id)


class FeedResponse(EventSourceResponse):
    """An SSE response that frees its key's feed slot however the stream ends (and is counted
    as an open feed of its ``feed`` kind while it streams)."""

    def __init__(
        self, content: AsyncIterator[SseMessage], lease: FeedLease, ping: float, *, feed: str
    ) -> None:
        super().__init__(counted_messages(content, feed), ping=ping, headers=SSE_HEADERS)
        self._lease = lease
        self._feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscribers = SSE_SUBSCRIBERS.labels(self._feed)
        subscribers.inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            subscribers.dec()
            self._lease.release()


def json_response(body: str) -> Response:
    # Bodies are assembled from the store's JSON text (see api.sessions): no re-validation.
    return Response(content=body, media_type="application/json")


# --------------------------------------------------------------------------- routes

# Every route declares its caller: header keys (HeaderCaller) or, on SSE routes, FeedCaller.
live = APIRouter(prefix="/api/live", tags=["live"])


@live.post("/start-session", response_model=StartSessionResponse)
async def start_session(
    request: Request, form: Annotated[StartSessionForm, Form()], caller: HeaderCaller
) -> StartSessionResponse:
    # Refuse, before anything is started, a query the models cannot honestly answer (the rule is
    # in analyzer/understanding/interpretation.py: 422 with its interpretation) and a source the
    # egress policy refuses (ingest checks again at connect time, on every request and redirect hop).
    options = form.analysis_options
    interpretation = await interpret_query(form.rapid_review_query, options.zones if options else None)
    await check_source_url(form.source_url, request.app.state.egress_policy)
    quota: SessionQuota = request.app.state.session_quota
    # Counting running sessions needs the whole view; without session limits a start needs none.
    runtime = kafka_runtime(request, need_view=quota.enabled)
    of_key, of_tenant = runtime.sessions.running_counts(caller.tenant, caller.key_id)
    with quota.admit(caller, of_key, of_tenant):
        # An attached stream of the caller's tenant, or a new one when omitted (api.streams).
        stream_id = await session_stream_id(runtime, caller, form)
        command = StartSession(
            session_id=uuid.uuid4().hex,
            stream_id=stream_id,
            name=form.name,
            source_url=form.source_url,
            rapid_review_query=form.rapid_review_query,
            interpretation=interpretation,
            options=options,
            created_by=caller.key_id,
            tenant=caller.tenant,
        )
        await runtime.publisher.publish(command)
        runtime.sessions.add_pending_start(command)
    logger.info(
        "session started (session_id=%s, stream_id=%s, tenant=%s, created_by=%s)",
        command.session_id,
        command.stream_id,
        caller.tenant,
        caller.key_id,
    )
    return StartSessionResponse(
        session_id=command.session_id,
        stream_id=command.stream_id,
        status=SessionStatus.INITIALIZING,
        interpretation=interpretation,
        options=command.options,
    )


async def interpret_query(query: str | None, zones: Collection[str] | None = None) -> Interpretation:
    """The query's interpretation, or ``QueryRefused`` (422, with the interpretation) by the rule.

    The interpreter is built once per process (``shared_interpreter``, warmed up at start-up);
    interpreting is CPU work (one embedding call), so both run in a worker thread.
    """
    interpretation = await asyncio.to_thread(lambda: shared_interpreter().interpret(query, zones or ()))
    if not interpretation.accepted:
        reasons = "; ".join(interpretation.warnings) or "nothing in it can be detected"
        raise QueryRefused(f"the query cannot be answered as written: {reasons}", interpretation)
    return interpretation


@live.post("/end-session", response_model=EndSessionResponse)
async def end_session(
    request: Request, form: Annotated[EndSessionForm, Form()], caller: HeaderCaller
) -> EndSessionResponse:
    runtime = kafka_runtime(request)
    header = await runtime.sessions.find(form.stream_id, form.session_id, caller.tenant)
    if header.created_by is not None and header.created_by != caller.key_id:
        # Any key of the tenant may watch the tenant's sessions, but only the key that started
        # a session may end it, as the SDK documents (403).
        raise NotSessionOwner(
            "only the API key that started this session may end it", session_id=header.session_id
        )
    if header.status.terminal:
        return EndSessionResponse(status="already_ended")
    # An ENDING session gets the command again: the first one may have been lost (a source
    # that keeps running), and ingest and aggregator treat a repeated end as a no-op.
    command = EndSession(session_id=header.session_id, stream_id=header.stream_id)
    await runtime.publisher.publish(command)
    runtime.sessions.mark_end_requested(command, header)
    logger.info(
        "session end requested (session_id=%s, tenant=%s, by=%s, status=%s)",
        header.session_id,
        caller.tenant,
        caller.key_id,
        header.status,
    )
    return EndSessionResponse(status="ended")


@live.get("/live-sessions", response_model=SessionListResponse)
async def list_sessions(
    request: Request,
    caller: HeaderCaller,
    scope: SessionScope | None = None,
    limit: Annotated[int, Query(ge=1, le=SESSIONS_PAGE_MAX)] = SESSIONS_PAGE_DEFAULT,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page")
    ] = None,
    include_events: Annotated[
        bool, Query(description="Each session with its events and chunks, as get_session returns it.")
    ] = False,
) -> Response:
    """A page of sessions, newest first; items are headers unless ``include_events``."""
    runtime = kafka_runtime(request)
    body = await runtime.sessions.list_body(
        audience(scope, caller), cursor, limit, include_events, thumbnail_links(request)
    )
    return json_response(body)


@live.get("/live-sessions/{stream_id}/{session_id}", response_model=SessionResponse)
async def get_session(
    request: Request,
    caller: HeaderCaller,
    stream_id: str,
    session_id: str,
    events_after: Annotated[
        int | None, Query(ge=0, description="Only events whose latest version's cursor is above this.")
    ] = None,
    events_limit: Annotated[int | None, Query(ge=0, description="At most this many events.")] = None,
    chunks_after: Annotated[int | None, Query(ge=-1, description="Only chunks with a larger index.")] = None,
    chunks_limit: Annotated[int, Query(ge=0, le=CHUNKS_PAGE_MAX)] = CHUNKS_PAGE_DEFAULT,
) -> Response:
    """The session with its events and chunks.

    ``events``: by default every merged event (latest version), ordered by start time; with
    ``events_after`` or ``events_limit``, a page in cursor order (``events_next_cursor`` for the
    next one). ``chunks``: by default the most recent ``chunks_limit`` (1000) by index; with
    ``chunks_after`` the ``chunks_limit`` chunks after that index (``chunks_next_after``).
    ``events_total``/``chunks_total`` count them all.
    """
    runtime = kafka_runtime(request)
    header = await runtime.sessions.find(stream_id, session_id, caller.tenant)
    query = ListsQuery(
        events_after=events_after,
        events_limit=events_limit,
        chunks_after=chunks_after,
        chunks_limit=chunks_limit,
    )
    return json_response(await runtime.sessions.session_body(header, query, thumbnail_links(request)))


@live.get("/live-sessions/{stream_id}/{session_id}/events", response_model=SessionEventsPage)
async def list_session_events(
    request: Request,
    caller: HeaderCaller,
    stream_id: str,
    session_id: str,
    after: Annotated[int, Query(ge=0, description="A cursor: only versions written after it.")] = NO_CURSOR,
    limit: Annotated[int, Query(ge=1, le=EVENTS_PAGE_MAX)] = EVENTS_PAGE_DEFAULT,
) -> Response:
    """The latest version (``SessionEvent``) of each merged event whose cursor is above ``after``."""
    runtime = kafka_runtime(request)
    await runtime.sessions.find(stream_id, session_id, caller.tenant)
    links = thumbnail_links(request)
    return json_response(await runtime.sessions.events_page_body(session_id, after, limit, links))


@live.get("/live-sessions/{stream_id}/{session_id}/events/stream", response_class=EventSourceResponse)
async def stream_session_events(
    request: Request,
    caller: FeedCaller,
    stream_id: str,
    session_id: str,
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
) -> EventSourceResponse:
    """``detection``/``update`` (id = session cursor), then ``end``; ``resync`` for an unusable id."""
    runtime = kafka_runtime(request)
    await runtime.sessions.find(stream_id, session_id, caller.tenant)
    settings: ApiSettings = request.app.state.settings
    lease = request.app.state.feed_slots.acquire(caller.key_id)
    sessions = runtime.sessions
    feed = session_feed(sessions.hub, sessions, session_id, last_event_id_header or last_event_id)
    return FeedResponse(
        with_thumbnail_urls(feed, thumbnail_links(request)),
        lease,
        ping=settings.sse_ping_seconds,
        feed="session",
    )


@live.get("/events/stream", response_class=EventSourceResponse)
async def stream_all_events(
    request: Request,
    caller: FeedCaller,
    scope: SessionScope | None = None,
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
) -> EventSourceResponse:
    """Messages of every session the scope shows (see ``api.feeds``), ids ``<epoch>-<seq>``."""
    runtime = kafka_runtime(request)
    settings: ApiSettings = request.app.state.settings
    lease = request.app.state.feed_slots.acquire(caller.key_id)
    feed = all_sessions_feed(
        runtime.sessions.all_feed, audience(scope, caller), last_event_id_header or last_event_id
    )
    return FeedResponse(
        with_thumbnail_urls(feed, thumbnail_links(request)),
        lease,
        ping=settings.sse_ping_seconds,
        feed="all",
    )


@live.post("/feed-token", response_model=FeedTokenResponse)
async def feed_token(request: Request, caller: HeaderCaller) -> FeedTokenResponse:
    """A token the SSE routes accept as ``?token=`` for a few minutes, in place of the key."""
    authenticator: Authenticator = request.app.state.authenticator
    issued = authenticator.tokens.issue(caller)
    return FeedTokenResponse(
        token=issued.token,
        expires_at=datetime.fromtimestamp(issued.expires_at, UTC),
        expires_in=max(0, int(issued.expires_at - time.time())),
    )


# --------------------------------------------------------------------------- app


def _error_response(status_code: int, exc: Exception, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"detail": str(exc)}, headers=headers)


def _stop_process(app: FastAPI, error: Exception) -> None:
    """Ask the serving process to stop with ``error`` (logged already), if it said how."""
    stop_process = app.state.stop_process
    if stop_process is not None:
        stop_process(error)


def create_app(settings: ApiSettings, blob_store: BlobStore | None = None) -> FastAPI:
    """The API app; ``ConfigurationError`` without a key, with a short key or a key of two tenants.

    ``blob_store`` holds the recordings the playback routes serve; default: the one
    ``LIVESTREAM_STORAGE_*`` configures (ingest's storage directory unless told otherwise).
    """
    keys = KeyRing(settings.tenant_keys(), settings.min_key_length)
    authenticator = Authenticator(
        keys,
        FeedTokens(settings.feed_token_ttl_seconds, settings.feed_token_secret_bytes()),
        sse_query_api_key=settings.sse_query_api_key,
    )
    logger.info("API keys configured: %d key(s) of %d tenant(s)", len(keys), len(keys.tenants))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A separate listener, never this app's port (see the module docstring); None when unset.
        # First, so a port already taken stops the start-up before anything else is opened.
        metrics = start_metrics_server("api", settings.effective_metrics_host, settings.metrics_port)
        try:
            async with _serving(app) as runtime:
                app.state.runtime = runtime
                yield
        finally:
            app.state.runtime = None
            if metrics is not None:
                await asyncio.to_thread(metrics.close)

    @asynccontextmanager
    async def _serving(app: FastAPI) -> AsyncIterator[KafkaRuntime]:
        store = await StoreWorker.open(settings.store_dir, settings.store_cache_mib, settings.default_tenant)
        sessions = Sessions(
            SessionView(
                settings.recent_finished_sessions, settings.recent_finished_seconds, settings.default_tenant
            ),
            store,
            SessionFeedHub(queue_size=settings.subscriber_queue_size),
            AllSessionsFeed(
                ring_size=settings.global_feed_ring_size, queue_size=settings.subscriber_queue_size
            ),
        )
        runtime = KafkaRuntime(settings, sessions, on_outage=lambda error: _stop_process(app, error))
        try:
            # The query interpreter's models load now: a missing model stops the start-up with the
            # build command, and the first start-session does not wait for them.
            await asyncio.to_thread(shared_interpreter)
            await runtime.start()
            yield runtime
        finally:
            app.state.runtime = None
            await runtime.stop()
            await store.close()

    app = FastAPI(
        title="Livestream analytics API",
        description="NomadicML-compatible livestream sessions over Kafka.",
        version="0.2.0",
        lifespan=lifespan,
        # Starlette's body limit, outside every route: a declared Content-Length above it is
        # refused before the body is read, a body without one is cut off while it streams.
        # Routes read their form before resolving dependencies, so this answers 413 before
        # authentication (and a bodiless route's answer is replaced by the 413).
        max_body_size=settings.max_body_bytes,
    )
    app.add_middleware(RequestMetrics)
    app.state.settings = settings
    app.state.egress_policy = EgressPolicy.from_settings(settings)
    app.state.authenticator = authenticator
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    app.state.feed_slots = FeedSlots(settings.max_sse_per_key)
    app.state.session_quota = SessionQuota(
        settings.max_active_sessions_per_key, settings.max_active_sessions_per_tenant
    )
    app.state.runtime = None
    # Set by ``python -m api``: how the process stops itself (a broker outage past the limit).
    app.state.stop_process = None

    async def on_auth_failed(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(401, exc, {"WWW-Authenticate": "Bearer"})

    async def on_not_found(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(404, exc)

    async def on_forbidden(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(403, exc)

    async def on_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        logger.warning("answering 503: %s", exc)
        return _error_response(503, exc, {"Retry-After": "1"})

    async def on_unprocessable(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(422, exc)

    async def on_query_refused(_request: Request, exc: Exception) -> JSONResponse:
        # What can and cannot be detected, so the user can rephrase.
        assert isinstance(exc, QueryRefused)
        content = {"detail": str(exc), "interpretation": exc.interpretation.model_dump(mode="json")}
        return JSONResponse(status_code=422, content=content)

    async def on_limit(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LimitExceeded)
        logger.info("answering 429 (%s %s): %s", request.method, request.url.path, exc)
        return _error_response(429, exc, {"Retry-After": str(exc.retry_after)})

    app.add_exception_handler(QueryRefused, on_query_refused)
    app.add_exception_handler(EgressError, on_unprocessable)
    app.add_exception_handler(InvalidCursor, on_unprocessable)
    app.add_exception_handler(AuthenticationFailed, on_auth_failed)
    app.add_exception_handler(SessionNotFound, on_not_found)
    app.add_exception_handler(NotSessionOwner, on_forbidden)
    app.add_exception_handler(ServiceNotReady, on_unavailable)
    app.add_exception_handler(CommandPublishError, on_unavailable)
    app.add_exception_handler(StoreError, on_unavailable)
    app.add_exception_handler(LimitExceeded, on_limit)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz(request: Request) -> JSONResponse:
        runtime: KafkaRuntime | None = request.app.state.runtime
        failure = runtime.failure if runtime is not None else None
        health = HealthResponse(
            status="failed" if failure else ("ok" if runtime is not None and runtime.ready else "starting"),
            kafka_clients_started=runtime is not None and runtime.started,
            session_view_caught_up=runtime is not None and runtime.caught_up,
            sessions=runtime.sessions.stored_sessions if runtime is not None else 0,
            sessions_in_memory=len(runtime.sessions.view) if runtime is not None else 0,
            error=repr(failure) if failure else None,
        )
        return JSONResponse(status_code=200 if health.status == "ok" else 503, content=health.model_dump())

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.include_router(live)
    app.include_router(streams_router)
    # The web app's modules, styles and vendored hls.js (no key: they hold nothing private).
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    playback.install(app, settings, blob_store or open_blob_store(BlobStoreSettings()))
    app.include_router(thumbnails_router)  # signed event thumbnails, beside the recordings
    return app
