"""The INT8 steps of an export: calibration set, each backend's INT8 model, and the measured mixed precision.

``quantize`` writes ``calib.npz`` and the INT8 ONNX of each ``--int8-backend`` (modelopt Q/DQ for TensorRT,
ONNX Runtime static INT8 for CPU / ARM); with ``--target-agreement`` / ``--max-drop`` ``auto_precision`` measures
which nodes INT8 hurts (``calibration.sensitivity``) and keeps the worst float until the target is met
(``calibration.mixed_precision``). ``sensitivity_of`` is ``fgcli sensitivity``: the same measurement of a checkpoint,
export folder or ONNX file, on its own.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from fgcli.calibration import QuantResult
from fgcli.calibration.dataset import CalibrationSet, build_calibration_set
from fgcli.calibration.int8_builder import Int8Builder, best_calibration, check_backend
from fgcli.calibration.mixed_precision import choose_float_nodes
from fgcli.calibration.modelopt_ptq import quantize_modelopt
from fgcli.calibration.ort_int8 import ort_calib_method, quantize_ort
from fgcli.calibration.sensitivity import (SensitivityResult, calibration_and_validation,
                                           check_validation, measure_sensitivity, validation_subset,
                                           write_sensitivity)
from fgcli.data.preprocess import PreprocessConfig
from fgcli.errors import FgcliError
from fgcli.export.onnx import export_onnx
from fgcli.export.options import DEFAULT_VAL_SIZE, SENSITIVITY_CALIB_SIZE, ExportOptions, ExportSummary
from fgcli.formats import ONNX_FP32, file_of, int8_format
from fgcli.runtime.onnx_meta import read_onnx_metadata, update_onnx_metadata

#: the progress line of each backend's quantization
QUANTIZE_STEPS = {"modelopt": "quantizing with modelopt (Q/DQ for TensorRT)",
                  "ort": "quantizing with ONNX Runtime (CPU / ARM INT8)"}


def quantize(onnx_path: Path, opts: ExportOptions, summary: ExportSummary, step: Callable[[str], None]) -> None:
    """calib.npz, then the INT8 model of each ``--int8-backend`` (and its mixed-precision model with a target)."""
    step(f"building the calibration set ({opts.calib_size} images)")
    preprocess = PreprocessConfig.from_dict(read_onnx_metadata(onnx_path)["preprocess"])
    calib = build_calibration_set(opts.data, preprocess, size=opts.calib_size)
    calib_path = calib.save(onnx_path.with_name("calib.npz"))
    summary.artifacts["calibration"] = {"path": str(calib_path), "images": len(calib),
                                        "skipped": [p for p, _ in calib.skipped]}
    summary.notes.extend(calib.warnings)
    for backend in opts.int8_backends():
        step(QUANTIZE_STEPS[backend])
        summary.artifacts[int8_format(backend).name] = int8_model(onnx_path, calib, backend, opts).to_dict()
    if opts.auto_precision:
        auto_precision(onnx_path, calib, opts, summary, step)


def int8_model(onnx_path: Path, calib: CalibrationSet, backend: str, opts: ExportOptions) -> QuantResult:
    """The plain INT8 model of ``backend`` beside ``onnx_path``, calibrated with ``--calib-method``."""
    out_path = onnx_path.with_name(int8_format(backend).file)
    if backend == "modelopt":
        return quantize_modelopt(onnx_path, calib, out_path, calib_method=opts.calib_method, fp16=opts.fp16,
                                 device=opts.device)
    return quantize_ort(onnx_path, calib, out_path, calib_method=ort_calib_method(opts.calib_method))


def auto_precision(onnx_path: Path, calib: CalibrationSet, opts: ExportOptions, summary: ExportSummary,
                   step: Callable[[str], None]) -> None:
    """Per backend: measure every node's INT8 sensitivity on a validation subset disjoint from ``calib``, then
    keep the most sensitive in float one at a time until the target is met; record the choice in export.json
    and in the model's metadata."""
    validation = validation_subset(opts.data, calib.preprocess, size=opts.val_size)
    check_validation(validation.images, calib, validation.paths)
    chosen: list[str] = []
    for backend in opts.int8_backends(auto=True):
        auto_format = int8_format(backend, auto=True)
        with tempfile.TemporaryDirectory(prefix="fgcli-auto-precision-") as work:
            tried = {}
            if opts.auto_calib:
                builder, tried = best_calibration(onnx_path, backend, calib, work, validation.images,
                                                  validation.labels, fp16=opts.fp16, device=opts.device)
                step(f"{backend} calibration: {builder.calib_method} is closest to FP32 (full INT8 agreement "
                     + ", ".join(f"{method} {error.agreement:.1%}" for method, error in tried.items()) + ")")
            else:
                builder = Int8Builder(onnx_path, backend, calib, work, fp16=opts.fp16,
                                      calib_method=opts.calib_method, device=opts.device)
            measured = []

            def ranked() -> list[str]:  # only when full INT8 misses the target
                measured.append(measure_sensitivity(
                    onnx_path, calib, validation.images, backend=backend, labels=validation.labels, builder=builder,
                    alone=False, progress=lambda node, total: step(f"{backend} INT8 sensitivity: {node} ({total})")))
                return measured[0].ranked_names

            choice, result = choose_float_nodes(
                builder, ranked, onnx_path.with_name(auto_format.file), validation.images, validation.labels,
                target_agreement=opts.target_agreement, max_drop=opts.max_drop, min_speedup=opts.min_speedup,
                step_done=lambda s: step(f"{backend} mixed precision: {len(s.float_nodes)} float nodes, agreement "
                                         f"{s.error.agreement:.1%}, CPU {s.speedup:.2f}x FP32"
                                         + (" (too slow: back to INT8)" if s.too_slow else "")))
        update_onnx_metadata(result.output_path, auto_float_nodes=choice.chosen.float_nodes,
                             target_agreement=choice.target_agreement, max_drop=choice.max_drop,
                             min_speedup=choice.min_speedup, auto_agreement=choice.chosen.error.agreement)
        chosen.extend(choice.chosen.float_nodes)
        summary.artifacts[auto_format.name] = {**result.to_dict(), "auto_precision": choice.to_dict(),
                                  "sensitivity": measured[0].to_dict() if measured else None,
                                  "calibration_methods": {method: asdict(error) for method, error in tried.items()}}
        too_slow = [s.float_nodes[-1] for s in choice.steps if s.too_slow]
        if too_slow:
            summary.notes.append(f"{backend}: {len(too_slow)} nodes stayed INT8 because keeping them float took the "
                                 f"CPU speed-up below --min-speedup {choice.min_speedup} (first: {too_slow[0]})")
        if not choice.met:
            summary.notes.append(f"{backend}: the target was not met with up to {len(choice.steps[-1].float_nodes)} "
                                 f"of the {len(measured[0].nodes)} measured nodes in float; kept the closest step: "
                                 f"{len(choice.chosen.float_nodes)} float nodes, agreement "
                                 f"{choice.chosen.error.agreement:.1%} (lower the target, or fine-tune)")
    # the FP32 model carries the choice too, so quantizing it again (fgcli export, quantize_ort / _modelopt)
    # keeps those nodes float without measuring again
    update_onnx_metadata(onnx_path, auto_float_nodes=list(dict.fromkeys(chosen)))



# --------------------------------------------------------------------------- fgcli sensitivity
def fp32_onnx_of(model: str | Path, out_dir: str | Path) -> Path:
    """The FP32 ONNX to measure: ``model`` itself (.onnx), an export folder's model.onnx, or a .pt checkpoint
    exported (and checked against PyTorch) to ``out_dir``/model.onnx."""
    model = Path(model)
    if model.is_file() and model.suffix == ".pt":
        return export_onnx(model, out_dir).path
    path = model / file_of(ONNX_FP32) if model.is_dir() else model
    if not path.is_file():
        raise FgcliError(f"{model} is neither a .pt checkpoint, an .onnx file nor an export folder with model.onnx",
                         hint="pass RUN/best.pt or the folder fgcli export wrote")
    precision = read_onnx_metadata(path)["precision"]
    if precision != "fp32":
        raise FgcliError(f"{path} is {precision}; sensitivity quantizes the FP32 model", hint="pass model.onnx")
    return path


def sensitivity_of(model: str | Path, data: str | Path, out_dir: str | Path, backend: str = "ort",
                   calib_size: int = SENSITIVITY_CALIB_SIZE, val_size: int = DEFAULT_VAL_SIZE,
                   progress: Callable[[str, int], None] | None = None) -> tuple[SensitivityResult, Path]:
    """``measure_sensitivity`` of a checkpoint / export folder / ONNX on ``data``'s splits; writes
    sensitivity.json into ``out_dir`` and returns its path."""
    check_backend(backend)
    onnx_path = fp32_onnx_of(model, out_dir)
    preprocess = PreprocessConfig.from_dict(read_onnx_metadata(onnx_path)["preprocess"])
    calib, validation = calibration_and_validation(data, preprocess, calib_size, val_size)
    result = measure_sensitivity(onnx_path, calib, validation.images, backend=backend, labels=validation.labels,
                                 progress=progress)
    return result, write_sensitivity(result, out_dir)
