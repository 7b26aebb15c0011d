"""Analyzer settings (env prefix ``LIVESTREAM_ANALYZER_``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from livestream.settings import ServiceSettings


class AnalyzerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIVESTREAM_ANALYZER_", frozen=True, extra="ignore")

    group_id: str = "livestream-analyzer"
    instance_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Names this replica in chunk results and Kafka client ids.",
    )
    model_path: Path | None = Field(
        default=None, description="ONNX detector; default: the one `make models` builds in the cache."
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description='onnxruntime providers in order, e.g. ["CUDAExecutionProvider","CPUExecutionProvider"].',
    )
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_gap_frames: int = Field(default=1, ge=0)
    # Query judgements (analyzer/judge.py; defaults and their reasons in analyzer.scoring.ScoringPolicy).
    classifier_min_probability: float = Field(
        default=0.15,
        ge=0.0,
        le=1.0,
        description="The ImageNet classifier accepts a target when its labels hold at least this "
        "probability among the top classifier_top_k classes of a crop or frame.",
    )
    classifier_top_k: int = Field(default=5, ge=1, le=1000)
    open_query_threshold: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="Detection score an empty query (every COCO class) needs: nobody asked for them.",
    )
    classifier_threads: int | None = Field(
        default=None,
        ge=1,
        description="onnxruntime intra-op threads of the image classifier (default: as the detector's).",
    )
    # Chunks are ~1 MB: fetch few at a time so one poll's work stays well inside max_poll_interval.
    max_poll_records: int = Field(default=4, ge=1)
    max_poll_interval_ms: int = 300_000
    # Failure handling (the rules are written in analyzer/service.py).
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Analyses of a chunk that fails with an unexpected error before it is written to "
        "the dead-letter topic and reported failed (counted per record in this process only).",
    )
    transient_attempts: int = Field(
        default=3,
        ge=1,
        description="Analyses of a chunk whose inference fails with a retryable runtime error "
        "(e.g. GPU out of memory) before the chunk is reported failed.",
    )
    retry_backoff_s: float = Field(
        default=0.5, gt=0.0, description="First wait before a retry (analysis or broker); doubles each time."
    )
    retry_backoff_max_s: float = Field(default=10.0, gt=0.0, description="Longest wait between two retries.")
    broker_outage_limit_s: float = Field(
        default=300.0,
        gt=0.0,
        description="How long produce, commit and fetch errors are retried without one success before "
        "the analyzer exits non-zero (for its supervisor to restart it).",
    )
    thumbnails: bool = Field(
        default=True,
        description="Store an annotated JPEG of each event's best frame beside the recording, in the "
        "blob store LIVESTREAM_STORAGE_* configure (see analyzer/thumbnails.py).",
    )
    thumbnail_jpeg_quality: int = Field(default=85, ge=20, le=95, description="JPEG quality of thumbnails.")
    log_level: str = "INFO"
