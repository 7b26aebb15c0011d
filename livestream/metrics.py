"""Prometheus metrics plumbing shared by the services: the ``/metrics`` listener and buckets.

Each service defines its own metrics (``livestream_<service>_...``, units in the names, labels
of bounded cardinality: never a session id) in the module that updates them, on
``prometheus_client``'s default registry. Every replica is one process with its own registry
and its own listener, so no multiprocess mode is needed: Prometheus scrapes each replica and
sums across them.

The listener is ``prometheus_client``'s own HTTP server in a daemon thread, started on a
configured port (``<SERVICE>_METRICS_PORT``; None: no listener) and bound to a configured host
(loopback unless told otherwise), so it serves even while the service's event loop is busy.
It answers every path, ``/metrics`` included, without authentication: bind it where only the
scraper can reach it. The API never serves metrics on its public port (see ``api.settings``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from livestream.errors import ConfigurationError

__all__ = ["LATENCY_BUCKETS_S", "SIZE_BUCKETS", "MetricsServer", "metrics_url", "start_metrics_server"]

log = logging.getLogger(__name__)

# Latencies in seconds, from a fast in-memory step (ms) to a slow segment fetch or decode (tens
# of seconds): one set for every histogram, so dashboards compare like with like.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Counts of things per batch (records folded per aggregator batch, up to its 500 default).
SIZE_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass
class MetricsServer:
    """A running metrics listener; ``close()`` stops it (tests, clean shutdowns)."""

    host: str
    port: int
    server: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return metrics_url(self.host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def metrics_url(host: str, port: int) -> str:
    """The scrape URL of a listener on ``host:port`` (a wildcard host is scraped on loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def start_metrics_server(service: str, host: str, port: int | None) -> MetricsServer | None:
    """Serve the default registry on ``host:port`` from a daemon thread; None when ``port`` is None.

    A port that cannot be bound is a ``ConfigurationError`` (the service's start-up reports it
    as one readable line): a replica silently without metrics would look like a dead one.
    """
    if port is None:
        return None
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigurationError(
            f"{service}: cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
            f"set LIVESTREAM_{service.upper()}_METRICS_PORT to a free port, or unset it"
        ) from exc
    bound_port = server.server_port  # the real one when 0 asked for any free port
    log.info("%s: metrics on %s", service, metrics_url(host, bound_port))
    return MetricsServer(host, bound_port, server, thread)
