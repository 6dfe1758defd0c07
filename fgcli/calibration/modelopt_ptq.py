"""Explicit INT8 (Q/DQ) ONNX for TensorRT with NVIDIA modelopt's ONNX post-training quantization.

TensorRT 10+ builds INT8 engines from Q/DQ ONNX models (the implicit calibrator API is deprecated and gone
in TensorRT 11), and modelopt places Q/DQ where TensorRT can fuse them (conv + residual add, pooling).
Calibration runs on ONNX Runtime, on CPU by default, so no GPU is needed to produce the model.

modelopt 0.47 specifics handled here: it rewrites the input model in place and writes intermediate
models (``*_opset19.onnx``, ``*_named.onnx``) beside the output, so it works on a copy in a temporary
folder; it drops metadata_props; its default ``high_precision_dtype`` is fp16, which fgcli only uses
when asked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fgcli.calibration import (QuantResult, calibration_input, finish_quantization, float_nodes,
                               symmetric_int8_pattern)
from fgcli.calibration.dataset import CalibrationSet
from fgcli.errors import FgcliError
from fgcli.runtime.onnx_meta import load_onnx
from fgcli.utils import optional_import

# modelopt 0.47 INT8: "entropy" selects ORT's entropy calibrator, anything else MinMax, which with its
# symmetric activation ranges is max calibration (modelopt/onnx/quantization/int8.py).
CALIB_METHODS = ("max", "entropy")
DEVICES = ("cpu", "cuda")
PURPOSE = "INT8 quantization with NVIDIA modelopt"


def calibration_providers(device: str) -> list[str]:
    """modelopt's ``calibration_eps`` for ``device``; CUDA needs the onnxruntime-gpu build."""
    if device == "cpu":
        return ["cpu"]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise FgcliError("calibration on CUDA needs onnxruntime with the CUDA execution provider, "
                         f"and this onnxruntime offers {', '.join(onnxruntime.get_available_providers())}",
                         hint="calibrate on CPU (the default), or pip uninstall onnxruntime, then "
                              "pip install onnxruntime-gpu")
    return ["cuda:0", "cpu"]  # CPU runs whatever the CUDA EP does not implement


def name_patterns(names) -> list[str]:
    """modelopt's node patterns for these names. modelopt matches them with ``re.match``, a prefix match, so
    "/conv/Conv" also selects "/conv/Conv_1"; anchoring them with "$" made modelopt 0.47 quantize GCAM-CSA's
    excluded softmax-weighted Mul (measured), so they stay prefixes: at worst a few more nodes stay float."""
    return [re.escape(name) for name in names]


def _quantize_file(model: str, output: str, calibration_file: str, input_name: str, **options) -> None:
    """The modelopt call itself, run in a child interpreter (see ``_run_in_child``)."""
    from modelopt.onnx.quantization import quantize

    quantize(model, quantize_mode="int8", calibration_data={input_name: np.load(calibration_file)},
             output_path=output, log_level="WARNING", **options)


def _run_in_child(options_file: Path) -> None:
    """Run ``_quantize_file(**options)`` in a fresh interpreter.

    modelopt patches ONNX Runtime's quantization classes in place when it quantizes, after which ORT's own
    static quantization fails in the same process. A child interpreter keeps the patch away from the caller,
    and unlike multiprocessing's spawn it does not re-import the caller's script (no ``__main__`` guard needed).
    Its log (including modelopt's NVML complaint on GPU-less machines) is shown only when it fails.
    """
    child = subprocess.run([sys.executable, "-m", __name__, str(options_file)], capture_output=True, text=True)
    if child.returncode != 0:
        log = (child.stderr or child.stdout).strip().splitlines()
        raise RuntimeError(f"exit code {child.returncode}: " + "\n".join(log[-15:]))


def quantize_modelopt(onnx_path: str | Path, calib: CalibrationSet | str | Path, out_path: str | Path,
                      calib_method: str = "max", fp16: bool = False, device: str = "cpu",
                      batch_size: int = 16, extra_float_nodes: list[str] | tuple[str, ...] = (),
                      only_nodes: list[str] | None = None) -> QuantResult:
    """Write a Q/DQ INT8 copy of ``onnx_path`` to ``out_path``, calibrated on ``calib`` (a set or calib.npz).

    Layers left unquantized stay FP32 unless ``fp16``; inputs and outputs stay float32 either way. The
    fgcli metadata is carried over with ``fgcli.precision`` set to int8. ``extra_float_nodes`` are kept in
    high precision besides the model's own; ``only_nodes`` quantizes those nodes alone (within the model's
    ``symmetric_int8_nodes``).
    """
    if calib_method not in CALIB_METHODS:
        raise FgcliError(f"unknown INT8 calibration method '{calib_method}' for modelopt",
                         hint=f"use one of: {', '.join(CALIB_METHODS)}")
    if device not in DEVICES:
        raise FgcliError(f"unknown calibration device '{device}'", hint=f"use one of: {', '.join(DEVICES)}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    source = load_onnx(onnx_path)
    input_name, calib = calibration_input(source, onnx_path, calib)
    optional_import("modelopt.onnx.quantization", "quant", PURPOSE)
    providers = calibration_providers(device)
    high_precision = "fp16" if fp16 else "fp32"
    batch = max(1, min(batch_size, len(calib)))
    int8_nodes = symmetric_int8_pattern(source)
    kept_float = float_nodes(source, source, extra_float_nodes)
    to_quantize = [int8_nodes] if int8_nodes else None
    if only_nodes is not None:
        to_quantize = name_patterns(name for name in only_nodes if not int8_nodes or re.fullmatch(int8_nodes, name))
    import onnx

    with tempfile.TemporaryDirectory(prefix="fgcli-modelopt-") as work:
        work_input, work_output = Path(work) / "model.onnx", Path(work) / "model.int8.onnx"
        shutil.copyfile(onnx_path, work_input)
        start = time.perf_counter()
        try:
            calibration_file = Path(work) / "calibration.npy"
            np.save(calibration_file, calib.images)
            options_file = Path(work) / "options.json"
            options_file.write_text(json.dumps({
                "model": str(work_input), "output": str(work_output), "calibration_file": str(calibration_file),
                "input_name": input_name, "calibration_method": calib_method,
                "calibration_shapes": f"{input_name}:{batch}x{'x'.join(map(str, calib.images.shape[1:]))}",
                "calibration_eps": providers, "high_precision_dtype": high_precision,
                "nodes_to_quantize": to_quantize,
                "nodes_to_exclude": name_patterns(kept_float) or None}))
            _run_in_child(options_file)
        except Exception as exc:
            raise FgcliError(f"modelopt could not quantize {onnx_path}: {type(exc).__name__}: {exc}",
                             hint="check that the model exports and runs in onnxruntime "
                                  "(`fgcli export` runs a parity check)") from exc
        seconds = time.perf_counter() - start
        quantized = onnx.load(str(work_output))
    return finish_quantization(quantized, source, onnx_path, out_path, "modelopt", calib_method, len(calib),
                               seconds, {"high_precision_dtype": high_precision, "calibration_eps": providers,
                               "calibration_batch": batch, "int8_nodes": int8_nodes,
                               "float_nodes": kept_float}, allowed=int8_nodes)


if __name__ == "__main__":  # the child interpreter of _run_in_child
    _quantize_file(**json.loads(Path(sys.argv[1]).read_text()))
