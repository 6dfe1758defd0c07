"""Triton Inference Server: a model repository ``REPO/<name>/{config.pbtxt, labels.txt, 1/model.onnx|model.plan}``.

``config.pbtxt`` is Triton's ``ModelConfig`` protobuf in text form: ``platform`` ``onnxruntime_onnx`` (an ONNX)
or ``tensorrt_plan`` (an engine, which must come from the TensorRT version of the server), ``max_batch_size``
(the batch axis is then left out of ``dims``), ``dynamic_batching``, the ``images`` input and ``logits`` output
with their dims and types from the ONNX graph, and ``label_filename`` (one class per line) on the output, so
Triton's classification extension returns class names.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fgcli.errors import FgcliError
from fgcli.export.deepstream import deploy_name
from fgcli.runtime.onnx_meta import load_onnx, read_onnx_metadata
from fgcli.utils import atomic_path, make_output_folder, write_text_atomic

#: ONNX TensorProto element type -> Triton data type
ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 6: "TYPE_INT32", 7: "TYPE_INT64", 3: "TYPE_INT8",
                  2: "TYPE_UINT8", 9: "TYPE_BOOL"}
LABELS_FILE = "labels.txt"


def onnx_io(onnx_path: Path) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """``(inputs, outputs)`` of the graph as ``(name, triton type, dims without the batch axis)``."""
    graph = load_onnx(onnx_path, load_external_data=False).graph

    def describe(values):
        rows = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            if not dims or tensor.shape.dim[0].HasField("dim_value"):
                raise FgcliError(f"{onnx_path}: tensor '{value.name}' has no dynamic batch axis ({dims})",
                                 hint="export it with fgcli export, which keeps the batch axis dynamic")
            rows.append((value.name, ONNX_TO_TRITON.get(tensor.elem_type, "TYPE_INVALID"), dims[1:]))
        return rows

    return describe(graph.input), describe(graph.output)


def write_triton_repository(
    repo: str | os.PathLike,
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    max_batch_size: int = 32,
    name: str | None = None,
) -> Path:
    """Write (or replace) the model ``name`` in the repository ``repo``; returns its ``config.pbtxt``.

    ``onnx_path`` is the fgcli ONNX (its metadata gives the class names and its graph the tensors); with
    ``engine_path`` the repository serves that TensorRT engine (``tensorrt_plan``) instead of the ONNX.
    """
    onnx_path = Path(onnx_path)
    if max_batch_size < 1:
        raise FgcliError(f"max_batch_size {max_batch_size} must be at least 1")
    meta = read_onnx_metadata(onnx_path)
    name = name or deploy_name(meta)
    inputs, outputs = onnx_io(onnx_path)
    if len(outputs) != 1 or outputs[0][2] != [len(meta["class_names"])]:
        raise FgcliError(f"{onnx_path} has outputs {outputs}, expected one logits tensor of "
                         f"{len(meta['class_names'])} classes", hint="re-export it with fgcli export")
    if engine_path is not None and not Path(engine_path).is_file():
        raise FgcliError(f"TensorRT engine not found: {engine_path}", hint="build it with fgcli build first")
    platform, model_file = ("tensorrt_plan", "model.plan") if engine_path else ("onnxruntime_onnx", "model.onnx")
    folder = Path(repo) / name
    version = folder / "1"
    make_output_folder(version)
    with atomic_path(version / model_file) as tmp:
        shutil.copyfile(engine_path or onnx_path, tmp)
    write_text_atomic(folder / LABELS_FILE, "".join(f"{c}\n" for c in meta["class_names"]))
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}"]
    lines += _tensors("input", inputs, label=False) + _tensors("output", outputs, label=True)
    lines.append("dynamic_batching { }")  # no instance_group: Triton places it on the GPUs it has, else the CPU
    return write_text_atomic(folder / "config.pbtxt", "\n".join(lines) + "\n")


def _tensors(kind: str, rows, label: bool) -> list[str]:
    body = []
    for index, (tensor, data_type, dims) in enumerate(rows):
        extra = f' label_filename: "{LABELS_FILE}"' if label else ""
        comma = "," if index < len(rows) - 1 else ""
        body.append(f'  {{ name: "{tensor}" data_type: {data_type} dims: [ {", ".join(map(str, dims))} ]{extra} }}{comma}')
    return [f"{kind} [", *body, "]"]
