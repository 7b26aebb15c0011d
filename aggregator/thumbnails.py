"""Deleting the thumbnails of detections merged away (the aggregator's side of event thumbnails).

The analyzer stores one thumbnail per raw event (``analyzer.thumbnails``); a merged event shows
only the one of its most confident detection (``aggregator.merge``), so every merge leaves one
thumbnail that no merged event shows, and so does every detection of a chunk result that comes
after its session ended (never folded). The fold names them (``FoldResult.discarded_thumbnails``)
and the worker hands them here once the batch's event records are acknowledged
(``write_batch``, step 1b). Who deletes what, and when:

* here, ``delete_delay_s`` (default 10 s) after the records that stopped showing them were
  acknowledged, through the blob store in a worker thread (never on the event loop). The delay
  is a grace for readers a moment behind: an API that has not applied the newer version yet,
  or a page that just rendered the previous one, still loads the picture it was given;
* a crash or stop before the delay ran out forgets the deletion: the thumbnail stays an orphan.
  So does one rewritten by an analyzer that re-analysed a chunk already folded (a redelivery:
  whether a merged event shows it is not known any more). Nothing names orphans, so no client
  sees them, and the session's purge (``RecordingStorage.purge`` removes the session's directory,
  ``thumbs/`` included) removes them at the end of retention;
* a replayed batch (crash before its offsets were committed) folds the same records again and
  discards the same thumbnails again: deleting a missing blob is fine.

A failed deletion (store unavailable) is logged and not retried: it is an orphan as above.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from ingest.storage import thumbnail_key
from livestream.blobstore import BlobStore, BlobStoreError

log = logging.getLogger(__name__)

DEFAULT_DELETE_DELAY_S = 10.0


def delete_thumbnails(store: BlobStore, keys: Iterable[str]) -> int:
    """Delete these thumbnails (blocking); return how many deletions failed (logged)."""
    failed = 0
    for key in keys:
        try:
            store.delete(key)
        except BlobStoreError as exc:
            failed += 1
            log.warning("thumbnail %s merged away but not deleted (an orphan until the purge): %s", key, exc)
    return failed


class ThumbnailJanitor:
    """Deletes merged-away thumbnails ``delete_delay_s`` after they were discarded, off the loop."""

    def __init__(self, store: BlobStore, delete_delay_s: float = DEFAULT_DELETE_DELAY_S) -> None:
        self._store = store
        self._delay_s = delete_delay_s
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Deletions scheduled and not done yet."""
        return len(self._tasks)

    def discard(self, session_id: str, event_ids: Iterable[str]) -> None:
        """Schedule the deletion of these raw events' thumbnails (call on the event loop)."""
        keys = [thumbnail_key(session_id, event_id) for event_id in event_ids]
        if not keys:
            return
        task = asyncio.get_running_loop().create_task(self._delete_later(keys))
        # Held until done: the loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete_later(self, keys: list[str]) -> None:
        await asyncio.sleep(self._delay_s)
        await asyncio.to_thread(delete_thumbnails, self._store, keys)


__all__ = ["DEFAULT_DELETE_DELAY_S", "ThumbnailJanitor", "delete_thumbnails"]
