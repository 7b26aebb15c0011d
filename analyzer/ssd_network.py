"""The detector's network without TF's in-graph pre- and post-processing, and that processing in numpy.

The exported SSD-MobileNetV2 graph (``make models``) runs, per image, TF's preprocessing loop
(resize, scale to [-1, 1]) and its post-processing: box decoding, then per-class non-maximum
suppression in a loop of 90 ``NonMaxSuppression`` ops. Those loops run image by image on the
CPU with copies in between, so batching gains nothing and a GPU idles (README, *Capacity*).
This module cuts the *network* out of that graph, from the normalised input tensor
(``Preprocessor/sub:0``, NCHW float) to the raw box encodings (``concat:0``) and class logits
(``concat_1:0``), and does the rest here, batched:

* input: frames already resized to 300x300 (``analyzer.detector``), scaled exactly as the graph
  does (``x * 0.007843138 - 1``, float32) and transposed to NCHW;
* boxes: the graph's ``FasterRcnnBoxCoder`` decoding (scale factors 10, 10, 5, 5) against its
  1,917 anchors, read from the graph's constant ``Postprocessor/ExpandDims:0``;
* scores: sigmoid of the logits, background (class 0) dropped;
* boxes clipped to the frame, then non-maximum suppression per class (IoU 0.6, at most 100
  per class) on the clipped boxes, as the graph does; empty boxes dropped and the best 100 of
  all classes kept. Only scores at or above the graph's own floor (0.3) and ``min_score`` are
  considered, as in the graph: a box below them cannot suppress one above (greedy NMS goes
  from the best score down), so the detections are those of the full graph
  (``tests/test_ssd_network.py`` compares the two on real frames).

The cut is made when the detector loads (``extract_network``, ~0.6 s with the ``onnx``
package), from the model ``make models`` built, so there is no second artifact to build or keep
in step with the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analyzer.errors import DetectorError

if TYPE_CHECKING:
    import onnx

NETWORK_INPUT = "Preprocessor/sub:0"
BOX_ENCODINGS = "concat:0"
CLASS_LOGITS = "concat_1:0"
ANCHORS = "Postprocessor/ExpandDims:0"
# The graph's preprocessing: ``Preprocessor/mul/x`` (2 / 255 as float32) and ``Preprocessor/sub``.
INPUT_SCALE = np.float32(0.007843138)
INPUT_SHIFT = np.float32(1.0)
BOX_SCALES = np.array([10.0, 10.0, 5.0, 5.0], dtype=np.float32)  # ty, tx, th, tw
IOU_THRESHOLD = 0.6
# The exported graph's post-processing drops scores below 0.3 before its NMS (the model zoo's
# frozen graph; found by comparing the pipelines, ``tests/test_ssd_network.py``): the same floor
# here keeps the two pipelines' detections identical whatever ``min_score`` a caller asks for.
SCORE_THRESHOLD = 0.3
MAX_PER_CLASS = 100
MAX_TOTAL = 100


@dataclass(frozen=True)
class Network:
    """The network's ONNX model (serialised) and the anchors its box encodings refer to."""

    model: bytes
    anchors: np.ndarray  # (anchors, 4) ymin, xmin, ymax, xmax, normalised


def extract_network(model_path: str | Path) -> Network:
    """Cut the network out of the exported detector graph (module docstring)."""
    # Imported here: the rest of this module (scaling, decoding, NMS) needs numpy only, so a
    # benchmark machine without the onnx package can run a network cut elsewhere (bench/gpu.sh).
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    missing = [name for name in (BOX_ENCODINGS, CLASS_LOGITS) if name not in producers]
    if missing or ANCHORS not in constants:
        raise DetectorError(
            "the model is not the SSD graph this cut expects; rebuild it with `make models`",
            model_path=str(model_path),
            missing=missing + ([] if ANCHORS in constants else [ANCHORS]),
        )
    nodes: dict[str, onnx.NodeProto] = {}
    used: set[str] = set()
    pending = [BOX_ENCODINGS, CLASS_LOGITS]
    while pending:
        name = pending.pop()
        if name in (NETWORK_INPUT, "") or name in used:
            continue
        if name in constants:
            used.add(name)
            continue
        node = producers.get(name)
        if node is None:
            raise DetectorError("the network depends on a tensor with no producer", tensor=name)
        if node.name not in nodes:
            nodes[node.name] = node
            pending.extend(node.input)
    position = {node.name: index for index, node in enumerate(graph.node)}
    network = helper.make_graph(
        sorted(nodes.values(), key=lambda node: position[node.name]),
        "ssd_mobilenet_v2_network",
        [helper.make_tensor_value_info(NETWORK_INPUT, TensorProto.FLOAT, ["batch", 3, 300, 300])],
        [
            helper.make_tensor_value_info(BOX_ENCODINGS, TensorProto.FLOAT, ["batch", None, 1, 4]),
            helper.make_tensor_value_info(CLASS_LOGITS, TensorProto.FLOAT, ["batch", None, 91]),
        ],
        [constants[name] for name in sorted(used)],
    )
    cut = helper.make_model(network, opset_imports=model.opset_import, ir_version=model.ir_version)
    anchors = numpy_helper.to_array(constants[ANCHORS]).reshape(-1, 4).astype(np.float32)
    return Network(cut.SerializeToString(), anchors)


def network_input(frames: np.ndarray) -> np.ndarray:
    """(N, 300, 300, 3) uint8 frames -> the network's (N, 3, 300, 300) float32 input."""
    scaled = frames.astype(np.float32) * INPUT_SCALE - INPUT_SHIFT
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))


def decode_boxes(encodings: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(N, A, 4) ty, tx, th, tw encodings -> (N, A, 4) ymin, xmin, ymax, xmax boxes (unclipped)."""
    heights = anchors[:, 2] - anchors[:, 0]
    widths = anchors[:, 3] - anchors[:, 1]
    y_centres = anchors[:, 0] + heights * 0.5
    x_centres = anchors[:, 1] + widths * 0.5
    ty, tx, th, tw = np.moveaxis(encodings / BOX_SCALES, -1, 0)
    h = np.exp(th) * heights
    w = np.exp(tw) * widths
    yc = ty * heights + y_centres
    xc = tx * widths + x_centres
    return np.stack([yc - h * 0.5, xc - w * 0.5, yc + h * 0.5, xc + w * 0.5], axis=-1)


def postprocess(
    encodings: np.ndarray, logits: np.ndarray, anchors: np.ndarray, min_score: float
) -> list[list[tuple[int, float, tuple[float, float, float, float]]]]:
    """Per image: (COCO class id, score, (ymin, xmin, ymax, xmax) clipped), best score first."""
    # Clipped before the NMS, as the graph's post-processing does (its overlaps are of clipped boxes).
    boxes = np.clip(decode_boxes(encodings.reshape(encodings.shape[0], -1, 4), anchors), 0.0, 1.0)
    scores = 1.0 / (1.0 + np.exp(-logits[:, :, 1:]))  # background (class 0) dropped
    results = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        anchor_index, class_index = np.nonzero(image_scores >= max(min_score, SCORE_THRESHOLD))
        found: list[tuple[int, float, tuple[float, float, float, float]]] = []
        for cls in np.unique(class_index):
            members = anchor_index[class_index == cls]
            kept = _nms(image_boxes[members], image_scores[members, cls], IOU_THRESHOLD, MAX_PER_CLASS)
            for index in kept:
                anchor = members[index]
                box = image_boxes[anchor]
                if box[2] <= box[0] or box[3] <= box[1]:
                    continue  # entirely outside the frame
                found.append((int(cls) + 1, float(image_scores[anchor, cls]), tuple(float(v) for v in box)))  # type: ignore[misc]
        found.sort(key=lambda item: -item[1])
        results.append(found[:MAX_TOTAL])
    return results


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> list[int]:
    """Greedy non-maximum suppression, as TF's: indexes of the kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    while order.size and len(kept) < limit:
        best = int(order[0])
        kept.append(best)
        rest = order[1:]
        y0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        x0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        y1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        x1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(y1 - y0, 0.0, None) * np.clip(x1 - x0, 0.0, None)
        union = areas[best] + areas[rest] - inter
        iou = np.where(union > 0.0, inter / np.where(union > 0.0, union, 1.0), 0.0)
        order = rest[iou <= iou_threshold]
    return kept
