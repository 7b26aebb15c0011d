"""The API's embedded SQLite store: the compacted session and stream topics, materialized.

``SessionStore`` is the synchronous store (one ``sqlite3`` connection, used by one thread);
``StoreWorker`` owns that thread and gives the event loop awaitable calls, so no SQLite work
and no decoding of (possibly large) record batches ever runs on the event loop.

Tables, each mirroring what compaction keeps of one topic:

* ``headers``: the latest ``SessionHeader`` per session (``<p>.session-state``), with its
  tenant as a column for listing (``api.tenants.session_tenant``: older records, which name no
  tenant, are the default tenant's; placeholders nobody's);
* ``chunks``: one ``ChunkSummary`` per (session, chunk_index) (``<p>.session-chunks``);
* ``events``: the latest ``SessionEvent`` per (session, number) (``<p>.session-events``), with
  its cursor, start time and lifecycle as columns for paging, the record's JSON and, apart,
  its ``Event``'s JSON (so ``get_session`` serves thousands of events by joining stored text
  instead of decoding and re-encoding every one), and its ``thumbnail_event_id`` (so reads can
  splice a signed ``thumbnail_url`` into that text, see ``api.thumbnails``);
* ``streams``: the latest ``AttachedStream`` per (tenant, stream_id) (``<p>.streams``): the
  named streams ``start-session`` accepts as ``stream_id``.

A header tombstone purges the session at once (header, chunks, events) and records its id in
``purged``, so chunk and event records of that session still on their way (the topics are
not ordered with each other) are dropped instead of lingering until their own tombstones.

The database is disposable (rebuilt from the topics by every process), so it runs without
fsync and with its rollback journal in memory; each Kafka fetch is applied in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from api.errors import StoreError
from api.tenants import Audience, Owner, session_tenant
from livestream.errors import RecordError
from livestream.kafka.serde import decode_value
from livestream.stages import StageTimes
from schemas.records import AttachedStream, SessionChunk, SessionEvent, SessionHeader, SessionStatus

if TYPE_CHECKING:  # a type only: api.thumbnails imports the routes' modules, which import this one
    from api.thumbnails import ThumbnailLinks

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NO_CURSOR = 0  # "before every cursor": the aggregator numbers feed records from 1

SCHEMA = """
CREATE TABLE headers (
    session_id TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL,
    created_by TEXT,
    tenant TEXT,
    created_at_us INTEGER NOT NULL,
    status TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX headers_newest ON headers (created_at_us DESC, session_id DESC);
CREATE INDEX headers_by_tenant ON headers (tenant, created_at_us DESC, session_id DESC);
CREATE INDEX headers_by_creator ON headers (created_by, created_at_us DESC, session_id DESC);
CREATE INDEX headers_by_stream ON headers (tenant, stream_id);
CREATE TABLE chunks (
    session_id TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (session_id, chunk_index)
);
CREATE TABLE events (
    session_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    start_time REAL NOT NULL,
    lifecycle TEXT NOT NULL,
    record_json TEXT NOT NULL,
    event_json TEXT NOT NULL,
    thumbnail TEXT,
    PRIMARY KEY (session_id, number)
);
CREATE INDEX events_by_cursor ON events (session_id, cursor);
CREATE INDEX events_by_start ON events (session_id, start_time, number);
CREATE TABLE purged (session_id TEXT PRIMARY KEY);
CREATE TABLE streams (
    tenant TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (tenant, stream_id)
);
"""


def created_at_us(moment: datetime) -> int:
    """Microseconds since the epoch (naive times taken as UTC), the sessions' sort key."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - EPOCH) // timedelta(microseconds=1)


# --------------------------------------------------------------------------- records in, changes out


class TopicKind(StrEnum):
    HEADERS = "session-state"
    CHUNKS = "session-chunks"
    EVENTS = "session-events"
    STREAMS = "streams"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One fetched Kafka record, still undecoded."""

    kind: TopicKind
    key: bytes | None
    value: bytes | None
    topic: str = ""
    offset: int = -1
    stages: StageTimes | None = None  # its ``livestream-stages`` header (event records), if any


@dataclass(frozen=True, slots=True)
class HeaderWritten:
    """A session's header was stored.

    ``previous_status`` is the stored status it replaced (None: the session's first header);
    ``max_event_cursor`` the newest event cursor stored for the session after the batch.
    """

    header: SessionHeader
    previous_status: SessionStatus | None
    max_event_cursor: int


@dataclass(frozen=True, slots=True)
class EventWritten:
    """A version of a merged event was stored; ``owner`` from its session's stored header (if any)."""

    record: SessionEvent
    owner: Owner | None
    stages: StageTimes | None = None  # the stamps its record carried (``livestream.stages``)


@dataclass(frozen=True, slots=True)
class SessionPurged:
    """A header tombstone removed the session and all its rows."""

    session_id: str
    stream_id: str | None
    owner: Owner | None


@dataclass(frozen=True, slots=True)
class StreamWritten:
    """A named stream was stored (attached, re-attached or created by a session start)."""

    stream: AttachedStream


Change = HeaderWritten | EventWritten | SessionPurged | StreamWritten


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """What one batch changed: event versions first, then headers and purges in record order.

    Events go first because the two topics are not ordered with each other: a header that made
    the session terminal is then judged against every event the same batch brought.
    """

    changes: list[Change]
    stored_sessions: int


# --------------------------------------------------------------------------- reads


@dataclass(frozen=True, slots=True)
class ListsQuery:
    """Which part of a session's lists ``get_session`` returns (see ``SessionStore.session_lists``)."""

    events_after: int | None = None
    events_limit: int | None = None
    chunks_after: int | None = None
    chunks_limit: int = 1000


@dataclass(frozen=True, slots=True)
class SessionLists:
    """A session's chunk and event pages as JSON arrays of stored text, with totals and next positions."""

    chunks_json: str
    events_json: str
    chunks_total: int
    events_total: int
    chunks_next_after: int | None
    events_next_cursor: int | None


@dataclass(frozen=True, slots=True)
class EventsPage:
    """A page of ``SessionEvent`` JSON texts in cursor order; ``last_cursor`` of the last one."""

    events_json: str
    last_cursor: int | None


def _json_array(texts: Sequence[str]) -> str:
    return "[" + ",".join(texts) + "]"


def _event_text(session_id: str, event_json: str, thumbnail: str | None, links: ThumbnailLinks | None) -> str:
    return event_json if links is None else links.event_json(session_id, event_json, thumbnail)


def _parse_child_key(record: RawRecord, kind: str) -> tuple[str, int]:
    """A tombstone's ``<session_id>/<kind>/<n>`` key -> (session_id, n); ``RecordError`` otherwise."""
    text = record.key.decode(errors="replace") if record.key is not None else ""
    session_id, found, number = text.rsplit("/", 2) if text.count("/") >= 2 else ("", "", "")
    if found != kind or not session_id or not (number.isascii() and number.isdigit()):
        raise RecordError(
            f"tombstone key is not <session_id>/{kind}/<n>",
            key=text,
            topic=record.topic,
            offset=record.offset,
        )
    return session_id, int(number)


class SessionStore:
    """Synchronous SQLite store; every method must run on the thread that opened it."""

    def __init__(self, path: Path, cache_mib: int = 64, default_tenant: str = "default") -> None:
        self.path = path
        self.default_tenant = default_tenant
        # isolation_level=None: transactions are explicit (one per applied batch).
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=MEMORY")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
        self._db.execute("PRAGMA temp_store=MEMORY")
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'headers'").fetchone():
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ writes

    def apply(self, records: Sequence[RawRecord]) -> AppliedBatch:
        """Decode and store ``records`` in one transaction; poison records are logged and skipped."""
        events: list[Change] = []
        streams: list[Change] = []
        others: list[tuple[SessionHeader, SessionStatus | None] | SessionPurged] = []
        self._db.execute("BEGIN")
        try:
            for record in records:
                try:
                    if record.kind is TopicKind.HEADERS:
                        others.append(self._apply_header(record))
                    elif record.kind is TopicKind.EVENTS:
                        written = self._apply_event(record)
                        if written is not None:
                            events.append(written)
                    elif record.kind is TopicKind.STREAMS:
                        stored = self._apply_stream(record)
                        if stored is not None:
                            streams.append(stored)
                    else:
                        self._apply_chunk(record)
                except RecordError as exc:
                    logger.warning("skipping a poison record: %s", exc)
            changes = events + [self._finish(entry) for entry in others] + streams
            stored = self._db.execute("SELECT count(*) FROM headers").fetchone()[0]
            self._db.execute("COMMIT")
        except BaseException:
            # Whatever failed, leave no half-applied batch behind (the caller stops reading).
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return AppliedBatch(changes, stored)

    def _finish(self, entry: tuple[SessionHeader, SessionStatus | None] | SessionPurged) -> Change:
        if isinstance(entry, SessionPurged):
            return entry
        header, previous = entry
        return HeaderWritten(header, previous, self.max_event_cursor(header.session_id))

    def _apply_header(self, record: RawRecord) -> tuple[SessionHeader, SessionStatus | None] | SessionPurged:
        if record.value is None:
            if record.key is None:
                raise RecordError("header tombstone without a key", topic=record.topic, offset=record.offset)
            return self.purge(record.key.decode(errors="replace"))
        header = decode_value(SessionHeader, record.value, topic=record.topic, offset=record.offset)
        row = self._db.execute(
            "SELECT status FROM headers WHERE session_id = ?", (header.session_id,)
        ).fetchone()
        self._db.execute(
            "INSERT OR REPLACE INTO headers "
            "(session_id, stream_id, created_by, tenant, created_at_us, status, json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                header.session_id,
                header.stream_id,
                header.created_by,
                session_tenant(header, self.default_tenant),
                created_at_us(header.created_at),
                header.status.value,
                header.model_dump_json(),
            ),
        )
        self._db.execute("DELETE FROM purged WHERE session_id = ?", (header.session_id,))
        return header, SessionStatus(row[0]) if row else None

    def purge(self, session_id: str) -> SessionPurged:
        """Remove the session with its chunks and events; later records of it are dropped."""
        row = self._db.execute(
            "SELECT stream_id, tenant, created_by FROM headers WHERE session_id = ?", (session_id,)
        ).fetchone()
        for table in ("headers", "chunks", "events"):
            self._db.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
        self._db.execute("INSERT OR IGNORE INTO purged (session_id) VALUES (?)", (session_id,))
        return SessionPurged(session_id, row[0] if row else None, Owner(row[1], row[2]) if row else None)

    def _is_purged(self, session_id: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM purged WHERE session_id = ?", (session_id,)).fetchone()
            is not None
        )

    def _apply_event(self, record: RawRecord) -> EventWritten | None:
        if record.value is None:
            session_id, number = _parse_child_key(record, "event")
            self._db.execute("DELETE FROM events WHERE session_id = ? AND number = ?", (session_id, number))
            return None
        version = decode_value(SessionEvent, record.value, topic=record.topic, offset=record.offset)
        if self._is_purged(version.session_id):
            return None
        self._db.execute(
            "INSERT OR REPLACE INTO events "
            "(session_id, number, cursor, start_time, lifecycle, record_json, event_json, thumbnail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                version.session_id,
                version.number,
                version.cursor,
                version.event.start_time,
                version.lifecycle,
                version.model_dump_json(),
                version.event.model_dump_json(),
                version.event.thumbnail_event_id,
            ),
        )
        row = self._db.execute(
            "SELECT tenant, created_by FROM headers WHERE session_id = ?", (version.session_id,)
        ).fetchone()
        return EventWritten(version, Owner(row[0], row[1]) if row else None, record.stages)

    def _apply_chunk(self, record: RawRecord) -> None:
        if record.value is None:
            session_id, index = _parse_child_key(record, "chunk")
            self._db.execute(
                "DELETE FROM chunks WHERE session_id = ? AND chunk_index = ?", (session_id, index)
            )
            return
        chunk = decode_value(SessionChunk, record.value, topic=record.topic, offset=record.offset)
        if self._is_purged(chunk.session_id):
            return
        self._db.execute(
            "INSERT OR REPLACE INTO chunks (session_id, chunk_index, json) VALUES (?, ?, ?)",
            (chunk.session_id, chunk.chunk.chunk_index, chunk.chunk.model_dump_json()),
        )

    def _apply_stream(self, record: RawRecord) -> StreamWritten | None:
        if record.value is None:
            # Nothing deletes streams today; a tombstone (written by an operator) removes one.
            text = record.key.decode(errors="replace") if record.key is not None else ""
            tenant, found, stream_id = text.rpartition("/")
            if not found or not tenant or not stream_id:
                raise RecordError(
                    "tombstone key is not <tenant>/<stream_id>",
                    key=text,
                    topic=record.topic,
                    offset=record.offset,
                )
            self._db.execute("DELETE FROM streams WHERE tenant = ? AND stream_id = ?", (tenant, stream_id))
            return None
        stream = decode_value(AttachedStream, record.value, topic=record.topic, offset=record.offset)
        self._db.execute(
            "INSERT OR REPLACE INTO streams (tenant, stream_id, json) VALUES (?, ?, ?)",
            (stream.tenant, stream.stream_id, stream.model_dump_json()),
        )
        return StreamWritten(stream)

    # ------------------------------------------------------------------ reads

    def stream(self, tenant: str, stream_id: str) -> AttachedStream | None:
        """The tenant's stream of that id (another tenant's streams are never returned)."""
        row = self._db.execute(
            "SELECT json FROM streams WHERE tenant = ? AND stream_id = ?", (tenant, stream_id)
        ).fetchone()
        return AttachedStream.model_validate_json(row[0]) if row else None

    def retirable_stream(self, tenant: str, stream_id: str) -> bool:
        """Whether the tenant's stream was created by a session start and no stored session uses it.

        Such a stream goes when its last session is purged, so streams created for sessions are
        bounded by session retention; attached streams stay until they are deleted.
        """
        stream = self.stream(tenant, stream_id)
        if stream is None or stream.origin != "start-session":
            return False
        used = self._db.execute(
            "SELECT 1 FROM headers WHERE tenant = ? AND stream_id = ? LIMIT 1", (tenant, stream_id)
        ).fetchone()
        return used is None

    def header(self, session_id: str) -> SessionHeader | None:
        row = self._db.execute("SELECT json FROM headers WHERE session_id = ?", (session_id,)).fetchone()
        return SessionHeader.model_validate_json(row[0]) if row else None

    def max_event_cursor(self, session_id: str) -> int:
        """The newest event cursor stored for the session (``NO_CURSOR`` when it has none)."""
        row = self._db.execute(
            "SELECT max(cursor) FROM events WHERE session_id = ?", (session_id,)
        ).fetchone()
        return row[0] if row and row[0] is not None else NO_CURSOR

    def session_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM headers").fetchone()[0]

    def row_counts(self, session_id: str) -> tuple[int, int, int]:
        """(headers, chunks, events) rows of the session: how much of it the store holds."""
        counts = [
            self._db.execute(f"SELECT count(*) FROM {table} WHERE session_id = ?", (session_id,)).fetchone()[
                0
            ]
            for table in ("headers", "chunks", "events")
        ]
        return counts[0], counts[1], counts[2]

    def session_lists(
        self, session_id: str, query: ListsQuery, links: ThumbnailLinks | None = None
    ) -> SessionLists:
        """The chunk and event pages ``get_session`` returns.

        Events: without ``events_after``/``events_limit`` every merged event ordered by start
        time; with either, the events whose cursor is above ``events_after`` in cursor order,
        at most ``events_limit``. Chunks: without ``chunks_after`` the most recent
        ``chunks_limit`` by index; with it, the ``chunks_limit`` chunks after that index.
        ``*_next_*`` is where the next page starts, None when nothing follows. With ``links``,
        every event carries its signed ``thumbnail_url``.
        """
        db = self._db
        events_total = db.execute(
            "SELECT count(*) FROM events WHERE session_id = ?", (session_id,)
        ).fetchone()[0]
        chunks_total = db.execute(
            "SELECT count(*) FROM chunks WHERE session_id = ?", (session_id,)
        ).fetchone()[0]
        events_next: int | None = None
        if query.events_after is None and query.events_limit is None:
            event_texts = [
                _event_text(session_id, row[0], row[1], links)
                for row in db.execute(
                    "SELECT event_json, thumbnail FROM events WHERE session_id = ? "
                    "ORDER BY start_time, number",
                    (session_id,),
                )
            ]
        else:
            after = NO_CURSOR if query.events_after is None else query.events_after
            limit = -1 if query.events_limit is None else query.events_limit + 1  # -1: no limit
            rows = db.execute(
                "SELECT event_json, cursor, thumbnail FROM events WHERE session_id = ? AND cursor > ? "
                "ORDER BY cursor LIMIT ?",
                (session_id, after, limit),
            ).fetchall()
            if query.events_limit is not None and len(rows) > query.events_limit:
                rows = rows[: query.events_limit]
                events_next = rows[-1][1] if rows else after
            event_texts = [_event_text(session_id, row[0], row[2], links) for row in rows]
        chunks_next: int | None = None
        if query.chunks_after is None:
            rows = db.execute(
                "SELECT json FROM chunks WHERE session_id = ? ORDER BY chunk_index DESC LIMIT ?",
                (session_id, query.chunks_limit),
            ).fetchall()
            chunk_texts = [row[0] for row in reversed(rows)]
        else:
            rows = db.execute(
                "SELECT json, chunk_index FROM chunks WHERE session_id = ? AND chunk_index > ? "
                "ORDER BY chunk_index LIMIT ?",
                (session_id, query.chunks_after, query.chunks_limit + 1),
            ).fetchall()
            if len(rows) > query.chunks_limit:
                rows = rows[: query.chunks_limit]
                chunks_next = rows[-1][1] if rows else query.chunks_after
            chunk_texts = [row[0] for row in rows]
        return SessionLists(
            _json_array(chunk_texts),
            _json_array(event_texts),
            chunks_total,
            events_total,
            chunks_next,
            events_next,
        )

    def _event_rows_after(self, session_id: str, after: int, limit: int) -> list[tuple[str, int, str | None]]:
        return self._db.execute(
            "SELECT record_json, cursor, thumbnail FROM events WHERE session_id = ? AND cursor > ? "
            "ORDER BY cursor LIMIT ?",
            (session_id, after, limit),
        ).fetchall()

    def events_after(self, session_id: str, after: int, limit: int) -> list[SessionEvent]:
        """The latest version of each event whose cursor is above ``after``, in cursor order."""
        return [
            SessionEvent.model_validate_json(text)
            for text, _, _ in self._event_rows_after(session_id, after, limit)
        ]

    def events_page(
        self, session_id: str, after: int, limit: int, links: ThumbnailLinks | None = None
    ) -> EventsPage:
        """``events_after`` as stored JSON text (re-encoded only to add ``links``' thumbnail URLs)."""
        rows = self._event_rows_after(session_id, after, limit)
        texts = [
            text if links is None else links.record_json(session_id, text, thumbnail)
            for text, _, thumbnail in rows
        ]
        return EventsPage(_json_array(texts), rows[-1][1] if rows else None)

    def list_headers(
        self, audience: Audience, before: tuple[int, str] | None, limit: int
    ) -> list[SessionHeader]:
        """``audience``'s headers newest first (created_at, then session_id, descending), below ``before``."""
        clauses: list[str] = ["tenant = ?"]
        params: list[object] = [audience.tenant]
        if audience.created_by is not None:
            clauses.append("created_by = ?")
            params.append(audience.created_by)
        if before is not None:
            clauses.append("(created_at_us, session_id) < (?, ?)")
            params.extend(before)
        where = f"WHERE {' AND '.join(clauses)}"
        rows = self._db.execute(
            f"SELECT json FROM headers {where} ORDER BY created_at_us DESC, session_id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [SessionHeader.model_validate_json(row[0]) for row in rows]


# --------------------------------------------------------------------------- the store's thread


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """Where the store's file lives and what to remove when it closes."""

    path: Path
    owned_dir: Path | None  # a temporary directory created for it, removed with it

    @classmethod
    def create(cls, store_dir: Path | None) -> StoreLocation:
        if store_dir is None:
            directory = Path(tempfile.mkdtemp(prefix="livestream-api-store-"))
            return cls(directory / "sessions.sqlite3", directory)
        store_dir.mkdir(parents=True, exist_ok=True)
        # A fresh file per process: the store is rebuilt from the topics, never reused.
        return cls(store_dir / f"sessions-{os.getpid()}-{uuid.uuid4().hex[:8]}.sqlite3", None)

    def remove(self) -> None:
        if self.owned_dir is not None:
            shutil.rmtree(self.owned_dir, ignore_errors=True)
            return
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()


class StoreWorker:
    """Runs one ``SessionStore`` on its own thread; every call is awaited from the event loop."""

    def __init__(self, executor: ThreadPoolExecutor, store: SessionStore, location: StoreLocation) -> None:
        self._executor = executor
        self._store = store
        self.location = location

    @classmethod
    async def open(
        cls, store_dir: Path | None, cache_mib: int, default_tenant: str = "default"
    ) -> StoreWorker:
        try:
            location = StoreLocation.create(store_dir)
        except OSError as exc:
            raise StoreError(f"cannot create the session store: {exc}", store_dir=str(store_dir)) from exc
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-store")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(
                executor, SessionStore, location.path, cache_mib, default_tenant
            )
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            location.remove()
            raise StoreError(f"cannot open the session store: {exc}", path=str(location.path)) from exc
        logger.info("session store at %s", location.path)
        return cls(executor, store, location)

    async def close(self) -> None:
        await self._call(self._store.close)
        await self._call(self.location.remove)  # file work off the event loop too
        self._executor.shutdown(wait=True)

    async def _call(self, method: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(method, *args, **kwargs))
        except sqlite3.Error as exc:
            raise StoreError(f"session store query failed: {exc}", path=str(self.location.path)) from exc

    async def apply(self, records: Sequence[RawRecord]) -> AppliedBatch:
        return await self._call(self._store.apply, records)

    async def header(self, session_id: str) -> SessionHeader | None:
        return await self._call(self._store.header, session_id)

    async def stream(self, tenant: str, stream_id: str) -> AttachedStream | None:
        return await self._call(self._store.stream, tenant, stream_id)

    async def retirable_stream(self, tenant: str, stream_id: str) -> bool:
        return await self._call(self._store.retirable_stream, tenant, stream_id)

    async def max_event_cursor(self, session_id: str) -> int:
        return await self._call(self._store.max_event_cursor, session_id)

    async def session_lists(
        self, session_id: str, query: ListsQuery, links: ThumbnailLinks | None = None
    ) -> SessionLists:
        return await self._call(self._store.session_lists, session_id, query, links)

    async def events_after(self, session_id: str, after: int, limit: int) -> list[SessionEvent]:
        return await self._call(self._store.events_after, session_id, after, limit)

    async def events_page(
        self, session_id: str, after: int, limit: int, links: ThumbnailLinks | None = None
    ) -> EventsPage:
        return await self._call(self._store.events_page, session_id, after, limit, links)

    async def list_headers(
        self, audience: Audience, before: tuple[int, str] | None, limit: int
    ) -> list[SessionHeader]:
        return await self._call(self._store.list_headers, audience, before, limit)

    async def row_counts(self, session_id: str) -> tuple[int, int, int]:
        return await self._call(self._store.row_counts, session_id)

    async def session_count(self) -> int:
        return await self._call(self._store.session_count)
