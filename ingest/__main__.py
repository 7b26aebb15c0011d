"""``python -m ingest``: run the ingest service until SIGTERM/SIGINT, then shut down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from ingest.service import IngestService
from ingest.settings import IngestSettings
from livestream.service import run_service


async def serve(settings: IngestSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with IngestService(settings) as service:
        await service.run(stop)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO with its whole URL: a source URL can carry credentials (a
    # token in its query), which ingest's own messages redact (livestream.redact), and a line per
    # playlist poll and segment of every session buries the lines that matter. Fetch failures
    # are logged by ingest itself, redacted.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main() -> int:
    configure_logging()
    settings = IngestSettings()
    return run_service("ingest", lambda: serve(settings))


if __name__ == "__main__":
    raise SystemExit(main())
