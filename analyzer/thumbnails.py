"""Event thumbnails: one annotated JPEG per raw event, stored beside the session's recording.

The thumbnail of an event is its best frame (the frame of its highest-confidence detection,
which ``analyzer.scoring`` names as ``Event.thumbnail_time``) with that detection's box drawn
and labelled (``label confidence``). It is stored in the blob store recordings use
(``LIVESTREAM_STORAGE_*``) as ``<session_dir>/thumbs/<event_id>.jpg``
(``ingest.storage.thumbnail_key``), and the event then names it (``thumbnail_event_id``).

Order, per chunk (``AnalyzerService._handle``): analysis -> thumbnails stored (this module, in
the analyzer's worker thread: decoding, drawing, encoding and the blob store's blocking I/O
never run on the event loop that heartbeats Kafka) -> events and chunk result produced and
acknowledged -> offset committed. So no produced event names a thumbnail that is not stored yet.

* Idempotent: the key is the event's deterministic id and the JPEG a pure function of the frame,
  the box and the label, so re-analysing a redelivered chunk rewrites the same blobs.
* A crash after storing and before producing leaves thumbnails that no event names yet; the
  redelivered chunk names them. If its events are never folded into a merged event (the session
  ended or was purged first), they stay orphans until the session's purge removes the directory.
* A store that fails (disk error, bucket unreachable) does not hold the chunk back: detections
  matter more than pictures, so the event is produced without a thumbnail
  (``thumbnail_event_id`` None) and the failure is logged.

The aggregator deletes the thumbnails of detections merged away (``aggregator.thumbnails``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from ingest.storage import thumbnail_key
from livestream.blobstore import BlobStore, BlobStoreError
from schemas.records import ChunkRecord, ChunkResult, Event, Frame

log = logging.getLogger(__name__)

THUMBNAIL_CONTENT_TYPE = "image/jpeg"
DEFAULT_JPEG_QUALITY = 85
BOX_COLOR = (255, 32, 32)  # red: visible on most footage
LABEL_TEXT_COLOR = (255, 255, 255)

Box = tuple[float, float, float, float]


def thumbnail_frame(frames: Sequence[Frame], event: Event) -> Frame | None:
    """The sampled frame the event's thumbnail shows (the one at ``thumbnail_time``), or None."""
    if event.thumbnail_time is None:
        return None
    return next((frame for frame in frames if frame.stream_time == event.thumbnail_time), None)


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A normalised (x0, y0, x1, y1) box in pixels of a ``width`` x ``height`` image, inside it."""
    x0, y0, x1, y1 = (min(1.0, max(0.0, value)) for value in box)
    left, right = sorted((round(x0 * (width - 1)), round(x1 * (width - 1))))
    top, bottom = sorted((round(y0 * (height - 1)), round(y1 * (height - 1))))
    return left, top, right, bottom


def annotate(
    jpeg: bytes, box: Box, label: str, confidence: float, *, quality: int = DEFAULT_JPEG_QUALITY
) -> bytes:
    """The frame ``jpeg`` with ``box`` drawn and labelled ``"<label> <confidence>"``, as a JPEG of
    the frame's size. Raises ``OSError``/``ValueError`` (Pillow's) for a frame that does not decode."""
    with Image.open(io.BytesIO(jpeg)) as opened:
        picture = opened.convert("RGB")
    width, height = picture.size
    draw = ImageDraw.Draw(picture)
    left, top, right, bottom = pixel_box(box, width, height)
    # Thick enough to survive JPEG compression and downscaling in a list of thumbnails.
    line = max(3, round(min(width, height) / 100))
    draw.rectangle((left, top, right, bottom), outline=BOX_COLOR, width=line)
    font = ImageFont.load_default()
    text = f"{label} {confidence:.2f}"
    text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), text, font=font)
    text_width, text_height = text_right - text_left, text_bottom - text_top
    pad = 2
    # Above the box when there is room, else inside its top edge; never off the picture.
    label_top = top - text_height - 2 * pad if top >= text_height + 2 * pad else top
    label_left = min(left, max(0, width - text_width - 2 * pad))
    draw.rectangle(
        (label_left, label_top, label_left + text_width + 2 * pad, label_top + text_height + 2 * pad),
        fill=BOX_COLOR,
    )
    draw.text(
        (label_left + pad - text_left, label_top + pad - text_top), text, fill=LABEL_TEXT_COLOR, font=font
    )
    out = io.BytesIO()
    # No chroma subsampling: it would smear the thin red lines into the frame's colours.
    picture.save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()


class ThumbnailWriter:
    """Renders and stores the thumbnails of a chunk's events (blocking: run it in a worker thread)."""

    def __init__(self, store: BlobStore, *, quality: int = DEFAULT_JPEG_QUALITY) -> None:
        self._store = store
        self._quality = quality

    def attach(self, chunk: ChunkRecord, result: ChunkResult) -> ChunkResult:
        """``result`` with each event naming its thumbnail, once that thumbnail is stored."""
        if not result.events:
            return result
        events = [self._store_one(chunk, event) for event in result.events]
        return result.model_copy(update={"events": events})

    def _store_one(self, chunk: ChunkRecord, event: Event) -> Event:
        frame = thumbnail_frame(chunk.frames, event)
        if frame is None or event.box is None:
            return event  # nothing to draw (an event the scorer made without a frame)
        key = thumbnail_key(event.session_id, event.event_id)
        try:
            jpeg = annotate(frame.jpeg, event.box, event.label, event.confidence, quality=self._quality)
            self._store.put(key, jpeg, THUMBNAIL_CONTENT_TYPE)
        except (BlobStoreError, OSError, ValueError) as exc:
            log.warning(
                "event %s of session %s: thumbnail not stored, the event goes out without one: %s",
                event.event_id,
                event.session_id,
                exc,
            )
            return event
        return event.model_copy(update={"thumbnail_event_id": event.event_id})


__all__ = ["ThumbnailWriter", "annotate", "pixel_box", "thumbnail_frame"]
