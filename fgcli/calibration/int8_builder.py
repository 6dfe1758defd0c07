"""Q/DQ INT8 models of one FP32 ONNX by one backend, with chosen nodes kept in float or quantized alone.

The building block of the INT8 sensitivity measurement and the mixed-precision search: both ask for many
variants of the same quantization, differing only in which nodes stay float. ``best_calibration`` picks the
calibration method whose full INT8 model is closest to FP32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fgcli.calibration import QuantResult, float_nodes
from fgcli.calibration.dataset import CalibrationSet
from fgcli.calibration.modelopt_ptq import CALIB_METHODS as MODELOPT_METHODS
from fgcli.calibration.modelopt_ptq import quantize_modelopt
from fgcli.calibration.ort_int8 import CALIB_METHODS as ORT_METHODS
from fgcli.calibration.ort_int8 import ort_calib_method, quantize_ort
from fgcli.errors import FgcliError
from fgcli.runtime.comparator import Comparison, compare_logits
from fgcli.runtime.onnx_meta import load_onnx
from fgcli.runtime.onnx_runner import onnxruntime_logits

BACKENDS = ("ort", "modelopt")


def check_backend(backend: str) -> None:
    """Refuse an INT8 backend fgcli does not have."""
    if backend not in BACKENDS:
        raise FgcliError(f"unknown INT8 backend '{backend}'", hint=f"use one of: {', '.join(BACKENDS)}")


class Int8Builder:
    """Q/DQ models of one FP32 ONNX by one backend, with chosen nodes kept in float or quantized alone.

    ONNX Runtime calibrates on the first build and reuses the ranges (``calibration_cache``) for the others.
    """

    def __init__(self, onnx_path: str | Path, backend: str, calib: CalibrationSet, work_dir: str | Path,
                 fp16: bool = False, calib_method: str = "max", device: str = "cpu"):
        check_backend(backend)
        self.onnx_path, self.backend, self.calib = Path(onnx_path), backend, calib
        self.work_dir = Path(work_dir)
        self.fp16, self.calib_method, self.device = fp16, calib_method, device
        self.builds = 0

    def build(self, out_path: str | Path, extra_float: list[str] | tuple[str, ...] = (),
              only: list[str] | None = None) -> QuantResult:
        self.builds += 1
        if self.backend == "ort":
            return quantize_ort(self.onnx_path, self.calib, out_path, calib_method=ort_calib_method(self.calib_method),
                                extra_float_nodes=extra_float, only_nodes=only,
                                calibration_cache=self.work_dir / "ort-calibration.json")
        return quantize_modelopt(self.onnx_path, self.calib, out_path, calib_method=self.calib_method,
                                 fp16=self.fp16, device=self.device, extra_float_nodes=extra_float, only_nodes=only)

    def constraint_float_nodes(self) -> list[str]:
        """What the model's own rules keep in float (softmax-weighted nodes, ``FGVCModel.float_nodes``)."""
        source = load_onnx(self.onnx_path)
        return float_nodes(source, source)


def best_calibration(onnx_path: str | Path, backend: str, calib: CalibrationSet, work_dir: str | Path,
                     images: np.ndarray, labels: np.ndarray | None = None, fp16: bool = False, device: str = "cpu"
                     ) -> tuple[Int8Builder, dict[str, Comparison]]:
    """Quantize ``onnx_path`` fully with each calibration method ``backend`` offers; the builder of the one closest
    to FP32 on ``images`` (highest agreement, then lowest KL; the first listed on a tie) and every method's error.
    Ranges matter as much as float nodes: percentile ranges took GCAM-CSA's full INT8 from 96.1 % to 97.8 %."""
    reference = onnxruntime_logits(onnx_path, images)
    builders, errors = {}, {}
    for method in ORT_METHODS if backend == "ort" else MODELOPT_METHODS:
        method_dir = Path(work_dir) / method
        method_dir.mkdir(parents=True, exist_ok=True)
        builders[method] = Int8Builder(onnx_path, backend, calib, method_dir, fp16=fp16, calib_method=method,
                                       device=device)
        full = builders[method].build(method_dir / "full.onnx")
        errors[method] = compare_logits(reference, onnxruntime_logits(full.output_path, images), labels)
    best = max(errors, key=lambda method: (errors[method].agreement, -errors[method].kl))
    return builders[best], errors
