"""``python -m aggregator``: run the aggregator worker until SIGTERM/SIGINT (then exit 0).

Reads ``AggregatorSettings`` from the environment (``KAFKA_BOOTSTRAP_SERVERS``,
``LIVESTREAM_TOPIC_PREFIX``, ``LIVESTREAM_AGGREGATOR_*``).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import faust
from pydantic import ValidationError

from aggregator.app import build_app, discover_topic_layout, ensure_changelog_topic
from aggregator.errors import AggregatorError
from aggregator.settings import AggregatorSettings
from aggregator.thumbnails import ThumbnailJanitor
from livestream.blobstore import open_blob_store
from livestream.blobstore.settings import BlobStoreSettings


def main() -> int:
    try:
        settings = AggregatorSettings()
    except ValidationError as exc:
        print(f"error: invalid aggregator settings: {exc}", file=sys.stderr)
        return 2
    # One loop for the partition lookup and the worker: faust binds to the current loop.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        # Always checked, even when configured: a worker on missing or mismatched topics would
        # hang waiting for them or fail on its first table write.
        layout = loop.run_until_complete(discover_topic_layout(settings))
    except AggregatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        loop.close()
        return 1
    if settings.partitions is not None and settings.partitions != layout.partitions:
        print(
            f"error: LIVESTREAM_AGGREGATOR_PARTITIONS={settings.partitions} but the input topics have "
            f"{layout.partitions} partitions",
            file=sys.stderr,
        )
        loop.close()
        return 1
    resolved = settings.model_copy(
        update={
            "partitions": layout.partitions,
            "replication_factor": settings.replication_factor or layout.replication_factor,
        }
    )
    try:
        loop.run_until_complete(ensure_changelog_topic(resolved, layout))
    except AggregatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        loop.close()
        return 1
    # Thumbnails live beside the recordings (same LIVESTREAM_STORAGE_* settings as ingest and API).
    thumbnails = (
        ThumbnailJanitor(open_blob_store(BlobStoreSettings()), settings.thumbnail_delete_delay_s)
        if settings.delete_thumbnails
        else None
    )
    # faust's data directory holds nothing with the memory store, but faust creates it: a
    # temporary one, removed when the worker exits (SystemExit included; a killed worker leaves
    # an empty directory in the system's temporary directory, not in the working directory).
    with tempfile.TemporaryDirectory(prefix="livestream-aggregator-") as datadir:
        app = build_app(resolved, Path(datadir), thumbnails)
        worker = faust.Worker(app, loop=loop, loglevel=settings.log_level, redirect_stdouts=False)
        # Installs SIGTERM/SIGINT handlers that stop the app gracefully, then raises SystemExit(0).
        worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
