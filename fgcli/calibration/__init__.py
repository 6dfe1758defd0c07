"""INT8 post-training quantization: calibration set, modelopt ONNX PTQ, ONNX Runtime static INT8, TRT calibrator.

Nothing heavy is imported here: ``onnx``, ``onnxruntime`` and ``modelopt`` load inside the functions that
need them, so ``fgcli calib`` works with the base install. This module holds what both quantizers share:
the result record, which nodes ended up quantized, and carrying the fgcli metadata over.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fgcli.calibration.dataset import CalibrationSet, load_calibration_set
from fgcli.errors import FgcliError
from fgcli.runtime.onnx_meta import (AUTO_FLOAT_NODES_KEY, FLOAT_NODES_KEY, PRECISION_KEY, SYMMETRIC_INT8_NODES_KEY,
                                     metadata_props, metadata_value, replace_metadata_props, save_onnx)

QDQ_OP_TYPES = {"QuantizeLinear", "DequantizeLinear"}
WEIGHTED_OP_TYPES = {"Conv", "ConvTranspose", "Gemm", "MatMul"}  # the layers INT8 is for
LAYOUT_OP_TYPES = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


class NothingQuantizedError(FgcliError):
    """The quantizer left every node of the model in float."""


@dataclass
class QuantResult:
    output_path: Path
    quantizer: str  # "modelopt" or "onnxruntime"
    calib_method: str
    quantized_counts: dict[str, int]  # op type -> number of quantized nodes
    quantized_nodes: list[str]
    calibration_images: int
    calibration_seconds: float
    extra: dict[str, object] = field(default_factory=dict)  # quantizer-specific settings, for the report

    @property
    def num_quantized(self) -> int:
        return len(self.quantized_nodes)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["output_path"] = str(self.output_path)
        return values


def quantized_nodes(model) -> tuple[dict[str, int], list[str]]:
    """Which compute nodes of a Q/DQ ONNX ``ModelProto`` run quantized (fed by a DequantizeLinear):
    counts by op type, and their names. A Conv / Gemm / MatMul counts when both its input and its weight are
    dequantized, not by its bias: the simplifier shares identical initializers (e.g. zero biases), so a float
    layer may share a quantized bias, and a layer kept float still reads its quantized neighbour's output.
    Layout ops pass a dequantized tensor on: a QAT Linear exports as DequantizeLinear -> Transpose -> MatMul."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    names, counts = [], Counter()
    for node in model.graph.node:  # topological order
        if node.op_type in LAYOUT_OP_TYPES and dequantized.intersection(node.input):
            dequantized.update(node.output)
        weighted = node.op_type in WEIGHTED_OP_TYPES
        fed = [name in dequantized for name in (node.input[:2] if weighted else node.input)]
        if node.op_type not in QDQ_OP_TYPES and fed and (all(fed) if weighted else any(fed)):
            names.append(node.name or f"{node.op_type}#{len(names)}")
            counts[node.op_type] += 1
    return dict(sorted(counts.items())), names


def symmetric_int8_pattern(model) -> str | None:
    """The exporting model's regex of the nodes modelopt may quantize (``FGVCModel.symmetric_int8_nodes``)."""
    return metadata_value(model, SYMMETRIC_INT8_NODES_KEY)


def float_nodes(source, graph, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The nodes of ``graph`` every quantizer leaves in float: the softmax-weighted ones, those matching the
    exporting model's ``FGVCModel.float_nodes``, those an earlier ``--target-agreement`` chose (both read from
    ``source``'s metadata), and ``extra`` (names a sensitivity measurement asks to keep float)."""
    pattern = metadata_value(source, FLOAT_NODES_KEY)
    names = {node.name for node in graph.graph.node}
    declared = [node.name for node in graph.graph.node if pattern and re.fullmatch(pattern, node.name)]
    measured = [name for name in [*auto_float_nodes(source), *extra] if name in names]
    return list(dict.fromkeys(softmax_weighted_nodes(graph) + declared + measured))


def auto_float_nodes(model) -> list[str]:
    """The node names ``model``'s metadata says a measured mixed precision keeps in float ([] when none)."""
    text = metadata_value(model, AUTO_FLOAT_NODES_KEY)
    return json.loads(text) if text else []


def softmax_weighted_nodes(model) -> list[str]:
    """Nodes that weight something by a Softmax output; both quantizers keep them in float.

    A softmax over hundreds of channels or positions puts most weights near 1/n, which 8 bits (scaled to the
    largest weight) round to a few levels: measured on GCAM-CSA, INT8 of its softmax-weighted channel sum alone
    dropped top-1 agreement with FP32 from 99 % to 71 %.
    """
    weights = {out for node in model.graph.node if node.op_type == "Softmax" for out in node.output}
    for node in model.graph.node:  # topological order: follow the weights through layout-only ops
        if node.op_type in LAYOUT_OP_TYPES and weights.intersection(node.input):
            weights.update(node.output)
    return [node.name for node in model.graph.node
            if node.op_type not in LAYOUT_OP_TYPES and weights.intersection(node.input)]


def calibration_input(model, onnx_path: Path, calib: CalibrationSet | str | Path) -> tuple[str, CalibrationSet]:
    """The model's input name and the calibration set (loaded when ``calib`` is a calib.npz path), checked
    to match the input's (3, S, S)."""
    calib = calib if isinstance(calib, CalibrationSet) else load_calibration_set(calib)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise FgcliError(f"{onnx_path} has {len(inputs)} inputs; INT8 calibration expects one image input",
                         hint="export the model with `fgcli export`")
    dims = [dim.dim_value or None for dim in inputs[0].type.tensor_type.shape.dim]
    expected = tuple(calib.images.shape[1:])
    if len(dims) != 4 or any(d is not None and d != e for d, e in zip(dims[1:], expected)):
        raise FgcliError(f"{onnx_path} takes input {inputs[0].name} of shape {dims}, the calibration images are "
                         f"(N, {', '.join(map(str, expected))})",
                         hint="rebuild calib.npz with the image size the model was exported at (--img-size)")
    return inputs[0].name, calib


def save_with_metadata(model, source_model, out_path: str | Path) -> Path:
    """Save ``model`` atomically with ``source_model``'s metadata_props, marking ``fgcli.precision`` int8.

    Quantizers rebuild the graph and drop metadata; without it the runtime cannot find the preprocessing
    and class names.
    """
    replace_metadata_props(model, {**metadata_props(source_model), PRECISION_KEY: "int8"})
    return save_onnx(model, out_path)


__all__ = ["QuantResult", "NothingQuantizedError", "quantized_nodes", "save_with_metadata", "calibration_input",
           "symmetric_int8_pattern", "float_nodes", "auto_float_nodes", "softmax_weighted_nodes", "PRECISION_KEY",
           "AUTO_FLOAT_NODES_KEY"]


def finish_quantization(quantized, source, onnx_path: Path, out_path: Path, quantizer: str, calib_method: str,
                        calibration_images: int, seconds: float, extra: dict,
                        allowed: str | None = None) -> QuantResult:
    """Refuse a model in which nothing was quantized, or a layer outside the regex ``allowed``; else save it with
    the source's metadata and describe it."""
    counts, names = quantized_nodes(quantized)
    if not names:
        raise NothingQuantizedError(f"{quantizer} quantized no node of {onnx_path}",
                         hint=f"the model has no Conv / Gemm / MatMul {quantizer} can quantize")
    outside = [node.name for node in quantized.graph.node if allowed and node.op_type in WEIGHTED_OP_TYPES
               and node.name in names and not re.fullmatch(allowed, node.name)]
    if outside:
        raise FgcliError(f"{quantizer} quantized {len(outside)} layers of {onnx_path} that the model keeps in high "
                         f"precision (e.g. {outside[0]}; allowed: {allowed})",
                         hint="report this with the method and the quantizer's version")
    save_with_metadata(quantized, source, out_path)
    return QuantResult(out_path, quantizer, calib_method, counts, names, calibration_images, seconds, extra=extra)
