"""The arithmetic one image costs, counted once from an exported ONNX graph (no torch needed).

Counts the multiply-accumulates of the ops that bound a convolutional or attention model's time on tensor
cores: Conv, ConvTranspose, Gemm, MatMul (2 FLOPs each). Element-wise ops, pooling, normalisation and softmax
are left out: they are memory-bound and small next to these (under 1 % of ResNet-50's arithmetic). The count
is what "fraction of the limit" in the report divides by: images/s x FLOPs/image against the device's rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fgcli.errors import FgcliError
from fgcli.utils import optional_import

COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class FlopCount:
    """``flops``: per image (2 x multiply-accumulates); ``by_op``: the same split by ONNX op type."""

    flops: int
    by_op: dict[str, int]

    @property
    def macs(self) -> int:
        return self.flops // 2


def count_flops(path: str | Path) -> FlopCount:
    """FLOPs of one image through the ONNX model at ``path`` (its batch axis is fixed to 1 for the count)."""
    onnx = optional_import("onnx", "onnx", "Counting the FLOPs of an ONNX model")
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / OSError variants for unreadable files
        raise FgcliError(f"cannot read the ONNX model {path}: {exc}",
                         hint="pass a model.onnx written by fgcli export") from exc
    initializers = {init.name for init in model.graph.initializer}
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        if graph_input.name not in initializers and len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {init.name: list(init.dims) for init in inferred.graph.initializer}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    by_op: dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type in COUNTED_OPS:
            macs = _node_macs(node, shapes, path)
            by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
    return FlopCount(flops=sum(by_op.values()), by_op=by_op)


def _node_macs(node, shapes: dict[str, list], path: Path) -> int:
    """Multiply-accumulates of one counted node, from its input / output shapes."""
    def shape(name: str) -> list[int]:
        dims = shapes.get(name)
        if dims is None or any(d is None for d in dims):
            raise FgcliError(f"cannot count the FLOPs of {path}: the shape of {name} (input or output of "
                             f"{node.op_type} node '{node.name}') is unknown to ONNX shape inference",
                             hint="count them on the model.onnx that fgcli export writes (simplified, static "
                                  "apart from the batch axis)")
        return dims

    if node.op_type == "Conv":  # W: (M, C/groups, k...); every output element sums C/groups x k... products
        weight = shape(node.input[1])
        return math.prod(shape(node.output[0])) * math.prod(weight[1:])
    if node.op_type == "ConvTranspose":  # W: (C, M/groups, k...); every input element feeds M/groups x k...
        weight = shape(node.input[1])
        return math.prod(shape(node.input[0])) * math.prod(weight[1:])
    if node.op_type == "Gemm":
        a = shape(node.input[0])
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return math.prod(shape(node.output[0])) * (a[0] if trans_a else a[1])
    a = shape(node.input[0])  # MatMul, NumPy semantics: each output element sums over A's last axis
    return math.prod(shape(node.output[0])) * a[-1]
