"""The analyzer's Prometheus metrics (served by ``livestream.metrics``'s listener).

Labels are bounded: no session ids. Updated by ``analyzer.service`` in the event loop (batch,
result and lag metrics) and in the inference thread (``prometheus_client`` is thread-safe).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from livestream.metrics import LATENCY_BUCKETS_S, SIZE_BUCKETS

BATCH_CHUNKS = Histogram(
    "livestream_analyzer_batch_chunks",
    "Chunk records analysed together in one batch.",
    buckets=SIZE_BUCKETS,
)
BATCH_FRAMES = Histogram(
    "livestream_analyzer_batch_frames",
    "Frames of one batch; those the detector sees (not unchanged ones) go to it in one call.",
    buckets=SIZE_BUCKETS,
)
BATCH_SECONDS = Histogram(
    "livestream_analyzer_batch_seconds",
    "Analysing one batch: JPEG decoding, detector, judge, scoring and thumbnails.",
    buckets=LATENCY_BUCKETS_S,
)
FRAMES_INFERRED = Counter(
    "livestream_analyzer_frames_inferred_total", "Frames run through the detector (its rate is frames/s)."
)
FRAMES_UNCHANGED = Counter(
    "livestream_analyzer_frames_unchanged_total",
    "Frames that reused the detections of an unchanged earlier frame of their chunk instead of running "
    "the detector (analyzer.unchanged); with frames_inferred, every frame analysed.",
)
CHUNKS = Counter("livestream_analyzer_chunks_total", "Chunk results produced, by status.", ["status"])
EVENTS = Counter("livestream_analyzer_events_total", "Per-chunk events produced to the events topic.")
CHUNK_AGE_SECONDS = Histogram(
    "livestream_analyzer_chunk_age_seconds",
    "From a chunk record's creation by ingest (created_at) to its result's acknowledgement: "
    "queueing in Kafka, analysis and publishing.",
    buckets=LATENCY_BUCKETS_S,
)
CONSUMER_LAG = Gauge(
    "livestream_analyzer_consumer_lag_records",
    "Chunk records not yet consumed, per assigned partition of the chunk topic (high watermark minus "
    "position), as of this replica's last poll.",
    ["partition"],
)
DEAD_LETTERS = Counter(
    "livestream_analyzer_dead_letters_total", "Chunk records written to the dead-letter topic."
)
