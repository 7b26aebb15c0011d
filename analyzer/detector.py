"""COCO object detector: SSD-MobileNetV2 (ONNX) run by onnxruntime.

Frames are resized to the graph's 300x300 input before the call: the graph would do the
same internally, and a fixed size lets frames of any resolution share one batch. Boxes come
back normalised to [0, 1], so they are valid on the original frame as they are.

Two pipelines give the same detections (``tests/test_ssd_network.py``): ``network`` (default)
runs only the network cut out of the exported graph, with scaling, box decoding and NMS done
batched in numpy (``analyzer.ssd_network``); ``graph`` runs the whole exported graph, whose
TF pre- and post-processing loops run image by image. On 2 CPU cores the network pipeline does
a frame in ~30 ms against ~42 ms for the graph (``bench/bench_detector.py``), and it is the
one a GPU can batch.

Cheaper variants of the network pipeline (``bench/bench_model_variants.py``, README *Capacity*):
``precision="int8"`` runs the network quantised by ``make models`` (``analyzer.models.build_int8``)
and ``input_size`` below 300 runs it on smaller frames (``analyzer.ssd_network.resize_network``,
anchors from ``ssd_anchors``). Both cost detection quality, so the default stays float at 300.

``ObjectDetector.detect`` is safe to call from several threads at once (onnxruntime
sessions are), and it is CPU-bound: call it via ``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from PIL import Image

from analyzer.errors import DetectorError, ModelNotFoundError
from analyzer.models import (
    INPUT_NAME,
    INT8_MODEL_FILENAME,
    MODEL_INPUT_SIZE,
    MODEL_NAME,
    OUTPUT_NAMES,
    read_sidecar,
)
from analyzer.models.coco_labels import COCO_LABELS
from analyzer.ssd_network import (
    BOX_ENCODINGS,
    CLASS_LOGITS,
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    NETWORK_INPUT,
    extract_network,
    network_input,
    postprocess,
    resize_network,
    ssd_anchors,
)
from livestream.errors import ConfigurationError

DetectorPipeline = Literal["network", "graph"]
DetectorPrecision = Literal["fp32", "int8"]
DETECTOR_PRECISIONS: tuple[str, ...] = ("fp32", "int8")

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
# Scores below this are SSD's long tail of background guesses: never worth returning.
DEFAULT_MIN_SCORE = 0.25
# Frames per session.run. On CPU batching gains little (bench/bench_detector.py, 2 cores: ~40 frames/s
# at 1, ~46 at 2-4, no better at 8: the graph's NMS runs per image); raise it for GPU providers.
DEFAULT_MAX_BATCH = 4


@dataclass(frozen=True, slots=True)
class Detection:
    """One object in one frame. ``box`` is (x0, y0, x1, y1), normalised to [0, 1]."""

    label: str
    score: float
    box: tuple[float, float, float, float]


def default_intra_op_threads() -> int:
    # All cores by default, capped: beyond ~8 threads SSD-MobileNet gains nothing.
    return max(1, min(8, os.cpu_count() or 1))


class ObjectDetector:
    """A loaded ONNX detector. Build with :meth:`load`."""

    def __init__(
        self,
        session: ort.InferenceSession,
        model_name: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        anchors: np.ndarray | None = None,
        input_size: int = MODEL_INPUT_SIZE,
    ):
        self._session = session
        self._model_name = model_name
        self._max_batch = max(1, max_batch)
        self._anchors = anchors  # set: the network pipeline (its session is the cut network)
        self._input_size = input_size

    @classmethod
    def load(
        cls,
        model_path: str | Path | None = None,
        providers: list[str] | None = None,
        *,
        intra_op_threads: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        pipeline: DetectorPipeline = "network",
        precision: DetectorPrecision = "fp32",
        input_size: int = MODEL_INPUT_SIZE,
    ) -> ObjectDetector:
        """Open the model. ``model_path`` defaults to the configured cache (``LIVESTREAM_MODELS_DIR``).

        ``providers`` are onnxruntime execution providers in order of preference (default CPU).
        Requested providers this onnxruntime build lacks (e.g. CUDA on the CPU wheel) are
        skipped with a warning; CPU is always appended as the fallback.

        ``precision`` and ``input_size`` choose a variant of the network pipeline (module
        docstring); the int8 model is the one ``make models`` builds beside ``model_path``. A
        variant that is unknown, not built or not possible with ``pipeline`` is an error: a
        silent fallback would change detection quality or cost without anyone asking.
        """
        if model_path is None:
            from analyzer.models import default_model_path

            model_path = default_model_path()
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(
                "ONNX detector not found; build it with `make models` (or `python -m analyzer.models build`)",
                model_path=str(path),
            )
        if precision not in DETECTOR_PRECISIONS:
            raise ConfigurationError(
                f"unknown detector precision {precision!r}; choose one of {list(DETECTOR_PRECISIONS)}",
                precision=precision,
            )
        if not MIN_INPUT_SIZE <= input_size <= MAX_INPUT_SIZE:
            raise ConfigurationError(
                f"detector input size must be within {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} (default "
                f"{MODEL_INPUT_SIZE})",
                input_size=input_size,
            )
        if pipeline == "graph" and (precision, input_size) != ("fp32", MODEL_INPUT_SIZE):
            raise ConfigurationError(
                "the graph pipeline runs only the exported float model at 300x300; int8 and other "
                "input sizes need the network pipeline",
                precision=precision,
                input_size=input_size,
            )
        network_path = path
        if precision == "int8":
            network_path = path.with_name(INT8_MODEL_FILENAME)
            if not network_path.is_file():
                raise ModelNotFoundError(
                    "the int8 detector is not built; build it with `make models` (or "
                    "`python -m analyzer.models build`)",
                    model_path=str(network_path),
                )
        chosen = _choose_providers(providers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or default_intra_op_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # the converted graph triggers harmless shape-merge warnings
        anchors: np.ndarray | None = None
        source: str | bytes = str(path)
        if precision == "int8":
            # Already the cut network (analyzer.models.build_int8); its anchors are the graph's,
            # which ssd_anchors reproduces (tests/test_detector_variants.py).
            source, anchors = network_path.read_bytes(), ssd_anchors(MODEL_INPUT_SIZE)
        elif pipeline == "network":
            network = extract_network(path)
            source, anchors = network.model, network.anchors
        # Only the network pipeline gets here with another size (the graph one was refused above).
        if input_size != MODEL_INPUT_SIZE and isinstance(source, bytes):
            source, anchors = resize_network(source, input_size), ssd_anchors(input_size)
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DetectorError(
                f"onnxruntime cannot load the model: {exc}", model_path=str(network_path)
            ) from exc
        if chosen[0] not in session.get_providers():
            # e.g. CUDA is in the build but no usable GPU: onnxruntime would fall back quietly.
            raise DetectorError(
                f"execution provider {chosen[0]} could not be initialised",
                model_path=str(path),
                active=session.get_providers(),
            )
        inputs = [i.name for i in session.get_inputs()]
        outputs = {o.name for o in session.get_outputs()}
        expected_inputs, expected_outputs = (
            ([NETWORK_INPUT], {BOX_ENCODINGS, CLASS_LOGITS})
            if anchors is not None
            else ([INPUT_NAME], set(OUTPUT_NAMES))
        )
        if inputs != expected_inputs or not expected_outputs <= outputs:
            raise DetectorError(
                "the model does not have the SSD detection signature; rebuild it with `make models`",
                model_path=str(path),
                inputs=inputs,
            )
        sidecar = read_sidecar(network_path) or {}
        model_name = str(sidecar.get("name", MODEL_NAME))
        if input_size != MODEL_INPUT_SIZE:
            model_name += f"@{input_size}"  # chunk results say which variant found what
        log.info(
            "loaded %s from %s (%s pipeline, %s, input %dx%d, providers %s, %d intra-op threads)",
            model_name,
            network_path,
            pipeline,
            precision,
            input_size,
            input_size,
            session.get_providers(),
            options.intra_op_num_threads,
        )
        return cls(session, model_name, max_batch=max_batch, anchors=anchors, input_size=input_size)

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def input_size(self) -> int:
        """Side of the square frames the network runs on."""
        return self._input_size

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def detect(
        self, images: Sequence[np.ndarray], *, min_score: float = DEFAULT_MIN_SCORE
    ) -> list[list[Detection]]:
        """Detect COCO objects in HxWx3 uint8 RGB frames; one list per frame, best score first."""
        if len(images) == 0:
            return []
        batch = np.stack([_prepare(image, index, self._input_size) for index, image in enumerate(images)])
        results: list[list[Detection]] = []
        for start in range(0, len(batch), self._max_batch):
            part = batch[start : start + self._max_batch]
            if self._anchors is not None:
                encodings, logits = self._run(
                    [BOX_ENCODINGS, CLASS_LOGITS], {NETWORK_INPUT: network_input(part)}
                )
                results += [
                    _detections(found) for found in postprocess(encodings, logits, self._anchors, min_score)
                ]
                continue
            boxes, scores, classes, counts = self._run(list(OUTPUT_NAMES), {INPUT_NAME: part})
            for frame in range(len(part)):
                results.append(
                    _decode(boxes[frame], scores[frame], classes[frame], int(counts[frame]), min_score)
                )
        return results

    def _run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._session.run(outputs, feed)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DetectorError(
                f"inference failed: {type(exc).__name__}: {exc}",
                retryable=is_transient_inference_error(exc),
                batch_size=len(next(iter(feed.values()))),
            ) from exc


# The retry rule: onnxruntime reports failures of the runtime itself (an execution provider that
# ran out of device memory, a CUDA/cuDNN call that failed, a provider that fell over) as these
# classes. They say nothing about the input, so the same batch may succeed a moment later: the
# service retries them with backoff. Input-shaped failures (InvalidArgument, NotImplemented...)
# and anything else are deterministic and reported at once.
TRANSIENT_ORT_ERRORS = frozenset({"Fail", "RuntimeException", "EPFail", "EngineError"})


def is_transient_inference_error(exc: BaseException) -> bool:
    """True for onnxruntime's runtime failures worth retrying (see ``TRANSIENT_ORT_ERRORS``)."""
    return type(exc).__name__ in TRANSIENT_ORT_ERRORS and type(exc).__module__.startswith("onnxruntime")


def _choose_providers(requested: list[str] | None) -> list[str]:
    """The requested providers, CPU last for the ops others lack; a missing one is an error.

    Asking for CUDA and silently getting CPU would hide a broken deployment until the
    analyzer falls behind, so an unavailable provider stops the start instead.
    """
    available = ort.get_available_providers()
    missing = [provider for provider in requested or [] if provider not in available]
    if missing:
        raise DetectorError(
            f"onnxruntime here lacks the requested execution providers {missing} (it has {available}); "
            "install the matching onnxruntime build (e.g. onnxruntime-gpu) or change "
            "LIVESTREAM_ANALYZER_PROVIDERS",
            requested=requested,
        )
    chosen = list(requested or [CPU_PROVIDER])
    if CPU_PROVIDER not in chosen:
        chosen.append(CPU_PROVIDER)
    return chosen


def _prepare(image: np.ndarray, index: int, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DetectorError(
            "frames must be HxWx3 uint8 RGB arrays",
            frame_index=index,
            shape=getattr(image, "shape", None),
            dtype=getattr(image, "dtype", None),
        )
    if image.shape[:2] == (size, size):
        return image
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    return np.asarray(resized)


def _detections(found: list[tuple[int, float, tuple[float, float, float, float]]]) -> list[Detection]:
    """The network pipeline's (class id, score, yxyx box) as Detections (unknown ids skipped)."""
    detections: list[Detection] = []
    for class_id, score, (y0, x0, y1, x1) in found:
        label = COCO_LABELS.get(class_id)
        if label is not None:
            detections.append(Detection(label=label, score=score, box=(x0, y0, x1, y1)))
    return detections


def _decode(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, count: int, min_score: float
) -> list[Detection]:
    detections: list[Detection] = []
    # The graph sorts by score, so the first below the threshold ends the useful part.
    for i in range(min(count, len(scores))):
        score = float(scores[i])
        if score < min_score:
            break
        label = COCO_LABELS.get(int(classes[i]))
        if label is None:
            continue
        y0, x0, y1, x1 = (float(v) for v in np.clip(boxes[i], 0.0, 1.0))
        detections.append(Detection(label=label, score=score, box=(x0, y0, x1, y1)))
    return detections
