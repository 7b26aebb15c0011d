"""Prometheus metrics: the shared listener, the API's request counting, and every service's
``/metrics`` scraped over HTTP on the real stack after one short live session; on that stack
also the services' CPU priorities."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app, route_template, status_class
from api.settings import ApiSettings
from livestream.errors import ConfigurationError
from livestream.kafka.admin import ensure_topics
from livestream.metrics import metrics_url, start_metrics_server
from livestream.stack import Stack, stack_for_tests
from livestream.testsource import LiveHlsSource, short_script
from schemas.topics import Topics

API_KEY = "metrics-test-key-0123456789"

# --------------------------------------------------------------------------- pure


def test_metrics_url_scrapes_wildcard_hosts_on_loopback() -> None:
    assert metrics_url("127.0.0.1", 9100) == "http://127.0.0.1:9100/metrics"
    assert metrics_url("0.0.0.0", 9100) == "http://127.0.0.1:9100/metrics"
    assert metrics_url("::", 9100) == "http://[::1]:9100/metrics"
    assert metrics_url("127.0.0.5", 1) == "http://127.0.0.5:1/metrics"  # any other host as it is


def test_no_port_no_listener() -> None:
    assert start_metrics_server("ingest", "127.0.0.1", None) is None


def test_listener_serves_the_registry_on_loopback_and_stops() -> None:
    server = start_metrics_server("ingest", "127.0.0.1", 0)
    assert server is not None
    try:
        body = httpx.get(server.url, timeout=5).text
        # The process's default registry: the services' metrics are registered at import.
        assert "livestream_api_http_requests_total" in body
    finally:
        server.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url, timeout=2)


def test_a_taken_port_is_a_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match="LIVESTREAM_AGGREGATOR_METRICS_PORT"):
            start_metrics_server("aggregator", "127.0.0.1", port)


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 204, 301, 404, 429, 503, 99, 600)] == [
        "2xx",
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
        "other",
        "other",
    ]
    assert route_template({}) == "unmatched"


def test_api_metrics_are_never_on_its_own_port() -> None:
    with pytest.raises(ValueError, match="METRICS_PORT must differ"):
        ApiSettings(keys=(API_KEY,), port=8123, metrics_port=8123)
    settings = ApiSettings(keys=(API_KEY,), host="0.0.0.0")
    assert settings.metrics_port is None  # off unless asked for
    assert settings.effective_metrics_host == "0.0.0.0"
    assert ApiSettings(keys=(API_KEY,), metrics_host="127.0.0.1").effective_metrics_host == "127.0.0.1"


def _requests(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("livestream_api_http_requests_total", labels) or 0.0


def test_api_counts_requests_by_route_template_not_url() -> None:
    app = create_app(ApiSettings(keys=(API_KEY,)))
    client = TestClient(app)  # no lifespan: no Kafka, so /healthz says 503 and routes 503/401
    route = "/api/live/live-sessions/{stream_id}/{session_id}"
    before = (
        _requests("/healthz", "GET", "5xx"),
        _requests(route, "GET", "4xx"),
        _requests("unmatched", "GET", "4xx"),
        _requests("unmatched", "other", "4xx"),
    )
    assert client.get("/healthz").status_code == 503
    assert client.get("/api/live/live-sessions/s1/abc").status_code == 401  # no key
    assert client.get("/api/live/live-sessions/s2/def").status_code == 401
    assert client.get("/no/such/page").status_code == 404
    client.request("BREW", "/no/such/page")
    after = (
        _requests("/healthz", "GET", "5xx"),
        _requests(route, "GET", "4xx"),
        _requests("unmatched", "GET", "4xx"),
        _requests("unmatched", "other", "4xx"),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 2, 1, 1]
    exported = REGISTRY.collect()
    raw = {
        sample.labels.get("route")
        for family in exported
        if family.name == "livestream_api_http_requests"
        for sample in family.samples
    }
    assert not any("abc" in r or "def" in r for r in raw if r), raw


# --------------------------------------------------------------------------- the real stack


@pytest.fixture(scope="module")
def metrics_stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    topics = Topics(prefix=f"metrics{secrets.token_hex(4)}", partitions=3)
    asyncio.run(ensure_topics(kafka_bootstrap, topics.specs()))
    with stack_for_tests(
        kafka_bootstrap,
        topics.prefix,
        tmp_path_factory.mktemp("metrics-stack"),
        extra_env={"LIVESTREAM_INGEST_CHUNK_SECONDS": "2"},
    ) as stack:
        yield stack


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of a /metrics page by sample name: [(labels, value)]."""
    assert url.startswith("http://127.0.0.1:"), url  # loopback only
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (KeyError when none exists)."""
    matching = [v for got, v in samples[name] if labels.items() <= got.items()]
    if not matching:
        raise KeyError(f"{name}{labels}")
    return sum(matching)


@pytest.mark.kafka
@pytest.mark.model
def test_every_service_exports_its_metrics_after_a_session(metrics_stack: Stack) -> None:
    stack = metrics_stack
    assert set(stack.metrics_urls) == {"aggregator", "analyzer", "ingest", "api"}
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as api:
        with LiveHlsSource(short_script(2.0)) as source:
            started = api.post(
                "/api/live/start-session",
                data={"source_url": source.url, "name": "metrics", "rapid_review_query": "a cat"},
            )
            assert started.status_code == 200, started.text
            stream_id, session_id = started.json()["stream_id"], started.json()["session_id"]
            # The session's SSE feed, open while it runs (its events are delivered live, which is
            # what the sse_delivered stage times), until `end`.
            kinds = follow_feed(api, f"/api/live/live-sessions/{stream_id}/{session_id}/events/stream")
            session = api.get(f"/api/live/live-sessions/{stream_id}/{session_id}").json()
        assert session.get("status") == "FINISHED", session
        assert kinds[-1] == "end" and "detection" in kinds, kinds

    chunks = session["chunk_count"]
    assert chunks >= 1

    ingest = scrape(stack.metrics_urls["ingest"])
    assert value(ingest, "livestream_ingest_segments_total", outcome="decoded") >= 1
    assert value(ingest, "livestream_ingest_frames_decoded_total") > 0
    assert (
        0
        < value(ingest, "livestream_ingest_frames_sampled_total")
        <= value(ingest, "livestream_ingest_frames_decoded_total")
    )
    assert value(ingest, "livestream_ingest_chunks_published_total") == chunks
    assert value(ingest, "livestream_ingest_segment_fetch_seconds_count") >= 1
    assert value(ingest, "livestream_ingest_segment_decode_seconds_count") >= 1
    # The decoding thread's CPU: some, and no more than the wall time it spent (one thread each).
    decode_cpu = value(ingest, "livestream_ingest_decode_cpu_seconds_total")
    assert 0 < decode_cpu <= value(ingest, "livestream_ingest_segment_decode_seconds_sum") + 0.05
    assert value(ingest, "livestream_ingest_active_sessions") == 0  # the session ended
    assert value(ingest, "livestream_ingest_missed_media_seconds_total") >= 0
    for outcome in ("fetch_failed", "decode_failed", "refused"):
        assert value(ingest, "livestream_ingest_segments_total", outcome=outcome) >= 0

    aggregator = scrape(stack.metrics_urls["aggregator"])
    assert value(aggregator, "livestream_aggregator_records_folded_total", type="chunk_result") >= chunks
    assert value(aggregator, "livestream_aggregator_records_folded_total", type="start_session") >= 1
    assert value(aggregator, "livestream_aggregator_records_folded_total", type="lifecycle") >= 2
    assert value(aggregator, "livestream_aggregator_records_folded_total", type="poison") == 0
    assert value(aggregator, "livestream_aggregator_records_written_total", kind="chunk") >= chunks
    assert value(aggregator, "livestream_aggregator_records_written_total", kind="header") >= 1
    assert value(aggregator, "livestream_aggregator_records_written_total", kind="event") >= 0
    assert value(aggregator, "livestream_aggregator_batch_records_count") >= 1
    assert value(aggregator, "livestream_aggregator_batch_records_sum") >= chunks
    assert value(aggregator, "livestream_aggregator_batch_seconds_count") >= 1
    assert value(aggregator, "livestream_aggregator_sessions") >= 1  # kept until its retention ends

    analyzer = scrape(stack.metrics_urls["analyzer"])
    assert value(analyzer, "livestream_analyzer_chunks_total", status="ok") == chunks
    # Every sampled frame was analysed: run through the detector, or unchanged since one that was.
    assert value(analyzer, "livestream_analyzer_frames_inferred_total") + value(
        analyzer, "livestream_analyzer_frames_unchanged_total"
    ) >= value(ingest, "livestream_ingest_frames_sampled_total")
    assert value(analyzer, "livestream_analyzer_frames_inferred_total") > 0
    assert value(analyzer, "livestream_analyzer_batch_chunks_count") >= 1
    assert value(analyzer, "livestream_analyzer_batch_chunks_sum") == chunks
    assert value(analyzer, "livestream_analyzer_batch_frames_sum") >= chunks
    assert value(analyzer, "livestream_analyzer_batch_seconds_count") >= 1
    assert value(analyzer, "livestream_analyzer_chunk_age_seconds_count") == chunks
    assert value(analyzer, "livestream_analyzer_events_total") >= 0
    assert value(analyzer, "livestream_analyzer_dead_letters_total") == 0
    lags = [v for labels, v in analyzer.get("livestream_analyzer_consumer_lag_records", [])]
    assert lags and all(v >= 0 for v in lags)

    api_metrics = scrape(stack.metrics_urls["api"])
    start = {"route": "/api/live/start-session", "method": "POST", "status": "2xx"}
    assert value(api_metrics, "livestream_api_http_requests_total", **start) == 1
    session_route = "/api/live/live-sessions/{stream_id}/{session_id}"
    assert value(api_metrics, "livestream_api_http_requests_total", route=session_route, status="2xx") >= 1
    assert value(api_metrics, "livestream_api_http_requests_total", route="/healthz") >= 1
    assert value(api_metrics, "livestream_api_http_request_seconds_count", route=session_route) >= 1
    assert not any(session_id in labels.get("route", "") for labels, _ in all_samples(api_metrics))
    assert value(api_metrics, "livestream_api_sse_messages_total", feed="session") >= 1
    assert value(api_metrics, "livestream_api_sse_subscribers", feed="all") == 0
    # The feed closed after `end`: the gauge follows once the server has noticed.
    deadline = time.monotonic() + 10
    while value(api_metrics, "livestream_api_sse_subscribers", feed="session") != 0:
        assert time.monotonic() < deadline, "the closed SSE feed is still counted"
        time.sleep(0.2)
        api_metrics = scrape(stack.metrics_urls["api"])
    # Stage stamps travelled in record headers from ingest to the SSE feed (livestream.stages):
    # each service observed its own stages, and the API's age is the whole path's latency.
    for stage in ("segment_fetched", "segment_decoded", "chunk_published"):
        assert value(ingest, "livestream_stage_seconds_count", stage=stage) >= 1, stage
    assert value(ingest, "livestream_stage_seconds_count", stage="chunk_published") <= chunks
    for stage in ("chunk_consumed", "chunk_inferred", "result_published"):
        assert value(analyzer, "livestream_stage_seconds_count", stage=stage) >= 1, stage
        assert value(analyzer, "livestream_stage_age_seconds_count", stage=stage) >= 1, stage
    assert value(aggregator, "livestream_stage_age_seconds_count", stage="state_folded") >= chunks - 1
    assert value(api_metrics, "livestream_stage_age_seconds_count", stage="sse_delivered") >= 1
    delivered = value(api_metrics, "livestream_stage_age_seconds_sum", stage="sse_delivered") / value(
        api_metrics, "livestream_stage_age_seconds_count", stage="sse_delivered"
    )
    assert 0 < delivered < 30, delivered  # listed -> delivered, seconds
    for service in (ingest, analyzer, aggregator, api_metrics):
        assert value(service, "livestream_stage_header_errors_total") == 0
    # The public port serves no metrics.
    assert httpx.get(f"{stack.api_url}/metrics", timeout=5).status_code == 404


def follow_feed(api: httpx.Client, path: str, timeout_s: float = 90.0) -> list[str]:
    """The SSE message kinds of a session feed until its `end` (retried while the session is not
    yet known to the API: its first header is on its way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with api.stream("GET", path, timeout=timeout_s) as feed:
            if feed.status_code == 404:
                time.sleep(0.1)
                continue
            assert feed.status_code == 200
            kinds = [line.removeprefix("event: ") for line in feed.iter_lines() if line.startswith("event: ")]
            return kinds
    raise AssertionError(f"{path} never became available")


@pytest.mark.kafka
@pytest.mark.model
def test_the_stacks_analyzers_run_below_the_other_services_cpu_priority(metrics_stack: Stack) -> None:
    """On this stack, as the priority rule's check on a real one (``livestream.service.
    lower_cpu_priority``, ``LIVESTREAM_ANALYZER_CPU_NICE``): on a machine short of cores, ingest
    (whose sources keep a segment only for a while), the broker and the API get them first."""
    base = os.getpriority(os.PRIO_PROCESS, 0)  # what the services inherit from this process
    autogroups = Path("/proc/sys/kernel/sched_autogroup_enabled")
    grouped = autogroups.exists() and autogroups.read_text().strip() == "1"
    for name, process in metrics_stack.processes.items():
        expected = max(base, 5) if name.startswith("analyzer") else base
        niceness = set()
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            stat = (task / "stat").read_text()
            niceness.add(int(stat[stat.rindex(")") + 2 :].split()[16]))
        assert niceness == {expected}, (name, niceness)
        if grouped:  # each service leads a session of its own, so an autogroup of its own
            autogroup = int(Path(f"/proc/{process.pid}/autogroup").read_text().split()[-1])
            assert autogroup == (5 if name.startswith("analyzer") else 0), (name, autogroup)


def all_samples(samples: dict[str, list[tuple[dict[str, str], float]]]) -> list[tuple[dict[str, str], float]]:
    return [pair for pairs in samples.values() for pair in pairs]


def test_stack_urls_are_loopback(tmp_path: Path) -> None:
    stack = Stack(
        bootstrap_servers="127.0.0.1:1",
        api_key="k" * 20,
        api_port=1,
        run_dir=tmp_path,
        metrics_ports={"ingest": 9101},
    )
    assert stack.metrics_urls == {"ingest": "http://127.0.0.1:9101/metrics"}
