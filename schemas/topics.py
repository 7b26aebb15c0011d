"""Kafka topics of the system: names, partitioning, retention and compaction, chosen on purpose.

Every record is keyed by ``session_id`` (UTF-8), so all records of one session land in one
partition of each topic and stay in order. All topics have the same partition count, which
keeps them co-partitioned: the aggregator's table for session X is fed by the same partition
number of every input topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PARTITIONS = 6
DAY_MS = 24 * 60 * 60 * 1000

# Chunk records carry JPEG frames; ingest keeps each one under this budget and the topic
# allows a little more, so a record never trips the broker's size check.
CHUNK_RECORD_BUDGET_BYTES = 1_500_000
CHUNK_TOPIC_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its full name, partition count and topic-level configs."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Topics:
    """Topic names for one deployment (``prefix`` lets several stacks share a cluster)."""

    prefix: str = "livestream"
    partitions: int = DEFAULT_PARTITIONS

    @property
    def session_commands(self) -> str:
        return f"{self.prefix}.session-commands"

    @property
    def session_lifecycle(self) -> str:
        return f"{self.prefix}.session-lifecycle"

    @property
    def chunks(self) -> str:
        return f"{self.prefix}.chunks"

    @property
    def chunk_results(self) -> str:
        return f"{self.prefix}.chunk-results"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def session_state(self) -> str:
        return f"{self.prefix}.session-state"

    @property
    def session_chunks(self) -> str:
        return f"{self.prefix}.session-chunks"

    @property
    def session_events(self) -> str:
        return f"{self.prefix}.session-events"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.dead-letter"

    @property
    def ingest_checkpoints(self) -> str:
        return f"{self.prefix}.ingest-checkpoints"

    @property
    def streams(self) -> str:
        return f"{self.prefix}.streams"

    def specs(self) -> list[TopicSpec]:
        week = str(7 * DAY_MS)
        return [
            TopicSpec(
                self.session_commands,
                self.partitions,
                {"cleanup.policy": "delete", "retention.ms": week},
                "start/end commands from the API (SessionCommand); read by ingest and aggregator",
            ),
            TopicSpec(
                self.session_lifecycle,
                self.partitions,
                {"cleanup.policy": "delete", "retention.ms": week},
                "ingest's reports of a session's source: ACTIVE, ENDED (with chunk total), FAILED",
            ),
            TopicSpec(
                self.chunks,
                self.partitions,
                # Frames are bulky and only useful while analyzers catch up: keep one day.
                {
                    "cleanup.policy": "delete",
                    "retention.ms": str(DAY_MS),
                    "max.message.bytes": str(CHUNK_TOPIC_MAX_MESSAGE_BYTES),
                },
                "sampled JPEG frames of one chunk of stream time (ChunkRecord); read by analyzers",
            ),
            TopicSpec(
                self.chunk_results,
                self.partitions,
                {"cleanup.policy": "delete", "retention.ms": week},
                "one result per analyzed chunk, with that chunk's events (ChunkResult)",
            ),
            TopicSpec(
                self.events,
                self.partitions,
                {"cleanup.policy": "delete", "retention.ms": week},
                "every detected event (Event); public feed for downstream consumers and SSE",
            ),
            TopicSpec(
                self.session_state,
                self.partitions,
                # Latest header per session is all anyone needs: compact; the aggregator's
                # retention writes the tombstone that removes a session.
                {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(DAY_MS)},
                "session headers (SessionHeader): status, counters, open events; compacted by session_id",
            ),
            TopicSpec(
                self.session_chunks,
                self.partitions,
                # One record per chunk, keyed <session_id>/chunk/<index>, in the session's partition.
                {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(DAY_MS)},
                "chunk summaries (SessionChunk), written once per chunk; compacted by "
                "<session_id>/chunk/<index>, partitioned by session_id",
            ),
            TopicSpec(
                self.session_events,
                self.partitions,
                # Versions of merged events, keyed <session_id>/event/<number>: compaction keeps
                # the latest version of each event.
                {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(DAY_MS)},
                "merged events (SessionEvent: opened, updated, closed); compacted by "
                "<session_id>/event/<number>, partitioned by session_id",
            ),
            TopicSpec(
                self.dead_letter,
                self.partitions,
                # Poison records kept for inspection; the longest input retention, plus margin.
                {
                    "cleanup.policy": "delete",
                    "retention.ms": str(14 * DAY_MS),
                    "max.message.bytes": str(CHUNK_TOPIC_MAX_MESSAGE_BYTES + 64 * 1024),
                },
                "input records a service gave up on (DeadLetter: the record, the error, where it came "
                "from); keyed like the record (session_id when known)",
            ),
            TopicSpec(
                self.ingest_checkpoints,
                self.partitions,
                # One live checkpoint per running session; tombstones remove ended ones.
                {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(DAY_MS)},
                "progress of each running ingest session (IngestCheckpoint), so another ingest "
                "instance resumes it after a restart or rebalance; compacted by session_id",
            ),
            TopicSpec(
                self.streams,
                self.partitions,
                # The API's durable list of named streams: the latest record per stream is the
                # stream; every API replica replays it, so they all know the same streams.
                {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": str(DAY_MS)},
                "named streams of each tenant (AttachedStream), from attach-stream and from "
                "start-session when it creates the stream id; compacted by <tenant>/<stream_id>",
            ),
        ]
