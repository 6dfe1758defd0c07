"""Tiny fgcli-style classifier ONNX files: images (B,3,S,S) -> GlobalAveragePool -> Flatten -> Gemm -> logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASS_NAMES = ["alpha", "beta", "gamma"]
FGCLI_METADATA = {
    "fgcli.method": "baseline", "fgcli.backbone": "resnet18", "fgcli.class_names": json.dumps(CLASS_NAMES),
    "fgcli.img_size": "8", "fgcli.resize_size": "10", "fgcli.mean": json.dumps([0.485, 0.456, 0.406]),
    "fgcli.std": json.dumps([0.229, 0.224, 0.225]), "fgcli.version": "0.1.0", "fgcli.precision": "fp32",
}


def write_classifier_onnx(path: Path, *, qdq: bool = False, fp16: bool = False, metadata: bool = True,
                          custom_op: bool = False, batch: int | str = "batch", size: int = 8) -> Path:
    """A valid ONNX model; ``qdq`` adds QuantizeLinear/DequantizeLinear on the input, ``fp16`` makes
    every tensor float16, ``custom_op`` adds a node from a non-ONNX domain that TensorRT cannot import."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    float_type, np_type = (TensorProto.FLOAT16, np.float16) if fp16 else (TensorProto.FLOAT, np.float32)
    num_classes = len(CLASS_NAMES)
    weight = numpy_helper.from_array(np.linspace(-1, 1, 3 * num_classes).reshape(3, num_classes).astype(np_type), "W")
    bias = numpy_helper.from_array(np.zeros(num_classes, np_type), "b")
    initializers, nodes, features = [weight, bias], [], "images"
    if qdq:
        initializers += [numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
                         numpy_helper.from_array(np.array(0, np.int8), "zero_point")]
        nodes += [helper.make_node("QuantizeLinear", ["images", "scale", "zero_point"], ["images_q"], name="quant"),
                  helper.make_node("DequantizeLinear", ["images_q", "scale", "zero_point"], ["images_dq"],
                                   name="dequant")]
        features = "images_dq"
    if custom_op:
        nodes.append(helper.make_node("FancyNorm", [features], ["normed"], name="fancy_norm", domain="com.example"))
        features = "normed"
    nodes += [helper.make_node("GlobalAveragePool", [features], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], name="fc")]
    graph = helper.make_graph(
        nodes, "fgcli_tiny",
        [helper.make_tensor_value_info("images", float_type, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", float_type, [batch, num_classes])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.example", 1)] if custom_op else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if metadata:
        helper.set_model_props(model, {**FGCLI_METADATA, "fgcli.img_size": str(size)})
    if not custom_op:
        onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
