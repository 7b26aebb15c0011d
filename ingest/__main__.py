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


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = IngestSettings()
    return run_service("ingest", lambda: serve(settings))


if __name__ == "__main__":
    raise SystemExit(main())
