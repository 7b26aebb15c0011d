"""Analyzer settings (env prefix ``LIVESTREAM_ANALYZER_``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

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
    detector_pipeline: Literal["network", "graph"] = Field(
        default="network",
        description="'network': the detector's network alone, with scaling, box decoding and NMS "
        "batched in numpy (analyzer/ssd_network.py); 'graph': the whole exported graph (same "
        "detections, slower: its TF loops run per image).",
    )
    # Cheaper detector variants (bench/bench_model_variants.py; README, Capacity): both cost
    # detection quality in `make eval`, so the defaults are the float network at 300x300.
    detector_precision: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="'fp32': the network as exported; 'int8': the network quantised by `make models` "
        "(analyzer/models/build_int8.py): ~40 % less CPU per frame, same eval precision, recall and "
        "temporal IoU, but scores move (one eval case miscounts its objects).",
    )
    detector_input_size: int = Field(
        default=300,
        ge=96,
        le=300,
        description="Side of the square frames the detector's network runs on (network pipeline only); "
        "below 300 it is cheaper and misses small objects and more.",
    )
    detector_heads: Literal["query", "all"] = Field(
        default="query",
        description="'query': the network pipeline runs its class convolutions (58 % of its cost) for "
        "the classes each chunk's query needs only, with the same detections of those classes; "
        "'all': for every class, whatever is asked (analyzer/detector.py). The graph pipeline "
        "always runs every class.",
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
    intra_op_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="onnxruntime intra-op threads of the detector (default: the machine's cores, at most "
        "8). Several replicas on one machine should share the cores: `livestream --analyzers N up` "
        "gives each cores // N.",
    )
    # Analyzers work through a backlog that waits in Kafka; ingest reads sources whose playlists
    # keep a segment only for a while. On one machine at twice its capacity, with playlists of 6
    # segments (12 s), the analyzers at the same priority as ingest starved it: sessions fell
    # up to a window behind their sources and missed 156 s of media (bench/capacity.py --window 6).
    # At nice 5 and at nice 10 nothing was missed; 5 leaves the analyzers three times the weight
    # 10 does against whatever else runs at the normal priority (README, Capacity).
    cpu_nice: int = Field(
        default=5,
        ge=0,
        le=19,
        description="The analyzer's CPU priority as a nice value (0: as everything else; 19: the lowest). "
        "Above 0, processes at the normal priority (ingest, the broker, the API) get the cores first "
        "when the machine is short of them, and the analyzers' chunks wait in Kafka instead.",
    )
    classifier_threads: int | None = Field(
        default=None,
        ge=1,
        description="onnxruntime intra-op threads of the image classifier (default: as the detector's).",
    )
    # Batching (analyzer/service.py): chunks of any sessions are analysed together, their frames
    # in one detector call; results are produced and committed per batch. On CPU a bigger batch
    # gains no throughput (the network's cost is per frame) and every chunk of a batch waits for
    # the whole batch: at 8 streams on 2 cores, 2 chunks gave latency p50/p95 6.2/7.3 s against
    # 7.2/9.4 s with 8, at the same analyzer CPU per stream (bench/capacity.py, README Capacity).
    batch_max_chunks: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Chunk records analysed together (about 4 frames each at 2 fps and 2 s chunks); "
        "raise it for GPU providers, whose batches want hundreds of frames.",
    )
    batch_max_wait_ms: int = Field(
        default=20,
        ge=0,
        le=5000,
        description="How long a batch that is not full waits for more chunk records after its first.",
    )
    inference_batch: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Frames per onnxruntime run of the detector (CPU gains nothing past ~4, "
        "bench/bench_detector.py; GPUs want 64-256).",
    )
    unchanged_max_change: float = Field(
        default=4.0,
        ge=0.0,
        le=255.0,
        description="A frame whose every 40x40-pixel cell (at 1280x720; a 32x18 grid) kept its mean colour "
        "within this (0-255) since its chunk's last inferred frame reuses that frame's detections instead "
        "of running the detector (analyzer/unchanged.py: a still picture's noise moves a cell ~0.4); "
        "0: the detector sees every frame.",
    )
    decode_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Threads decoding a batch's JPEG frames (libjpeg releases the GIL).",
    )
    # Chunks are ~1 MB: a poll fetches at most a batch (batch_max_chunks), well inside max_poll_interval.
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
    # Prometheus metrics (defined in analyzer.metrics; livestream.metrics): off unless a port is set.
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the Prometheus listener (/metrics, no authentication); None: no listener. "
        "One per process: give each replica on a host its own.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the metrics listener binds to: loopback by default; 0.0.0.0 for a scraper "
        "on another host, behind a firewall.",
    )
    log_level: str = "INFO"
