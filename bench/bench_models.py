"""Cost of the query and crop models on CPU: ms per embedding batch and per crop, batch 1/8/32.

Run: ``.venv/bin/python bench/bench_models.py [--seconds 2] [--threads N]`` after ``make models``.
Texts are short query-like phrases ("a <COCO class> near the door"); crops are regions of
scikit-image's photos of assorted sizes (preprocessing to 224x224 is included in the time).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from skimage import data

from analyzer.classifier import ImageClassifier
from analyzer.detector import default_intra_op_threads
from analyzer.embedding import SentenceEmbedder
from analyzer.models.coco_labels import COCO_CLASS_NAMES


def crops() -> list[np.ndarray]:
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    regions: list[np.ndarray] = []
    for photo in photos:
        height, width = photo.shape[:2]
        for fraction in (0.3, 0.5, 0.8):
            h, w = int(height * fraction), int(width * fraction)
            regions.append(photo[(height - h) // 2 : (height + h) // 2, (width - w) // 2 : (width + w) // 2])
    return regions


def ms_per_call(call: Callable[[], object], seconds: float) -> float:
    call()  # warm-up
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        calls += 1
    return (time.perf_counter() - started) * 1000 / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per batch size")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--batch-sizes", default="1,8,32")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.threads or default_intra_op_threads()

    embedder = SentenceEmbedder.load(intra_op_threads=threads, max_batch=max(batch_sizes))
    texts = [f"a {name} near the door" for name in COCO_CLASS_NAMES]
    print(f"all-MiniLM-L6-v2 sentence embeddings, {threads} intra-op threads")
    print(f"{'batch':>5}  {'ms/batch':>9}  {'ms/text':>8}")
    for size in batch_sizes:
        batch = (texts * (size // len(texts) + 1))[:size]
        ms = ms_per_call(lambda batch=batch: embedder.embed(batch), args.seconds)
        print(f"{size:>5}  {ms:>9.1f}  {ms / size:>8.2f}")

    classifier = ImageClassifier.load(intra_op_threads=threads, max_batch=max(batch_sizes))
    regions = crops()
    print(f"\nEfficientNet-Lite0 ImageNet classifier, {threads} intra-op threads, crops of 150-410 px")
    print(f"{'batch':>5}  {'ms/batch':>9}  {'ms/crop':>8}")
    for size in batch_sizes:
        batch = (regions * (size // len(regions) + 1))[:size]
        ms = ms_per_call(lambda batch=batch: classifier.classify(batch, top_k=5), args.seconds)
        print(f"{size:>5}  {ms:>9.1f}  {ms / size:>8.2f}")


if __name__ == "__main__":
    main()
