"""Pure tests of tenants, keys and limits: configuration, salted keys, feed tokens, rate limits,
feed slots, session quotas, the body limit, log redaction, and the routes' answers that come
before Kafka is touched (401 for query credentials, 429, 413, feed tokens).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.__main__ import server_config
from api.app import create_app
from api.errors import AuthenticationFailed, RateLimited, TooManyFeeds, TooManySessions
from api.limits import FeedSlots, RateLimiter, SessionQuota, TokenBucket
from api.logs import RedactCredentials, redact_credentials
from api.settings import ApiSettings
from api.store import RawRecord, SessionStore, TopicKind
from api.tenants import (
    Audience,
    Caller,
    KeyRing,
    Owner,
    key_fingerprint,
    load_tenants_file,
    merge_tenants,
    parse_tenant_map,
    session_tenant,
)
from api.tokens import FeedTokens
from api.views import SessionView
from livestream.cli import api_keys_for_stack, configured_api_keys
from livestream.errors import ConfigurationError
from schemas.records import SessionHeader, SessionStatus, StartSession

ACME_KEY = "acme-key-0123456789abcdef"
ACME_KEY_2 = "acme-key2-0123456789abcde"
GLOBEX_KEY = "globex-key-0123456789abcd"
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- configuration


def test_tenant_map_accepts_lists_and_single_keys_and_names_bad_entries() -> None:
    assert parse_tenant_map({"acme": [" k1 ", "k2", ""], "globex": "k3"}, source="S") == {
        "acme": ("k1", "k2"),
        "globex": ("k3",),
    }
    for bad, where in (
        (["k1"], "mapping"),
        ({"bad name!": ["k"]}, "tenant names"),
        ({"acme": [1, 2]}, "list of strings"),
        ({"acme": []}, "no keys"),
    ):
        with pytest.raises(ConfigurationError, match=where):
            parse_tenant_map(bad, source="S")


def test_tenants_file_reads_json_and_yaml_and_never_quotes_its_text(tmp_path: Path) -> None:
    as_json, as_yaml = tmp_path / "t.json", tmp_path / "t.yaml"
    as_json.write_text(json.dumps({"acme": [ACME_KEY]}))
    as_yaml.write_text(f"acme:\n  - {ACME_KEY}\nglobex: [{GLOBEX_KEY}]\n")
    assert load_tenants_file(as_json) == {"acme": (ACME_KEY,)}
    assert load_tenants_file(as_yaml) == {"acme": (ACME_KEY,), "globex": (GLOBEX_KEY,)}
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"acme: [{ACME_KEY}\n  other: {{")
    with pytest.raises(ConfigurationError, match="not valid JSON or YAML") as error:
        load_tenants_file(broken)
    assert ACME_KEY not in str(error.value)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_tenants_file(tmp_path / "missing.yaml")


def test_settings_merge_keys_tenants_and_file_into_one_map(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tenants_file = tmp_path / "tenants.yaml"
    tenants_file.write_text(f"acme: [{ACME_KEY_2}]\n")
    monkeypatch.setenv("LIVESTREAM_API_KEYS", f"{GLOBEX_KEY}")
    monkeypatch.setenv("LIVESTREAM_API_TENANTS", json.dumps({"acme": [ACME_KEY]}))
    monkeypatch.setenv("LIVESTREAM_API_TENANTS_FILE", str(tenants_file))
    settings = ApiSettings()
    assert settings.tenant_keys() == {"acme": (ACME_KEY, ACME_KEY_2), "default": (GLOBEX_KEY,)}
    # Keys never show in the settings' repr (which may end up in a log).
    assert ACME_KEY not in repr(settings) and GLOBEX_KEY not in repr(settings)
    assert merge_tenants({"a": ("k1",)}, {"a": ("k1", "k2")}) == {"a": ("k1", "k2")}


def test_malformed_tenants_json_is_a_configuration_error_without_the_text() -> None:
    with pytest.raises(ConfigurationError, match="not valid JSON") as error:
        ApiSettings(tenants=f'{{"acme": ["{ACME_KEY}"]').tenant_keys()
    assert ACME_KEY not in str(error.value)


def test_short_keys_and_shared_keys_refuse_to_start_naming_the_tenant_not_the_key() -> None:
    with pytest.raises(ConfigurationError, match="'acme' has an API key shorter than 16") as short:
        create_app(ApiSettings(tenants=json.dumps({"acme": ["short-key"]})))
    assert "short-key" not in str(short.value)
    with pytest.raises(ConfigurationError, match="shorter than 40"):
        create_app(ApiSettings(keys=ACME_KEY, min_key_length=40))
    with pytest.raises(ConfigurationError, match="two tenants") as shared:
        KeyRing({"acme": (ACME_KEY,), "globex": (ACME_KEY,)})
    assert ACME_KEY not in str(shared.value)


# --------------------------------------------------------------------------- keys


def test_key_ring_identifies_callers_by_salted_digests_only() -> None:
    ring = KeyRing({"acme": (ACME_KEY, ACME_KEY_2), "globex": (GLOBEX_KEY,)})
    assert ring.identify(ACME_KEY) == Caller("acme", key_fingerprint(ACME_KEY))
    assert ring.identify(ACME_KEY_2) == Caller("acme", key_fingerprint(ACME_KEY_2))
    assert ring.identify(GLOBEX_KEY) == Caller("globex", key_fingerprint(GLOBEX_KEY))
    assert ring.identify(ACME_KEY + "x") is None and ring.identify("") is None
    assert (len(ring), ring.tenants) == (3, frozenset({"acme", "globex"}))
    # No raw key is kept anywhere in the ring; another process's ring salts differently.
    assert all(ACME_KEY.encode() not in repr(value).encode() for value in vars(ring).values())
    other = KeyRing({"acme": (ACME_KEY,)})
    assert other._digest(ACME_KEY) != ring._digest(ACME_KEY)
    assert ring.is_current(Caller("acme", key_fingerprint(ACME_KEY)))
    assert not ring.is_current(Caller("globex", key_fingerprint(ACME_KEY)))


def test_sessions_without_a_tenant_belong_to_the_default_one_and_placeholders_to_nobody() -> None:
    def header(tenant: str | None, source_url: str = "https://example.com/a.m3u8") -> SessionHeader:
        return SessionHeader(
            stream_id="st",
            session_id="s1",
            name="n",
            source_url=source_url,
            status=SessionStatus.ACTIVE,
            tenant=tenant,
            created_at=T0,  # type: ignore[arg-type]
            updated_at=T0,  # type: ignore[arg-type]
        )

    assert session_tenant(header("acme"), "default") == "acme"
    assert session_tenant(header(None), "default") == "default"
    assert session_tenant(header(None, source_url=""), "default") is None
    acme, mine = Audience("acme"), Audience("acme", "key-1")
    assert acme.sees(Owner("acme", "key-2")) and not acme.sees(Owner("globex", "key-2"))
    assert mine.sees(Owner("acme", "key-1")) and not mine.sees(Owner("acme", "key-2"))
    assert not acme.sees(Owner(None, None))


# --------------------------------------------------------------------------- feed tokens


def test_feed_tokens_verify_until_they_expire_and_refuse_tampering() -> None:
    clock = Clock()
    tokens = FeedTokens(300, clock=clock)
    caller = Caller("acme", key_fingerprint(ACME_KEY))
    issued = tokens.issue(caller)
    assert issued.expires_at == T0 + 300 and ACME_KEY not in issued.token
    assert tokens.verify(issued.token) == caller
    payload, _, signature = issued.token.partition(".")
    forged_payload = FeedTokens(300, clock=clock).issue(Caller("globex", caller.key_id)).token.split(".")[0]
    for bad in (
        f"{forged_payload}.{signature}",
        f"{payload}.{signature[:-2]}",
        f"{payload}.é{signature}",
        "garbage",
        "",
        "a" * 600,
    ):
        with pytest.raises(AuthenticationFailed, match="invalid feed token"):
            tokens.verify(bad)
    with pytest.raises(AuthenticationFailed, match="invalid"):
        FeedTokens(300, clock=clock).verify(issued.token)  # another process's secret
    assert FeedTokens(300, b"shared", clock).verify(FeedTokens(300, b"shared", clock).issue(caller).token)
    clock.now += 299
    assert tokens.verify(issued.token) == caller
    clock.now += 1
    with pytest.raises(AuthenticationFailed, match="expired feed token"):
        tokens.verify(issued.token)


# --------------------------------------------------------------------------- limits


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, updated=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # refills only up to the burst


def test_rate_limiter_is_per_key_and_says_when_to_retry() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited, match="retry after 1 s") as limited:
        limiter.check("a")
    assert limited.value.retry_after == 1
    limiter.check("b")  # another key has its own bucket
    clock.now = 1.0
    limiter.check("a")
    unlimited = RateLimiter(rate=0, burst=1, clock=clock)
    for _ in range(100):
        unlimited.check("a")


def test_feed_slots_cap_open_feeds_per_key_and_free_them_once() -> None:
    slots = FeedSlots(per_key=2)
    first, second = slots.acquire("a"), slots.acquire("a")
    with pytest.raises(TooManyFeeds, match="2 event feeds open"):
        slots.acquire("a")
    slots.acquire("b").release()
    first.release()
    first.release()  # idempotent: frees one slot only
    assert slots.open_count("a") == 1
    third = slots.acquire("a")
    second.release()
    third.release()
    assert slots.open_count("a") == 0
    unlimited = FeedSlots(per_key=0)
    assert [unlimited.acquire("a") for _ in range(50)]


def test_session_quota_counts_running_and_in_flight_starts_per_key_and_tenant() -> None:
    quota = SessionQuota(per_key=2, per_tenant=3)
    a, b = Caller("acme", "key-a"), Caller("acme", "key-b")
    with quota.admit(a, active_of_key=1, active_of_tenant=1):
        # One start of key a is being published: it counts.
        with pytest.raises(TooManySessions, match="this API key already has 2 sessions"):
            with quota.admit(a, active_of_key=1, active_of_tenant=1):
                pass
        with quota.admit(b, active_of_key=0, active_of_tenant=1):
            with pytest.raises(TooManySessions, match="organisation already has 3 sessions") as error:
                with quota.admit(b, active_of_key=0, active_of_tenant=1):
                    pass
    assert error.value.retry_after > 0
    with quota.admit(a, active_of_key=1, active_of_tenant=2):
        pass  # the in-flight starts were released
    with pytest.raises(TooManySessions):
        with quota.admit(Caller("globex", "key-g"), active_of_key=2, active_of_tenant=2):
            pass
    assert SessionQuota(0, 0).enabled is False
    with SessionQuota(0, 0).admit(a, 1000, 1000):
        pass


# --------------------------------------------------------------------------- log redaction


def test_credentials_are_redacted_from_paths_and_access_log_records() -> None:
    path = f"/api/live/events/stream?scope=org&api_key={ACME_KEY}&token=abc.def&last_event_id=4"
    assert redact_credentials(path) == (
        "/api/live/events/stream?scope=org&api_key=REDACTED&token=REDACTED&last_event_id=4"
    )
    assert redact_credentials("/x?TOKEN=abc") == "/x?TOKEN=REDACTED"
    assert redact_credentials("/x?my_token=abc") == "/x?my_token=abc"
    # A signed playback URL is a credential until it expires.
    assert redact_credentials("/playback/s1/seg000001.ts?expires=9&sig=abc_-") == (
        "/playback/s1/seg000001.ts?expires=9&sig=REDACTED"
    )
    # The shape of uvicorn's access records: the path is one of the arguments.
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200), None,
    )  # fmt: skip
    assert RedactCredentials().filter(record)
    assert ACME_KEY not in record.getMessage() and "abc.def" not in record.getMessage()
    assert "api_key=REDACTED" in record.getMessage()


# --------------------------------------------------------------------------- HTTP without Kafka


@pytest.fixture
def client() -> Iterator[TestClient]:
    # No `with`: the lifespan (and so every Kafka client) never starts; a passing request answers 503.
    settings = ApiSettings(
        keys=ACME_KEY,
        tenants=json.dumps({"globex": [GLOBEX_KEY]}),
        rate_limit_per_second=1,
        rate_limit_burst=3,
        max_body_bytes=1000,
    )
    yield TestClient(create_app(settings))


def test_query_credentials_are_refused_off_the_sse_routes(client: TestClient) -> None:
    for params in ({"api_key": ACME_KEY}, {"token": "anything"}):
        refused = client.get("/api/live/live-sessions", params=params, headers={"X-API-Key": ACME_KEY})
        assert refused.status_code == 401
        assert "accepted only by the SSE routes" in refused.json()["detail"]
        assert ACME_KEY not in refused.text
    posted = client.post("/api/live/end-session", params={"api_key": ACME_KEY}, data={"stream_id": "a"})
    assert posted.status_code == 401


def test_sse_routes_take_a_feed_token_or_the_key_in_the_query(client: TestClient) -> None:
    issued = client.post("/api/live/feed-token", headers={"Authorization": f"Bearer {GLOBEX_KEY}"})
    assert issued.status_code == 200
    body = issued.json()
    assert 290 <= body["expires_in"] <= 300 and GLOBEX_KEY not in issued.text
    for path in ("/api/live/events/stream", "/api/live/live-sessions/a/b/events/stream"):
        # Authenticated (503: Kafka is not up in this test), by token or by the key.
        assert client.get(path, params={"token": body["token"]}).status_code == 503
        assert client.get(path, params={"api_key": ACME_KEY}).status_code == 503
        bad = client.get(path, params={"token": body["token"] + "x"})
        assert bad.status_code == 401 and "invalid feed token" in bad.json()["detail"]
    assert client.post("/api/live/feed-token").status_code == 401


def test_requests_beyond_the_keys_rate_answer_429_with_retry_after(client: TestClient) -> None:
    headers = {"X-API-Key": ACME_KEY}
    answers = [client.get("/api/live/live-sessions", headers=headers) for _ in range(4)]
    assert [a.status_code for a in answers] == [503, 503, 503, 429]
    assert answers[-1].headers["retry-after"] == "1"
    assert "too many requests for this API key" in answers[-1].json()["detail"]
    # Another key, even of the same process, has its own bucket.
    assert client.get("/api/live/live-sessions", headers={"X-API-Key": GLOBEX_KEY}).status_code == 503


def test_bodies_over_the_limit_answer_413_before_authentication(client: TestClient) -> None:
    form = {"source_url": "https://example.com/a.m3u8", "name": "x" * 2000}
    declared = client.post("/api/live/start-session", data=form)  # no key at all
    assert declared.status_code == 413 and declared.text == "Content Too Large"
    bodied_get = client.request("GET", "/api/live/live-sessions", content=b"x" * 2000)
    assert bodied_get.status_code == 413  # not 401: the limit answers first

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut off while it streams
        yield b"source_url=https%3A%2F%2Fexample.com%2Fa.m3u8&name="
        for _ in range(20):
            yield b"x" * 100

    for headers in ({"X-API-Key": ACME_KEY}, {}):
        streamed = client.post(
            "/api/live/start-session",
            content=chunked(),
            headers=headers | {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert streamed.status_code == 413 and streamed.json() == {"detail": "Content Too Large"}
    small = client.post("/api/live/start-session", data={"source_url": "https://example.com/a.m3u8"})
    assert small.status_code == 401  # under the limit: authentication answers


# --------------------------------------------------------------------------- the CLI hands every key on


def test_cli_gives_the_api_every_configured_key_or_a_long_enough_generated_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generated, env = api_keys_for_stack({})
    assert len(generated) >= 16 and env == {"LIVESTREAM_API_KEYS": generated}
    KeyRing({"default": (generated,)})  # meets the API's minimum length
    monkeypatch.setenv("LIVESTREAM_API_KEYS", f"{ACME_KEY},{ACME_KEY_2}")
    first, env = api_keys_for_stack({"default": (ACME_KEY, ACME_KEY_2)})
    # The stack would set LIVESTREAM_API_KEYS to the one key it is given: the list is put back.
    assert first == ACME_KEY and env == {"LIVESTREAM_API_KEYS": f"{ACME_KEY},{ACME_KEY_2}"}


def test_the_served_access_log_prints_no_credentials() -> None:
    settings = ApiSettings(keys=ACME_KEY)
    server_config(create_app(settings), settings)  # configures uvicorn's loggers, then redaction
    access = logging.getLogger("uvicorn.access")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    access.addHandler(handler)
    try:
        path = f"/api/live/events/stream?api_key={ACME_KEY}&token=t.sig"
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", path, "1.1", 200)
    finally:
        access.removeHandler(handler)
    assert lines == [
        '127.0.0.1:1 - "GET /api/live/events/stream?api_key=REDACTED&token=REDACTED HTTP/1.1" 200'
    ]


# --------------------------------------------------------------------------- the view and the store


def _header(session_id: str, *, tenant: str | None, created_by: str, status: SessionStatus) -> SessionHeader:
    now = datetime.now(UTC)
    return SessionHeader(
        stream_id="st",
        session_id=session_id,
        name="n",
        source_url="https://example.com/a.m3u8",
        status=status,
        tenant=tenant,
        created_by=created_by,
        created_at=now,
        updated_at=now,
        ended_at=now if status.terminal else None,
    )


def test_view_counts_running_sessions_per_owner_and_lists_pending_starts_per_audience() -> None:
    view = SessionView(default_tenant="default")
    now = datetime.now(UTC)
    view.apply_header(_header("a1", tenant="acme", created_by="k1", status=SessionStatus.ACTIVE), now)
    view.apply_header(_header("a2", tenant="acme", created_by="k1", status=SessionStatus.FINISHED), now)
    view.apply_header(_header("old", tenant=None, created_by="k9", status=SessionStatus.ACTIVE), now)
    start = StartSession(
        session_id="p1",
        stream_id="st",
        name="n",
        source_url="https://e.com/a.m3u8",
        created_by="k2",
        tenant="acme",
    )
    view.add_pending_start(start)
    assert sorted((o.tenant, o.created_by) for o in view.running()) == [
        ("acme", "k1"),
        ("acme", "k2"),
        ("default", "k9"),
    ]
    assert [h.session_id for h in view.pending_starts(Audience("acme"))] == ["p1"]
    assert view.pending_starts(Audience("acme", "k1")) == [] and view.pending_starts(Audience("globex")) == []
    # A placeholder (records before the start command) keeps the pending start's owner.
    placeholder = _header("p1", tenant=None, created_by="", status=SessionStatus.ACTIVE).model_copy(
        update={"source_url": "", "created_by": None}
    )
    view.apply_header(placeholder, now)
    assert view.owner("p1") == Owner("acme", "k2")
    assert [h.session_id for h in view.pending_starts(Audience("acme"))] == ["p1"]


def test_store_lists_by_tenant_with_older_records_in_the_default_tenant(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s.sqlite3", 4, default_tenant="default")
    records = [
        _header("a1", tenant="acme", created_by="k1", status=SessionStatus.ACTIVE),
        _header("a2", tenant="acme", created_by="k2", status=SessionStatus.ACTIVE),
        _header("old", tenant=None, created_by="k9", status=SessionStatus.ACTIVE),
        _header("ph", tenant=None, created_by="k9", status=SessionStatus.ACTIVE).model_copy(
            update={"source_url": ""}
        ),
    ]
    store.apply([RawRecord(TopicKind.HEADERS, h.session_id.encode(), h.to_bytes()) for h in records])
    assert {h.session_id for h in store.list_headers(Audience("acme"), None, 10)} == {"a1", "a2"}
    assert [h.session_id for h in store.list_headers(Audience("acme", "k2"), None, 10)] == ["a2"]
    assert [h.session_id for h in store.list_headers(Audience("default"), None, 10)] == ["old"]  # not "ph"
    assert store.list_headers(Audience("globex"), None, 10) == []
    store.close()


def test_cli_reads_the_apis_own_key_settings_and_refuses_short_keys_before_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LIVESTREAM_API_KEYS", "LIVESTREAM_API_TENANTS", "LIVESTREAM_API_TENANTS_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert configured_api_keys() == {}
    monkeypatch.setenv("LIVESTREAM_API_TENANTS", json.dumps({"acme": [ACME_KEY], "globex": [GLOBEX_KEY]}))
    assert configured_api_keys() == {"acme": (ACME_KEY,), "globex": (GLOBEX_KEY,)}
    first, env = api_keys_for_stack(configured_api_keys())
    assert first == ACME_KEY and env == {"LIVESTREAM_API_KEYS": ""}  # the tenants reach the API by env
    monkeypatch.setenv("LIVESTREAM_API_KEYS", "short")
    with pytest.raises(ConfigurationError, match="'default' has an API key shorter than 16"):
        configured_api_keys()
