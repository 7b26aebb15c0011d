"""Settings of the ingest service (env prefix ``LIVESTREAM_INGEST_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from ingest.decode import SkipMode
from livestream.blobstore.settings import DEFAULT_LOCAL_DIR
from livestream.egress import SourceRuleList
from livestream.settings import ServiceSettings

GIB = 1024**3
DAY_SECONDS = 24 * 60 * 60


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="LIVESTREAM_INGEST_", frozen=True, extra="ignore", populate_by_name=True
    )

    group_id: str = Field(default="livestream-ingest", description="Consumer group on the command topic.")
    command_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a brand-new consumer group starts reading commands.",
    )
    command_max_age_seconds: float = Field(
        default=300.0,
        gt=0,
        description="StartSession commands older than this are skipped (stale replays after a reset).",
    )
    storage_dir: Path = Field(
        default=DEFAULT_LOCAL_DIR,
        # One directory with the local blob store's (livestream.blobstore.settings), whichever
        # variable names it: the API serves recordings from there.
        validation_alias=AliasChoices("LIVESTREAM_INGEST_STORAGE_DIR", "LIVESTREAM_STORAGE_LOCAL_DIR"),
        description=(
            "Fetched segments and each session's playback manifest live under <dir>/<session_id>/; "
            "the local blob store's root, or the working copy mirrored to the S3 backend."
        ),
    )
    recording_max_bytes_per_session: int = Field(
        default=2 * GIB,
        ge=0,
        description=(
            "Bytes of recorded segment files kept per session; past it the oldest are deleted (down to "
            "90%) and stay listed in the manifest as #EXT-X-GAP. 0: unlimited."
        ),
    )
    recording_max_age_s: float = Field(
        default=7 * DAY_SECONDS,
        ge=0,
        description=(
            "Recorded segment files of a running session older than this are deleted (down to 90% of "
            "it) and listed as #EXT-X-GAP. 0: unlimited."
        ),
    )
    recording_max_bytes_total: int = Field(
        default=20 * GIB,
        ge=0,
        description=(
            "Bytes of segment files of all recordings under storage_dir (finished ones too); past it "
            "the oldest across sessions are deleted (down to 90%). 0: unlimited."
        ),
    )
    sample_fps: float = Field(default=2.0, gt=0, le=60, description="Frames kept per second of stream time.")
    chunk_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Stream time covered by one chunk. A chunk is analysed once it is complete, so an "
        "event waits for the rest of its chunk: with 2 s segments, 2 s chunks about halve the latency "
        "of 4 s ones at every load kept up (p50 2.3 against 4.5 s at 1 stream, 3.4 against 6.7 s at "
        "20; README: Capacity) for the same CPU a stream within noise, and twice the per-chunk records.",
    )
    max_frame_width: int = Field(default=640, ge=64, description="Frames wider than this are downscaled.")
    jpeg_quality: int = Field(default=85, ge=20, le=95, description="First JPEG quality tried per chunk.")
    max_variant_bandwidth: int | None = Field(
        default=None,
        description="Master playlists: pick the highest BANDWIDTH not above this (None: the highest).",
    )
    live_edge_segments: int = Field(
        default=2, ge=1, description="A live playlist is joined this many segments from its end."
    )
    stall_target_durations: float = Field(
        default=6.0,
        gt=0,
        description=(
            "No new segment for this many target durations (or a failed playlist refresh) is an outage: "
            "the playlist is then polled with capped exponential backoff until outage_tolerance_s."
        ),
    )
    outage_tolerance_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "A source that stops answering or growing keeps its session this long; then the session "
            "ends (ENDED with a reason if it had worked, FAILED if it never did)."
        ),
    )
    outage_poll_max_s: float = Field(
        default=15.0, gt=0, description="Longest wait between playlist polls during an outage (backoff cap)."
    )
    max_consecutive_bad_segments: int = Field(
        default=3,
        ge=1,
        description=(
            "Segments in a row that cannot be decoded, are refused or fail with a non-transient fetch "
            "error before the session fails (unreachable segments count as an outage instead)."
        ),
    )
    playlist_max_entries: int = Field(
        default=20_000, ge=1, description="Segments (or variants) one playlist may list; more is refused."
    )
    playlist_max_line_bytes: int = Field(
        default=16 * 1024, ge=256, description="Longest playlist line (URI or tag); a longer one is refused."
    )
    decode_max_pixels: int = Field(
        default=4096 * 2160, ge=64 * 64, description="Largest video frame (width x height) decoded."
    )
    decode_max_fps: float = Field(
        default=120.0,
        gt=0,
        description="A segment holding more than 4 x its EXTINF duration x this many frames is refused.",
    )
    decode_skip: SkipMode = Field(
        default="exact",
        description="Frames decoded (ingest/decode.py, figures in bench/README.md): 'exact' decodes only "
        "the sampled frames and the H.264 frames they depend on (the same frames and pixels as a full "
        "decode; other codecs fall back to it); 'none' decodes every frame; 'nonref' skips "
        "non-reference frames (kept frames move by up to one B-frame run); 'nonkey' keyframes only.",
    )
    decode_threads: Literal["none", "slice", "frame", "auto"] = Field(
        default="none",
        description="The decoder's threads per segment (ingest/decode.py, Threads): 'none' decodes each "
        "segment on one thread (the cheapest in CPU: 18 % less than 'auto' on low-latency x264 "
        "encodes, the same on others; sessions run side by side anyway); 'slice', 'frame' or "
        "'auto' (libavcodec's choice) shorten one segment's decode for more CPU.",
    )
    # Overload policy (ingest.lag): what a session does when the analyzers fall behind it.
    analyzer_group_id: str = Field(
        default="livestream-analyzer",
        description="The analyzers' consumer group on the chunk topic (LIVESTREAM_ANALYZER_GROUP_ID), whose "
        "committed offsets say which chunks have been analysed.",
    )
    lag_check_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often ingest asks the broker for the analyzer group's committed offsets and "
        "re-measures every session's lag (one request per process).",
    )
    chunk_partitioning: Literal["spread", "session"] = Field(
        default="spread",
        description="Which partition of the chunks topic each chunk record goes to: 'spread' rotates a "
        "session's chunks over every partition (starting at its key's), so analyzer replicas share even "
        "one busy session evenly; 'session' puts them all on the session key's partition, in order.",
    )
    # The default is the capacity benchmark's choice (README, Capacity): 14 streams on a machine that
    # keeps up with 8, max_lag_s 20: 'thin' finished every session within 6.5 s of its stream's end
    # and found every ground-truth window (56/56); 'skip' lost 14 of them (410 s of stream skipped);
    # an unbounded queue found them all but 4 sessions were still running a minute after their end.
    lag_policy: Literal["queue", "skip", "thin"] = Field(
        default="thin",
        description="What a session does when its lag (source live edge minus the stream time the "
        "analyzers took over) exceeds max_lag_s: 'queue' lets chunks wait up to max_lag_s, then "
        "lag_fallback_policy acts; 'skip' stops fetching segments (a gap in the recording, empty "
        "chunks) until the lag is below max_lag_s/2, then goes on at the live edge; 'thin' halves the "
        "sampling rate (down to thin_min_fps) until the lag is below max_lag_s/2.",
    )
    max_lag_s: float = Field(
        default=60.0,
        gt=0,
        description="Lag past which the policy acts; keep it well above chunk_seconds plus a few segment "
        "durations (the lag of a session nobody is behind).",
    )
    lag_fallback_policy: Literal["skip", "thin"] = Field(
        default="thin", description="What 'queue' turns into once a session's lag exceeds max_lag_s."
    )
    thin_min_fps: float = Field(
        default=0.5, gt=0, description="Lowest sampling rate 'thin' goes down to (frames per second)."
    )
    thin_step_s: float = Field(
        default=10.0,
        ge=0,
        description="Least time between two halvings of a lagging session's sampling rate (the analyzers "
        "need that long to show the effect); a halving also needs the lag not to have fallen since.",
    )
    lag_report_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="A session reports a material change of its lag, skipped time, sampling rate or "
        "policy actions to the aggregator (an ACTIVE lifecycle report) at most this often.",
    )
    max_crash_resumes: int = Field(
        default=3,
        ge=1,
        description=(
            "A session whose runs crashed the ingest process this many times (without progress in "
            "between) is not resumed again: it ends FAILED (quarantine)."
        ),
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Attempts at a session command that fails with an unexpected error before it is "
        "written to the dead-letter topic and skipped (a StartSession is then reported FAILED).",
    )
    # Broker outages (livestream.kafka.resilience): produce and commit errors are retried with
    # capped exponential backoff; past the limit the service exits with status 2 (see service).
    broker_outage_limit_s: float = Field(
        default=300.0,
        gt=0,
        description="Broker errors lasting this long with no success in between stop the service (exit 2).",
    )
    retry_backoff_s: float = Field(default=0.5, gt=0, description="First wait before a broker retry.")
    retry_backoff_max_s: float = Field(default=10.0, gt=0, description="Longest wait between broker retries.")
    http_connect_timeout: float = Field(default=5.0, gt=0)
    http_read_timeout: float = Field(default=10.0, gt=0)
    http_retries: int = Field(default=3, ge=0, description="Retries after the first attempt of a request.")
    http_backoff_seconds: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles on each further retry."
    )
    # Egress policy and per-fetch limits (ingest.fetch, livestream.egress).
    allow_private_sources: bool = Field(
        default=False,
        description=(
            "Allow sources on loopback, private, link-local, CGNAT and other non-public addresses "
            "(local cameras, the test source). Off: such sources are refused at connect time."
        ),
    )
    source_allow: SourceRuleList = Field(
        default=(),
        description=(
            "Comma-separated CIDRs and host names (*.example.com for subdomains); when set, only "
            "sources matching it are fetched, private ones included."
        ),
    )
    source_deny: SourceRuleList = Field(
        default=(),
        description="Comma-separated CIDRs and host names never fetched (wins over the allow list).",
    )
    http_max_redirects: int = Field(default=5, ge=0, description="Redirect hops followed per request.")
    http_playlist_max_bytes: int = Field(
        default=8 * 1024**2, ge=1024, description="Largest playlist body; the download stops past it."
    )
    http_segment_max_bytes: int = Field(
        default=64 * 1024**2, ge=1024, description="Largest segment body; the download stops past it."
    )
    http_playlist_deadline_seconds: float = Field(
        default=20.0, gt=0, description="Total time one playlist fetch (redirects and body) may take."
    )
    http_segment_deadline_seconds: float = Field(
        default=60.0, gt=0, description="Total time one segment fetch (redirects and body) may take."
    )
    http_max_connections_per_session: int = Field(
        default=4, ge=1, description="Connection pool size of one session's fetcher."
    )
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0)
    # Prometheus metrics (defined in ingest.session; livestream.metrics): off unless a port is set.
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            "Port of the Prometheus listener (/metrics, no authentication); None: no listener. "
            "One per process: give each replica on a host its own."
        ),
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description=(
            "Address the metrics listener binds to (ingest has no other listener): loopback by "
            "default; 0.0.0.0 for a scraper on another host, behind a firewall."
        ),
    )
