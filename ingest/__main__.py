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
    # The HTTP client (aiohttp) logs no line per request, so source URLs, which can carry a token
    # in their query, appear only in ingest's own messages, redacted (livestream.redact).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> int:
    configure_logging()
    settings = IngestSettings()
    return run_service("ingest", lambda: serve(settings))


if __name__ == "__main__":
    raise SystemExit(main())
