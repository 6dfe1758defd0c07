"""The deployment formats: one table of what each format is, which file holds it and what it is made from.

Every part that names a format reads it here: the exporter (``export/pipeline.py``: which file each step writes,
which ONNX an engine is built from), the report (``report/variants.py``: its variants and their order,
``report/artifacts.py``: which files to export or reuse), the benchmarks and docs/architecture.md (a test holds
its formats table against this one). A format's ``name`` is at once the report's variant name and the key of its
entry in export.json. To add a format, add a row (and a name constant) here, then teach its ``builder`` to make
it; the report plans, exports and measures every ``reported`` row.

Pure data, no imports beyond the standard library: the lowest layer, beside ``utils``.
"""

from __future__ import annotations

from dataclasses import dataclass

# runtimes (the ``runtime`` column): which Runner measures the format
TORCH, ONNXRUNTIME, TENSORRT = "torch", "onnxruntime", "tensorrt"

TORCH_FP32, TORCH_FP16, TORCH_BF16 = "torch-fp32", "torch-fp16", "torch-bf16"
TORCH_FP16_COMPILED, TORCH_BF16_COMPILED = "torch-fp16-compiled", "torch-bf16-compiled"
TORCH_FP16_GRAPH, TORCH_BF16_GRAPH = "torch-fp16-graph", "torch-bf16-graph"
TORCH_FP16_COMPILED_GRAPH, TORCH_BF16_COMPILED_GRAPH = "torch-fp16-compiled-graph", "torch-bf16-compiled-graph"
ONNX_FP32, ONNX_FP16 = "onnx-fp32", "onnx-fp16"
ONNX_INT8_MODELOPT, ONNX_INT8_MODELOPT_AUTO = "onnx-int8-modelopt", "onnx-int8-modelopt-auto"
ONNX_INT8_ORT, ONNX_INT8_ORT_AUTO = "onnx-int8-ort", "onnx-int8-ort-auto"
ONNX_INT8_QAT = "onnx-int8-qat"
TRT_FP32, TRT_FP16, TRT_INT8 = "trt-fp32", "trt-fp16", "trt-int8"

#: the ``builder`` column: who makes the file
TRAIN = "fgcli train"  # the checkpoint itself (torch formats convert it to their precision when they load it)
ONNX_EXPORT = "export_onnx"  # fgcli export: traced, simplified, checked against PyTorch
FP16_CONVERSION = "export_fp16"  # ONNX Runtime's float16 converter, checked against FP32
MODELOPT = "modelopt"  # nvidia-modelopt ONNX PTQ: Q/DQ for TensorRT (--int8-backend modelopt)
ORT = "ort"  # ONNX Runtime static INT8 for CPU / ARM (--int8-backend ort)
TENSORRT_BUILD = "build_engine"  # fgcli build / export --trt, on the machine that runs it


@dataclass(frozen=True)
class Format:
    """One row of the table."""

    name: str  # report variant name = export.json artifact key
    file: str | None  # its file in an export folder; None: the .pt checkpoint
    runtime: str  # TORCH, ONNXRUNTIME or TENSORRT
    precision: str  # fp32, fp16, bf16 or int8
    built_from: str | None  # the format whose file it is made from; None: the checkpoint
    builder: str  # who makes it (TRAIN, ONNX_EXPORT, FP16_CONVERSION, MODELOPT, ORT, TENSORRT_BUILD)
    auto: bool = False  # INT8 with measured mixed precision (fgcli export --target-agreement)
    qat: bool = False  # exported from a QAT checkpoint (fgcli train --qat)
    reported: bool = True  # a variant of fgcli report
    on_request: bool = False  # reported only when named in --formats (compiling takes minutes per batch size)
    torch_mode: str = "eager"  # torch formats: how the forward pass runs (runtime/torch_runner.TORCH_MODES)


FORMATS: tuple[Format, ...] = (  # in report order
    Format(TORCH_FP32, None, TORCH, "fp32", None, TRAIN),
    Format(TORCH_FP16, None, TORCH, "fp16", None, TRAIN),
    Format(TORCH_BF16, None, TORCH, "bf16", None, TRAIN),
    Format(TORCH_FP16_COMPILED, None, TORCH, "fp16", None, TRAIN, on_request=True, torch_mode="compiled"),
    Format(TORCH_BF16_COMPILED, None, TORCH, "bf16", None, TRAIN, on_request=True, torch_mode="compiled"),
    Format(TORCH_FP16_GRAPH, None, TORCH, "fp16", None, TRAIN, on_request=True, torch_mode="graph"),
    Format(TORCH_BF16_GRAPH, None, TORCH, "bf16", None, TRAIN, on_request=True, torch_mode="graph"),
    Format(TORCH_FP16_COMPILED_GRAPH, None, TORCH, "fp16", None, TRAIN, on_request=True, torch_mode="compiled-graph"),
    Format(TORCH_BF16_COMPILED_GRAPH, None, TORCH, "bf16", None, TRAIN, on_request=True, torch_mode="compiled-graph"),
    Format(ONNX_FP32, "model.onnx", ONNXRUNTIME, "fp32", None, ONNX_EXPORT),
    Format(ONNX_FP16, "model.fp16.onnx", ONNXRUNTIME, "fp16", ONNX_FP32, FP16_CONVERSION, reported=False),
    Format(ONNX_INT8_MODELOPT, "model.int8.onnx", ONNXRUNTIME, "int8", ONNX_FP32, MODELOPT),
    Format(ONNX_INT8_MODELOPT_AUTO, "model.int8-auto.onnx", ONNXRUNTIME, "int8", ONNX_FP32, MODELOPT, auto=True),
    Format(ONNX_INT8_ORT, "model.ort-int8.onnx", ONNXRUNTIME, "int8", ONNX_FP32, ORT),
    Format(ONNX_INT8_ORT_AUTO, "model.ort-int8-auto.onnx", ONNXRUNTIME, "int8", ONNX_FP32, ORT, auto=True),
    Format(ONNX_INT8_QAT, "model.qat.onnx", ONNXRUNTIME, "int8", None, ONNX_EXPORT, qat=True),
    Format(TRT_FP32, "model.fp32.engine", TENSORRT, "fp32", ONNX_FP32, TENSORRT_BUILD),
    Format(TRT_FP16, "model.fp16.engine", TENSORRT, "fp16", ONNX_FP16, TENSORRT_BUILD),
    Format(TRT_INT8, "model.int8.engine", TENSORRT, "int8", ONNX_INT8_MODELOPT, TENSORRT_BUILD),
)
BY_NAME: dict[str, Format] = {fmt.name: fmt for fmt in FORMATS}
#: the formats ``fgcli report`` measures, in its order
REPORTED: tuple[str, ...] = tuple(fmt.name for fmt in FORMATS if fmt.reported)
#: ONNX formats by name -> their file in an export folder
ONNX_FILES: dict[str, str] = {fmt.name: fmt.file for fmt in FORMATS if fmt.runtime == ONNXRUNTIME}
#: the ONNX ``fgcli export --trt`` builds its one engine from: the first of these it wrote (QAT Q/DQ, the
#: measured mixed-precision modelopt model, modelopt Q/DQ, FP16, FP32)
ENGINE_SOURCE_PREFERENCE = (ONNX_INT8_QAT, ONNX_INT8_MODELOPT_AUTO, ONNX_INT8_MODELOPT, ONNX_FP16, ONNX_FP32)


def file_of(name: str) -> str:
    """The export-folder file of format ``name`` (e.g. ``model.int8.onnx``)."""
    return BY_NAME[name].file


def int8_format(backend: str, auto: bool = False) -> Format:
    """The INT8 ONNX format ``--int8-backend`` ``backend`` (modelopt or ort) writes, plain or mixed-precision."""
    return next(fmt for fmt in FORMATS if fmt.builder == backend and fmt.runtime == ONNXRUNTIME and fmt.auto == auto)
