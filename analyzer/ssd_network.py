"""The detector's network without TF's in-graph pre- and post-processing, and that processing in numpy.

The exported SSD-MobileNetV2 graph (``make models``) runs, per image, TF's preprocessing loop
(resize, scale to [-1, 1]) and its post-processing: box decoding, then per-class non-maximum
suppression in a loop of 90 ``NonMaxSuppression`` ops. Those loops run image by image on the
CPU with copies in between, so batching gains nothing and a GPU idles (README, *Capacity*).
This module cuts the *network* out of that graph, from the normalised input tensor
(``Preprocessor/sub:0``, NCHW float) to the raw box encodings (``concat:0``) and class logits
(``concat_1:0``), and does the rest here, batched:

* input: frames already resized to 300x300 (``analyzer.detector``), scaled exactly as the graph
  does (``x * 0.007843138 - 1``, float32) and transposed to NCHW: by the model's own first
  nodes as the analyzer runs it (``with_uint8_input``: uint8 frames in, so a GPU gets bytes
  and scales them there), or by ``network_input`` for the float network;
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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analyzer.errors import DetectorError

if TYPE_CHECKING:
    import onnx

NETWORK_INPUT = "Preprocessor/sub:0"
# The input of the network as the analyzer runs it (``with_uint8_input``): (N, S, S, 3) uint8 RGB.
FRAMES_INPUT = "frames"
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
CLASS_COUNT = 91  # class logits per anchor: background (0), then the COCO ids 1..90
MAX_PER_CLASS = 100
MAX_TOTAL = 100
# How far below the score floor's logit a logit is still scored (float32 rounding of the
# sigmoid is ~1e-7; the exact score test follows, so a wider margin costs a few more sigmoids).
LOGIT_MARGIN = 1e-3


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
    network_in = helper.make_tensor_value_info(NETWORK_INPUT, TensorProto.FLOAT, ["batch", 3, 300, 300])
    outputs = [
        helper.make_tensor_value_info(BOX_ENCODINGS, TensorProto.FLOAT, ["batch", None, 1, 4]),
        helper.make_tensor_value_info(CLASS_LOGITS, TensorProto.FLOAT, ["batch", None, 91]),
    ]
    cut = _cut(model, network_in, outputs, "ssd_mobilenet_v2_network")
    anchors = numpy_helper.to_array(constants[ANCHORS]).reshape(-1, 4).astype(np.float32)
    return Network(cut, anchors)


def _cut(
    model: onnx.ModelProto, network_in: onnx.ValueInfoProto, outputs: list[onnx.ValueInfoProto], name: str
) -> bytes:
    """The part of ``model`` that computes ``outputs`` from ``network_in`` (nodes in graph order)."""
    from onnx import helper

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    nodes: dict[str, onnx.NodeProto] = {}
    used: set[str] = set()
    pending = [output.name for output in outputs]
    while pending:
        tensor = pending.pop()
        if tensor in (network_in.name, "") or tensor in used:
            continue
        if tensor in constants:
            used.add(tensor)
            continue
        node = producers.get(tensor)
        if node is None:
            raise DetectorError("the network depends on a tensor with no producer", tensor=tensor)
        if node.name not in nodes:
            nodes[node.name] = node
            pending.extend(node.input)
    position = {node.name: index for index, node in enumerate(graph.node)}
    cut = helper.make_graph(
        sorted(nodes.values(), key=lambda node: position[node.name]),
        name,
        [network_in],
        outputs,
        [constants[tensor] for tensor in sorted(used)],
    )
    return helper.make_model(
        cut, opset_imports=model.opset_import, ir_version=model.ir_version
    ).SerializeToString()


def network_input(frames: np.ndarray) -> np.ndarray:
    """(N, 300, 300, 3) uint8 frames -> the network's (N, 3, 300, 300) float32 input."""
    scaled = frames.astype(np.float32) * INPUT_SCALE - INPUT_SHIFT
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))


def with_uint8_input(model: bytes) -> bytes:
    """``model`` (a cut network or its trunk, float32 or quantised, any input size) taking
    (N, S, S, 3) uint8 frames (``FRAMES_INPUT``) instead of its normalised NCHW float input.

    The transpose to NCHW and the graph's scaling (``x * INPUT_SCALE - INPUT_SHIFT``, float32,
    the same operations in the same order as ``network_input``) become the model's first nodes.
    So the frames reach the execution provider as bytes, a quarter of float32's, and a GPU
    normalises them itself; the batch is staged once, as it is.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph_model = onnx.load_from_string(model)
    graph = graph_model.graph
    found = [i for i in graph.input if i.name == NETWORK_INPUT]
    if not found:
        raise DetectorError("the network has no normalised input to take frames for", expected=NETWORK_INPUT)
    network_in = found[0]
    side = [d.dim_value or None for d in network_in.type.tensor_type.shape.dim][2:4]
    frames = helper.make_tensor_value_info(FRAMES_INPUT, TensorProto.UINT8, ["batch", *side, 3])
    scale, shift = "with_uint8_input/scale", "with_uint8_input/shift"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(INPUT_SCALE), scale),
            numpy_helper.from_array(np.array(INPUT_SHIFT), shift),
        ]
    )
    nchw, as_float, scaled = "with_uint8_input/nchw", "with_uint8_input/float", "with_uint8_input/scaled"
    prelude = [
        # Transposed as bytes (a quarter of the memory traffic of transposing floats).
        helper.make_node("Transpose", [FRAMES_INPUT], [nchw], perm=[0, 3, 1, 2], name=nchw),
        helper.make_node("Cast", [nchw], [as_float], to=TensorProto.FLOAT, name=as_float),
        helper.make_node("Mul", [as_float, scale], [scaled], name=scaled),
        helper.make_node("Sub", [scaled, shift], [NETWORK_INPUT], name="with_uint8_input/sub"),
    ]
    nodes = [*prelude, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.remove(network_in)
    graph.input.insert(0, frames)
    return graph_model.SerializeToString()


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
    encodings: np.ndarray,
    logits: np.ndarray,
    anchors: np.ndarray,
    min_score: float,
    class_ids: np.ndarray | None = None,
) -> list[list[tuple[int, float, tuple[float, float, float, float]]]]:
    """Per image: (COCO class id, score, (ymin, xmin, ymax, xmax) clipped), best score first.

    ``logits`` are the whole network's (background first, then ids 1..90) when ``class_ids`` is
    None, else those of a class head (``class_head_model``): column ``i`` is class ``class_ids[i]``.

    Scores are computed only where they can reach the floor: the sigmoid is increasing, so the
    logits are compared with the floor's logit first (less a margin for float rounding) and the
    exact ``score >= floor`` test runs on those few. The whole network's 1,917 x 90 logits a
    frame made the sigmoid over all of them, and the search through its result, ~1.3 ms a frame
    here, about what a GPU spends on the network itself.
    """
    if class_ids is None:
        logits = logits[:, :, 1:]  # background (class 0) dropped
        class_ids = np.arange(1, CLASS_COUNT)
    floor = max(min_score, SCORE_THRESHOLD)
    logit_floor = math.log(floor / (1.0 - floor)) - LOGIT_MARGIN if floor < 1.0 else -math.inf
    # flatnonzero on the (contiguous) mask, then the indexes: a tenth of np.nonzero's time on 3-D.
    candidates = logits >= np.float32(logit_floor)
    image_index, anchor_index, class_index = np.unravel_index(np.flatnonzero(candidates), candidates.shape)
    scores = 1.0 / (1.0 + np.exp(-logits[image_index, anchor_index, class_index]))
    passed = scores >= floor
    image_index, anchor_index, class_index = image_index[passed], anchor_index[passed], class_index[passed]
    scores = scores[passed]
    # Clipped before the NMS, as the graph's post-processing does (its overlaps are of clipped boxes).
    boxes = np.clip(decode_boxes(encodings.reshape(encodings.shape[0], -1, 4), anchors), 0.0, 1.0)
    # The indexes come in C order: each image's candidates are one run, by anchor then class.
    bounds = np.searchsorted(image_index, np.arange(len(logits) + 1))
    results = []
    for image, image_boxes in enumerate(boxes):
        run = slice(bounds[image], bounds[image + 1])
        image_anchors, image_classes, image_scores = anchor_index[run], class_index[run], scores[run]
        found: list[tuple[int, float, tuple[float, float, float, float]]] = []
        for cls in np.unique(image_classes):
            of_class = image_classes == cls
            members, member_scores = image_anchors[of_class], image_scores[of_class]
            kept = _nms(image_boxes[members], member_scores, IOU_THRESHOLD, MAX_PER_CLASS)
            for index in kept:
                box = image_boxes[members[index]]
                if box[2] <= box[0] or box[3] <= box[1]:
                    continue  # entirely outside the frame
                found.append((int(class_ids[cls]), float(member_scores[index]), tuple(float(v) for v in box)))  # type: ignore[misc]
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


# --------------------------------------------------------------------------- class heads
#
# Each of the six box predictors ends in a 3x3 class convolution with anchors x 91 output
# channels. Those six convolutions are most of the network's cost: 58 % of its convolution time
# on this project's 2-core machine (onnxruntime's profiler), for 91 scores per anchor when a
# query asks about one or a few classes. ``split_class_heads`` cuts them off: the *trunk* runs
# the backbone, the feature maps and the (cheap) box encodings; ``class_head_model`` builds the
# six class convolutions for the classes asked, their weights sliced to those classes' output
# channels, laid out as the network's logits (per map: NCHW -> NHWC -> (batch, H*W*anchors, K),
# then the maps concatenated in predictor order). Each output channel is a sum over the same
# inputs with the same weights, so the sliced logits are the full network's, bit for bit
# (``tests/test_class_heads.py``), and so are the detections of those classes (their NMS is per
# class). The background column is never computed: it is dropped anyway. The int8 network keeps
# these convolutions float, so it splits the same way; its quantiser also wrapped their outputs
# and the concatenated logits in QuantizeLinear/DequantizeLinear pairs, which onnxruntime fuses
# differently from graph to graph. A head leaves them out: its logits stay float, within the
# quantisation steps of the whole int8 network's and nearer the float network's.

CLASS_HEAD_PREFIX = "BoxPredictor_"
CLASS_HEAD_SUFFIX = "/ClassPredictor/"
CLASS_HEAD_OUTPUT = "class_logits"


@dataclass(frozen=True)
class ClassHead:
    """One box predictor's class convolution: its input (a trunk output) and its weights."""

    input_name: str
    weight: np.ndarray  # (anchors * 91, channels, 3, 3), float32
    bias: np.ndarray  # (anchors * 91,)

    @property
    def anchors_per_cell(self) -> int:
        return self.weight.shape[0] // CLASS_COUNT


@dataclass(frozen=True)
class SplitNetwork:
    """A network without its class convolutions (``trunk``) and those convolutions (``heads``).

    The trunk's outputs are the box encodings, then each head's input, in ``heads`` order.
    """

    trunk: bytes
    heads: tuple[ClassHead, ...]  # in the order of the network's class logits

    @property
    def trunk_outputs(self) -> list[str]:
        return [BOX_ENCODINGS] + [head.input_name for head in self.heads]


def split_class_heads(model: bytes) -> SplitNetwork:
    """Split a cut network (float, quantised or resized) into its trunk and class heads.

    The quantised network (``analyzer.models.build_int8``) keeps its predictor convolutions
    float, so its heads are sliced the same way; a network whose class convolutions are not
    float 3x3, stride-1, padded-by-1 convolutions with constant weights is refused.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load_from_string(model)
    graph = graph_model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[int, ClassHead] = {}
    for node in graph.node:
        if (
            node.op_type != "Conv"
            or not node.name.startswith(CLASS_HEAD_PREFIX)
            or CLASS_HEAD_SUFFIX not in node.name
        ):
            continue
        index = int(node.name[len(CLASS_HEAD_PREFIX) :].split("/")[0])
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            attributes.get("kernel_shape") == [3, 3]
            and attributes.get("pads", [1, 1, 1, 1]) == [1, 1, 1, 1]
            and attributes.get("strides", [1, 1]) == [1, 1]
            and attributes.get("dilations", [1, 1]) == [1, 1]
            and attributes.get("group", 1) == 1
            and len(node.input) == 3
            and all(name in constants for name in node.input[1:])
        )
        if not plain:
            raise DetectorError("a class convolution is not the expected export", node=node.name)
        weight = numpy_helper.to_array(constants[node.input[1]]).astype(np.float32)
        bias = numpy_helper.to_array(constants[node.input[2]]).astype(np.float32)
        if weight.shape[0] % CLASS_COUNT or bias.shape != (weight.shape[0],):
            raise DetectorError(
                "a class convolution has an unexpected shape", node=node.name, shape=weight.shape
            )
        # Conv -> Transpose (NHWC) -> Reshape (batch, H*W*anchors, 91), as tf2onnx exported it;
        # on the 1x1 map it left the transpose out (a reshape alone is the same there).
        (reshape,) = consumers[node.output[0]]
        if reshape.op_type == "Transpose":
            (reshape,) = consumers[reshape.output[0]]
        if reshape.op_type != "Reshape":
            raise DetectorError("a class convolution's output is not reshaped as expected", node=node.name)
        found[index] = ClassHead(node.input[0], weight, bias)
    if sorted(found) != list(range(ANCHOR_LAYERS)):
        raise DetectorError("the network does not have the six class convolutions", found=sorted(found))
    heads = tuple(found[index] for index in range(ANCHOR_LAYERS))
    (network_in,) = (i for i in graph.input if i.name == NETWORK_INPUT)
    outputs = [helper.make_tensor_value_info(BOX_ENCODINGS, onnx.TensorProto.FLOAT, ["batch", None, 1, 4])]
    outputs += [
        helper.make_tensor_value_info(head.input_name, onnx.TensorProto.FLOAT, None) for head in heads
    ]
    trunk = _cut(graph_model, network_in, outputs, "ssd_mobilenet_v2_trunk")
    return SplitNetwork(trunk, heads)


def class_head_model(heads: Sequence[ClassHead], class_ids: Sequence[int]) -> bytes:
    """The class convolutions of ``heads`` for ``class_ids`` only: their (batch, anchors, K) logits.

    Inputs: each head's input (the trunk's outputs); output ``CLASS_HEAD_OUTPUT``, whose column
    ``i`` is the logit of class ``class_ids[i]``.
    """
    from onnx import TensorProto, helper, numpy_helper

    ids = np.asarray(class_ids, dtype=np.int64)
    if ids.ndim != 1 or not ids.size or ids.min() < 1 or ids.max() >= CLASS_COUNT:
        raise DetectorError("class ids must be COCO ids within 1..90", class_ids=list(class_ids))
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    logits: list[str] = []
    for index, head in enumerate(heads):
        # Output channel a * 91 + c is anchor a's logit of class c (TF's reshape to [.., 91]).
        channels = (np.arange(head.anchors_per_cell)[:, None] * CLASS_COUNT + ids[None, :]).reshape(-1)
        weight, bias, conv, nhwc, flat = (
            f"{name}_{index}" for name in ("weight", "bias", "conv", "nhwc", "flat")
        )
        initializers += [
            numpy_helper.from_array(np.ascontiguousarray(head.weight[channels]), weight),
            numpy_helper.from_array(np.ascontiguousarray(head.bias[channels]), bias),
        ]
        inputs.append(helper.make_tensor_value_info(head.input_name, TensorProto.FLOAT, None))
        nodes += [
            helper.make_node(
                "Conv", [head.input_name, weight, bias], [conv], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Transpose", [conv], [nhwc], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [nhwc, "logits_shape"], [flat]),
        ]
        logits.append(flat)
    initializers.append(numpy_helper.from_array(np.array([0, -1, ids.size], dtype=np.int64), "logits_shape"))
    nodes.append(helper.make_node("Concat", logits, [CLASS_HEAD_OUTPUT], axis=1))
    graph = helper.make_graph(
        nodes,
        "ssd_mobilenet_v2_class_heads",
        inputs,
        [helper.make_tensor_value_info(CLASS_HEAD_OUTPUT, TensorProto.FLOAT, ["batch", None, int(ids.size)])],
        initializers,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8
    ).SerializeToString()


# --------------------------------------------------------------------------- other input sizes
#
# The network is fully convolutional, so it runs at any input size once the exported graph's
# static assumptions about 300x300 are lifted (``resize_network``), with anchors generated for
# the feature maps of that size (``ssd_anchors``): the TF object detection API's
# ``ssd_anchor_generator`` of the model's pipeline config (6 layers, scales 0.2 to 0.95, aspect
# ratios 1, 2, 1/2, 3, 1/3 plus an interpolated scale, 3 boxes in the lowest layer).

ANCHOR_LAYERS = 6
ANCHOR_MIN_SCALE = 0.2
ANCHOR_MAX_SCALE = 0.95
ANCHOR_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
# MobileNetV2's stride-16 map feeds the first box predictor; each later one halves the previous.
FIRST_FEATURE_MAP_STRIDE_LOG2 = 4
TRAINED_INPUT_SIZE = 300
MIN_INPUT_SIZE = 96  # below this the coarsest maps are all 1x1 and the small heads see nothing
MAX_INPUT_SIZE = 300  # above it the last map is 2x2, which a Reshape of the graph assumes is 1x1


def feature_map_sizes(input_size: int) -> list[int]:
    """Side of each box predictor's feature map at a square ``input_size`` (TF's SAME padding)."""
    size = input_size
    for _ in range(FIRST_FEATURE_MAP_STRIDE_LOG2):
        size = -(-size // 2)
    sizes = [size]
    for _ in range(ANCHOR_LAYERS - 1):
        sizes.append(-(-sizes[-1] // 2))
    return sizes


def ssd_anchors(input_size: int, *, pixel_scaled: bool = True) -> np.ndarray:
    """(A, 4) ymin, xmin, ymax, xmax anchors, normalised, in the order of the network's outputs.

    TF's ``create_ssd_anchors`` + ``MultipleGridAnchorGenerator`` for a square image: per layer,
    per grid cell (rows, then columns), per box spec. ``tests/test_detector_variants.py`` checks
    that this reproduces the graph's 1,917 anchors at 300.

    ``pixel_scaled``: the network learned its box regressions at 300x300, in pixels (an offset or
    a size relative to an anchor of so many pixels), so at another size the anchors keep their
    300-input sizes in pixels, i.e. their normalised sizes grow by ``300 / input_size``; the
    config's own scales (``pixel_scaled=False``, what TF would generate for a model *trained* at
    that size) shrink every box by about ``input_size / 300`` (``bench/bench_model_variants.py``).
    """
    stretch = TRAINED_INPUT_SIZE / input_size if pixel_scaled else 1.0
    scales = [
        (ANCHOR_MIN_SCALE + (ANCHOR_MAX_SCALE - ANCHOR_MIN_SCALE) * i / (ANCHOR_LAYERS - 1))
        for i in range(ANCHOR_LAYERS)
    ] + [1.0]
    layers = []
    for layer, grid in enumerate(feature_map_sizes(input_size)):
        scale, scale_next = scales[layer], scales[layer + 1]
        if layer == 0:  # reduce_boxes_in_lowest_layer
            specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:
            specs = [(scale, ratio) for ratio in ANCHOR_ASPECT_RATIOS]
            specs.append((float(np.sqrt(scale * scale_next)), 1.0))  # interpolated_scale_aspect_ratio
        box_scales = np.array([s for s, _ in specs], dtype=np.float32)
        ratio_sqrts = np.sqrt(np.array([r for _, r in specs], dtype=np.float32))
        heights = box_scales / ratio_sqrts * np.float32(stretch)
        widths = box_scales * ratio_sqrts * np.float32(stretch)
        stride = np.float32(1.0 / grid)
        centres = np.arange(grid, dtype=np.float32) * stride + np.float32(0.5) * stride
        y_centres, x_centres = np.meshgrid(centres, centres, indexing="ij")
        yc = np.broadcast_to(y_centres[:, :, None], (grid, grid, len(specs))).reshape(-1)
        xc = np.broadcast_to(x_centres[:, :, None], (grid, grid, len(specs))).reshape(-1)
        h = np.tile(heights, grid * grid)
        w = np.tile(widths, grid * grid)
        layers.append(np.stack([yc - 0.5 * h, xc - 0.5 * w, yc + 0.5 * h, xc + 0.5 * w], axis=1))
    return np.concatenate(layers).astype(np.float32)


def resize_network(model: bytes, input_size: int) -> bytes:
    """The cut network (float or quantised) patched to take a square ``input_size`` input.

    The export baked 300x300 in at two kinds of places: each stride-2 convolution has explicit
    pads computed by tf2onnx for TF's SAME padding at its 300-input size (which depend on the
    parity of the size), and each box predictor reshapes its maps to a constant
    ``H*W*anchors`` count. Pads are recomputed here from the new sizes, walking the graph in
    order; the counts become -1 (inferred) so the reshapes hold at any size.
    """
    import onnx
    from onnx import helper, numpy_helper

    if not MIN_INPUT_SIZE <= input_size <= MAX_INPUT_SIZE:
        raise DetectorError(
            f"detector input size must be within {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}", input_size=input_size
        )
    graph_model = onnx.load_from_string(model)
    graph = graph_model.graph
    # Shapes recorded for intermediate tensors (the quantiser writes them) are those of 300x300.
    del graph.value_info[:]
    (network_in,) = (i for i in graph.input if i.name == NETWORK_INPUT)
    dims = network_in.type.tensor_type.shape.dim
    dims[2].dim_value = input_size
    dims[3].dim_value = input_size
    constants = {tensor.name: tensor for tensor in graph.initializer}
    # Spatial side of each 4-D tensor reached from the input; everything between convolutions
    # (activations, adds, (de)quantisation) keeps its input's side.
    side: dict[str, int] = {NETWORK_INPUT: input_size}
    for node in graph.node:
        known = [side[name] for name in node.input if name in side]
        if not known:
            continue
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            stride = attributes.get("strides", [1, 1])[0]
            kernel = attributes.get("kernel_shape")
            if kernel is None:
                weight_index = 3 if node.op_type == "QLinearConv" else 1
                kernel = list(_weight_shape(node.input[weight_index], constants, graph)[2:])
            size = known[0]
            out = -(-size // stride)
            total = max((out - 1) * stride + kernel[0] - size, 0)
            pads = [total // 2, total // 2, total - total // 2, total - total // 2]
            for attribute in node.attribute:
                if attribute.name == "pads":
                    del attribute.ints[:]
                    attribute.ints.extend(pads)
            for name in node.output:
                side[name] = out
        elif node.op_type != "Reshape" and not node.op_type.startswith("Concat"):
            for name in node.output:
                side[name] = known[0]
    # The predictors' reshape targets: [batch, H*W*anchors, 1, 4] and [batch, H*W*anchors, 91].
    minus_one: dict[int, str] = {}
    for node in graph.node:
        if node.op_type != "Concat" or not node.name.startswith("BoxPredictor_") or "stack" not in node.name:
            continue
        count = constants.get(node.input[1])
        if count is None:
            raise DetectorError("the network's box predictor is not the expected export", node=node.name)
        dtype = count.data_type
        if dtype not in minus_one:
            name = f"resize_network/minus_one_{dtype}"
            value = np.array([-1], dtype=helper.tensor_dtype_to_np_dtype(dtype))
            graph.initializer.append(numpy_helper.from_array(value, name))
            minus_one[dtype] = name
        node.input[1] = minus_one[dtype]
    sizes = feature_map_sizes(input_size)
    if sizes[-1] != 1:
        raise DetectorError("the network's last feature map must be 1x1", input_size=input_size)
    return graph_model.SerializeToString()


def _weight_shape(name: str, constants: dict[str, onnx.TensorProto], graph: onnx.GraphProto) -> list[int]:
    """Shape of a convolution's weight: a constant, or one behind a DequantizeLinear (QDQ)."""
    if name in constants:
        return list(constants[name].dims)
    for node in graph.node:
        if name in node.output and node.input and node.input[0] in constants:
            return list(constants[node.input[0]].dims)
    raise DetectorError("cannot find a convolution's weight", tensor=name)
