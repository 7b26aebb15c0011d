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

Class heads (``heads="query"``, the default of the network pipeline): ``detect`` is told, per
frame, which COCO classes are wanted (``labels``; the analyzer passes its query's). The network's
six class convolutions, 58 % of its cost here, then run for those classes only
(``analyzer.ssd_network.split_class_heads``): the trunk once per batch, then a small head per
distinct class set in the batch (built on first use, ~6 ms, and kept: ``MAX_CACHED_HEADS``). The
detections of the wanted classes are those of the whole network, bit for bit; a one-class query
costs ~30 ms of CPU a frame on this project's machine against ~60 ms for the whole network
(``bench/bench_detector.py --class-heads``).
``heads="all"`` runs the whole network whatever is wanted, and the graph pipeline always does;
both then return only the wanted classes, so every configuration answers ``labels`` alike.

``ObjectDetector.detect`` is safe to call from several threads at once (onnxruntime
sessions are), and it is CPU-bound: call it via ``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
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
    CLASS_HEAD_OUTPUT,
    CLASS_LOGITS,
    FRAMES_INPUT,
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    ClassHead,
    class_head_model,
    extract_network,
    postprocess,
    resize_network,
    split_class_heads,
    ssd_anchors,
    with_uint8_input,
)
from livestream.errors import ConfigurationError

DetectorPipeline = Literal["network", "graph"]
DetectorPrecision = Literal["fp32", "int8"]
DETECTOR_PRECISIONS: tuple[str, ...] = ("fp32", "int8")
DetectorHeads = Literal["query", "all"]
DETECTOR_HEADS: tuple[str, ...] = ("query", "all")

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
# Scores below this are SSD's long tail of background guesses: never worth returning.
DEFAULT_MIN_SCORE = 0.25
# Frames per session.run. On CPU batching gains little (bench/bench_detector.py, 2 cores: ~40 frames/s
# at 1, ~46 at 2-4, no better at 8: the graph's NMS runs per image); raise it for GPU providers.
DEFAULT_MAX_BATCH = 4
# Class heads kept built (module docstring): one per distinct class set; a one-class head holds
# ~0.6 MB of weights, the every-class one ~50 MB (kept apart, never evicted).
MAX_CACHED_HEADS = 32
COCO_IDS: dict[str, int] = {name: class_id for class_id, name in COCO_LABELS.items()}
ALL_CLASS_IDS: tuple[int, ...] = tuple(sorted(COCO_LABELS))


@dataclass(frozen=True, slots=True)
class Detection:
    """One object in one frame. ``box`` is (x0, y0, x1, y1), normalised to [0, 1]."""

    label: str
    score: float
    box: tuple[float, float, float, float]


def default_intra_op_threads() -> int:
    # All cores by default, capped: beyond ~8 threads SSD-MobileNet gains nothing.
    return max(1, min(8, os.cpu_count() or 1))


class ClassHeads:
    """The class convolutions of a split network, built per class set on first use (LRU-kept).

    Safe from several threads: building is under a lock, and sessions are.
    """

    def __init__(
        self,
        heads: Sequence[ClassHead],
        options: ort.SessionOptions,
        providers: list[str],
        max_cached: int = MAX_CACHED_HEADS,
    ) -> None:
        self._heads = tuple(heads)
        self._options = options
        self._providers = providers
        self._max_cached = max(1, max_cached)
        self._lock = threading.Lock()
        self._every_class: ort.InferenceSession | None = None
        self._cached: OrderedDict[tuple[int, ...], ort.InferenceSession] = OrderedDict()

    @property
    def input_names(self) -> list[str]:
        return [head.input_name for head in self._heads]

    def session(self, class_ids: tuple[int, ...]) -> ort.InferenceSession:
        """The head session of ``class_ids`` (sorted COCO ids)."""
        with self._lock:
            if class_ids == ALL_CLASS_IDS:
                if self._every_class is None:
                    self._every_class = self._build(class_ids)
                return self._every_class
            session = self._cached.get(class_ids)
            if session is None:
                session = self._cached[class_ids] = self._build(class_ids)
                while len(self._cached) > self._max_cached:
                    self._cached.popitem(last=False)
            self._cached.move_to_end(class_ids)
            return session

    def _build(self, class_ids: tuple[int, ...]) -> ort.InferenceSession:
        model = class_head_model(self._heads, class_ids)
        try:
            return ort.InferenceSession(model, sess_options=self._options, providers=self._providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DetectorError(
                f"onnxruntime cannot load a class head: {exc}", class_ids=list(class_ids)
            ) from exc


class ObjectDetector:
    """A loaded ONNX detector. Build with :meth:`load`."""

    def __init__(
        self,
        session: ort.InferenceSession,
        model_name: str,
        max_batch: int = DEFAULT_MAX_BATCH,
        anchors: np.ndarray | None = None,
        input_size: int = MODEL_INPUT_SIZE,
        class_heads: ClassHeads | None = None,
    ):
        self._session = session
        self._model_name = model_name
        self._max_batch = max(1, max_batch)
        self._anchors = anchors  # set: the network pipeline (its session is the cut network)
        self._input_size = input_size
        self._class_heads = class_heads  # set: the session is the trunk (module docstring)

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
        heads: DetectorHeads = "query",
    ) -> ObjectDetector:
        """Open the model. ``model_path`` defaults to the configured cache (``LIVESTREAM_MODELS_DIR``).

        ``providers`` are onnxruntime execution providers in order of preference (default CPU).
        Requested providers this onnxruntime build lacks (e.g. CUDA on the CPU wheel) are
        skipped with a warning; CPU is always appended as the fallback.

        ``precision`` and ``input_size`` choose a variant of the network pipeline (module
        docstring); the int8 model is the one ``make models`` builds beside ``model_path``. A
        variant that is unknown, not built or not possible with ``pipeline`` is an error: a
        silent fallback would change detection quality or cost without anyone asking.

        ``heads``: ``query`` splits the network pipeline's class convolutions off to run only the
        classes ``detect`` is asked for; ``all`` runs them whole (module docstring). The graph
        pipeline always runs its whole graph.
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
        if heads not in DETECTOR_HEADS:
            raise ConfigurationError(
                f"unknown detector heads {heads!r}; choose one of {list(DETECTOR_HEADS)}", heads=heads
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
        class_heads: ClassHeads | None = None
        if heads == "query" and isinstance(source, bytes):
            split = split_class_heads(source)
            source = split.trunk
            class_heads = ClassHeads(split.heads, options, chosen)
        if isinstance(source, bytes):
            # The network pipeline takes uint8 frames and normalises them in the model: on a GPU
            # the batch crosses to the device as bytes and is scaled there (same outputs, bit for
            # bit, and the same CPU cost on CPU: tests/test_class_heads.py, README *Capacity*).
            source = with_uint8_input(source)
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
        if class_heads is not None:
            expected_inputs, expected_outputs = [FRAMES_INPUT], {BOX_ENCODINGS, *class_heads.input_names}
        elif anchors is not None:
            expected_inputs, expected_outputs = [FRAMES_INPUT], {BOX_ENCODINGS, CLASS_LOGITS}
        else:
            expected_inputs, expected_outputs = [INPUT_NAME], set(OUTPUT_NAMES)
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
            "loaded %s from %s (%s pipeline, %s, %s class heads, input %dx%d, providers %s, "
            "%d intra-op threads)",
            model_name,
            network_path,
            pipeline,
            precision,
            heads if class_heads is not None else "all",
            input_size,
            input_size,
            session.get_providers(),
            options.intra_op_num_threads,
        )
        return cls(
            session,
            model_name,
            max_batch=max_batch,
            anchors=anchors,
            input_size=input_size,
            class_heads=class_heads,
        )

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
        self,
        images: Sequence[np.ndarray],
        *,
        min_score: float = DEFAULT_MIN_SCORE,
        labels: Sequence[Collection[str] | None] | None = None,
    ) -> list[list[Detection]]:
        """Detect COCO objects in HxWx3 uint8 RGB frames; one list per frame, best score first.

        ``labels``: per frame, the COCO class names wanted (None: every class); only those are
        returned, and a frame that wants none is not run at all. Omitted: every class everywhere.
        """
        if len(images) == 0:
            return []
        wanted = _wanted_class_ids(labels, len(images))
        for index, image in enumerate(images):
            _check_frame(image, index)  # every frame, run or not
        results: list[list[Detection]] = [[] for _ in images]
        to_run = [index for index, ids in enumerate(wanted) if ids]
        for start in range(0, len(to_run), self._max_batch):
            part = to_run[start : start + self._max_batch]
            frames = np.stack([_resized(images[index], self._input_size) for index in part])
            found = self._detect_part(frames, [wanted[index] for index in part], min_score)
            for index, detections in zip(part, found, strict=True):
                results[index] = detections
        return results

    def _detect_part(
        self, frames: np.ndarray, wanted: list[tuple[int, ...]], min_score: float
    ) -> list[list[Detection]]:
        """One run's frames (at most ``max_batch``) and the class ids each wants."""
        if self._class_heads is not None and self._anchors is not None:
            return self._detect_by_heads(self._class_heads, self._anchors, frames, wanted, min_score)
        if self._anchors is not None:
            encodings, logits = self._run([BOX_ENCODINGS, CLASS_LOGITS], {FRAMES_INPUT: frames})
            found = [_detections(f) for f in postprocess(encodings, logits, self._anchors, min_score)]
        else:
            boxes, scores, classes, counts = self._run(list(OUTPUT_NAMES), {INPUT_NAME: frames})
            found = [
                _decode(boxes[frame], scores[frame], classes[frame], int(counts[frame]), min_score)
                for frame in range(len(frames))
            ]
        return [_only(detections, ids) for detections, ids in zip(found, wanted, strict=True)]

    def _detect_by_heads(
        self,
        heads: ClassHeads,
        anchors: np.ndarray,
        frames: np.ndarray,
        wanted: list[tuple[int, ...]],
        min_score: float,
    ) -> list[list[Detection]]:
        """The trunk on every frame, then each distinct class set's head on its frames."""
        encodings, *features = self._run([BOX_ENCODINGS, *heads.input_names], {FRAMES_INPUT: frames})
        groups: dict[tuple[int, ...], list[int]] = {}
        for position, ids in enumerate(wanted):
            groups.setdefault(ids, []).append(position)
        found: list[list[Detection]] = [[] for _ in wanted]
        for ids, positions in groups.items():
            whole = len(positions) == len(wanted)
            feed = {
                name: feature if whole else feature[positions]
                for name, feature in zip(heads.input_names, features, strict=True)
            }
            (logits,) = self._run([CLASS_HEAD_OUTPUT], feed, heads.session(ids))
            group_encodings = encodings if whole else encodings[positions]
            processed = postprocess(group_encodings, logits, anchors, min_score, np.asarray(ids))
            for position, detections in zip(positions, processed, strict=True):
                found[position] = _detections(detections)
        return found

    def _run(
        self,
        outputs: list[str],
        feed: dict[str, np.ndarray],
        session: ort.InferenceSession | None = None,
    ) -> list[np.ndarray]:
        try:
            return (session or self._session).run(outputs, feed)
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


def _check_frame(image: np.ndarray, index: int) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DetectorError(
            "frames must be HxWx3 uint8 RGB arrays",
            frame_index=index,
            shape=getattr(image, "shape", None),
            dtype=getattr(image, "dtype", None),
        )


def _resized(image: np.ndarray, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    return np.asarray(resized)


def _wanted_class_ids(labels: Sequence[Collection[str] | None] | None, count: int) -> list[tuple[int, ...]]:
    """Per frame, the sorted COCO ids of its wanted labels (every class for None)."""
    if labels is None:
        return [ALL_CLASS_IDS] * count
    if len(labels) != count:
        raise DetectorError("detect needs one label set per frame", frames=count, label_sets=len(labels))
    wanted: list[tuple[int, ...]] = []
    for names in labels:
        if names is None:
            wanted.append(ALL_CLASS_IDS)
            continue
        unknown = sorted(name for name in names if name not in COCO_IDS)
        if unknown:
            raise DetectorError(f"not COCO classes of this detector: {unknown}", unknown=unknown)
        wanted.append(tuple(sorted({COCO_IDS[name] for name in names})))
    return wanted


def _only(detections: list[Detection], class_ids: tuple[int, ...]) -> list[Detection]:
    """``detections`` of ``class_ids`` only (the pipelines that run every class)."""
    if class_ids == ALL_CLASS_IDS:
        return detections
    names = {COCO_LABELS[class_id] for class_id in class_ids}
    return [detection for detection in detections if detection.label in names]


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
