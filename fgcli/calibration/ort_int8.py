"""ONNX Runtime static INT8 quantization for CPU / ARM targets that have no TensorRT.

The recipe is the one that is faster on ORT's CPU kernels. Reference (ResNet-50 at 448 px): FP32 216 ms,
INT8 109-115 ms with ``quant_pre_process`` first (shape inference + graph optimisation: BatchNorm folded,
Conv biases become initializers), unsigned 8-bit activations and signed per-channel 8-bit weights (the
U8S8 kernels); without pre-processing 0.83x, with signed activations 1.17x. Q/DQ against QOperator,
measured here (ResNet-50 at 448, 2 threads, ORT 1.32, AVX512-VNNI): 44-46 ms against 46-47 ms, the same,
since ORT fuses Q/DQ pairs into QLinearConv when it loads the model; QDQ wins because TensorRT, XNNPACK
and QNN read it too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fgcli.calibration import QuantResult, calibration_input, finish_quantization, float_nodes
from fgcli.calibration.dataset import CalibrationSet
from fgcli.errors import FgcliError
from fgcli.runtime.onnx_meta import load_onnx
from fgcli.utils import optional_import

CALIB_METHODS = ("minmax", "entropy", "percentile")
PURPOSE = "INT8 quantization with ONNX Runtime"


def ort_calib_method(method: str) -> str:
    """``--calib-method`` in ONNX Runtime's words: modelopt's "max" is its "minmax"."""
    return {"max": "minmax"}.get(method, method)


#: ORT's histogram calibrators stack every batch's activations into one array (``np.asarray`` over the batches),
#: which fails ("inhomogeneous shape") when the last batch is smaller than the others
HISTOGRAM_METHODS = ("entropy", "percentile")


def equal_batch_size(count: int, largest: int) -> int:
    """The largest batch size up to ``largest`` that splits ``count`` images into equal batches."""
    return max(size for size in range(1, min(largest, count) + 1) if count % size == 0)


class CalibrationBatches:
    """ONNX Runtime ``CalibrationDataReader`` (duck-typed: ORT checks for ``get_next``) over a calibration set."""

    def __init__(self, input_name: str, calib: CalibrationSet, batch_size: int):
        self.input_name = input_name
        self.batches = calib.batches(batch_size)

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_ort(onnx_path: str | Path, calib: CalibrationSet | str | Path, out_path: str | Path,
                 per_channel: bool = True, calib_method: str = "minmax", reduce_range: bool = False,
                 batch_size: int = 16, extra_float_nodes: list[str] | tuple[str, ...] = (),
                 only_nodes: list[str] | None = None, calibration_cache: str | Path | None = None) -> QuantResult:
    """Write a static INT8 (QDQ, U8 activations, S8 weights) copy of ``onnx_path`` for ONNX Runtime CPU.

    ``reduce_range`` quantizes weights to 7 bits: use it for x86 CPUs without VNNI (AVX2 only), where the
    U8S8 kernels can saturate. The fgcli metadata is carried over with ``fgcli.precision`` set to int8.
    ``extra_float_nodes`` are kept in float besides the model's own; ``only_nodes`` quantizes those nodes alone;
    ``calibration_cache`` (a JSON file ORT writes on the first call, reads on later ones) calibrates once for
    many quantizations of the same model, as a sensitivity measurement does. Node names are those of the
    pre-processed graph, which are the names ``quantized_nodes`` reports.
    """
    if calib_method not in CALIB_METHODS:
        raise FgcliError(f"unknown INT8 calibration method '{calib_method}' for ONNX Runtime",
                         hint=f"use one of: {', '.join(CALIB_METHODS)}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    source = load_onnx(onnx_path)
    input_name, calib = calibration_input(source, onnx_path, calib)
    quantization = optional_import("onnxruntime.quantization", "onnx", PURPOSE)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    method = {"minmax": quantization.CalibrationMethod.MinMax, "entropy": quantization.CalibrationMethod.Entropy,
              "percentile": quantization.CalibrationMethod.Percentile}[calib_method]
    if calib_method in HISTOGRAM_METHODS:
        batch_size = equal_batch_size(len(calib), batch_size)
    with tempfile.TemporaryDirectory(prefix="fgcli-ort-int8-") as work:
        prepared, quantized_path = Path(work) / "model.pre.onnx", Path(work) / "model.int8.onnx"
        start = time.perf_counter()
        try:
            quant_pre_process(str(onnx_path), str(prepared))
            kept_float = float_nodes(source, onnx.load(str(prepared)), extra_float_nodes)
            quantization.quantize_static(
                str(prepared), str(quantized_path), CalibrationBatches(input_name, calib, batch_size),
                quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                calibrate_method=method, calibration_providers=["CPUExecutionProvider"], nodes_to_exclude=kept_float,
                nodes_to_quantize=list(only_nodes) if only_nodes is not None else None,
                calibration_cache_path=str(calibration_cache) if calibration_cache else None)
        except Exception as exc:
            raise FgcliError(f"ONNX Runtime could not quantize {onnx_path}: {type(exc).__name__}: {exc}",
                             hint="check that the model runs in onnxruntime (`fgcli export` runs a parity check)"
                             ) from exc
        seconds = time.perf_counter() - start
        quantized = onnx.load(str(quantized_path))
    return finish_quantization(quantized, source, onnx_path, out_path, "onnxruntime", calib_method, len(calib),
                               seconds, {"per_channel": per_channel, "reduce_range": reduce_range,
                               "activations": "uint8", "weights": "int8", "pre_processed": True,
                               "float_nodes": kept_float})
