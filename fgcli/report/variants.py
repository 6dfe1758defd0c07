"""Which variants a report covers, and whether each can run on this machine (and if not, why).

A variant is one way to run the same model: a backend (PyTorch, ONNX Runtime, TensorRT) at one precision.
Planning only checks what can be known without building anything: installed packages, the device, the
files of an export folder. Whatever fails later (a TensorRT build, a runner that will not open) is added
to the same list with its reason, so nothing the user asked for is silently dropped.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from fgcli.devices import parse_device
from fgcli.errors import FgcliError
from fgcli.formats import (
    BY_NAME, MODELOPT, ONNX_FILES, ONNX_FP32, ONNX_INT8_QAT, ONNXRUNTIME, REPORTED, TENSORRT, TORCH, TORCH_FP32,
    TRT_FP16, TRT_INT8, file_of,
)

#: the variants, in report order: the reported rows of ``fgcli.formats.FORMATS``
VARIANT_NAMES = REPORTED
#: INT8 with measured mixed precision (``fgcli export --target-agreement``): reported only when a target is given
AUTO_VARIANTS = tuple(name for name in REPORTED if BY_NAME[name].auto)
#: the Q/DQ ONNX of a QAT run (``fgcli train --qat``): reported only when a QAT checkpoint is given, or found in
#: an export folder
QAT_VARIANT = ONNX_INT8_QAT
#: torch.compile and CUDA-graph variants (``Format.torch_mode``): reported only when named in --formats
#: (compiling takes minutes per batch size)
ON_REQUEST = tuple(name for name in REPORTED if BY_NAME[name].on_request)
#: the FP32 reference for accuracy deltas, agreement and speed-ups: the first of these that ran
REFERENCE_CANDIDATES = (TORCH_FP32, ONNX_FP32)
#: --formats shorthands for a whole runtime
GROUPS = {"torch": TORCH, "onnx": ONNXRUNTIME, "trt": TENSORRT}

REASON_NO_TORCH = "PyTorch is not installed (pip install fgcli[torch])"
REASON_NO_ORT = "ONNX Runtime is not installed (pip install fgcli[onnx])"
REASON_NO_ONNX = "exporting ONNX needs the onnx and onnxruntime packages (pip install fgcli[onnx])"
REASON_NO_MODELOPT = "nvidia-modelopt is not installed (pip install fgcli[quant])"
REASON_NO_TENSORRT = ("TensorRT is not installed (on an NVIDIA GPU machine: pip install fgcli[trt], or JetPack's "
                      "TensorRT on a Jetson; then run fgcli report there on the export folder)")
REASON_CPU_ONLY = "needs a CUDA GPU, and this report runs on {device}"
NOTE_ORT_ON_CPU = ("ONNX Runtime here has no CUDAExecutionProvider (the CPU build), so the onnx-* variants ran on "
                   "the CPU (their device column says so; pip install onnxruntime-gpu runs them on the GPU); "
                   "--device {device} applies to PyTorch and TensorRT")


@dataclass
class Variant:
    """One row of the report: where the model file is and whether it runs here.

    ``reason`` is None for a variant that can run; otherwise it says why not and what to do.
    ``build_seconds`` / ``calib_seconds``: how long making the file took (export, TensorRT build,
    INT8 calibration), when recorded. ``float_nodes``: how many nodes an INT8 variant keeps in float (the
    model's own rules plus, for the auto variants, the measured ones), when recorded.
    """

    name: str
    path: Path | None = None
    reason: str | None = None
    build_seconds: float | None = None
    calib_seconds: float | None = None
    float_nodes: int | None = None

    @property
    def backend(self) -> str:
        return BY_NAME[self.name].runtime

    @property
    def precision(self) -> str:
        return BY_NAME[self.name].precision

    @property
    def source_onnx(self) -> str:
        """The export-folder ONNX file this variant runs (ONNX) or is built from (TensorRT)."""
        fmt = BY_NAME[self.name]
        return fmt.file if fmt.runtime == ONNXRUNTIME else file_of(fmt.built_from)

    @property
    def torch_mode(self) -> str:
        """How a torch variant runs its forward pass (``TORCH_MODES`` of runtime/torch_runner)."""
        return BY_NAME[self.name].torch_mode

    @property
    def available(self) -> bool:
        return self.reason is None

    def refuse(self, reason: str | None) -> None:
        """Mark the variant as not runnable here (the first reason found is kept: it is the root cause)."""
        self.reason = self.reason or reason


def parse_formats(formats: str | list[str] | tuple[str, ...] | None, require_reference: bool = True) -> list[str]:
    """``"all"`` / None -> every variant but ``ON_REQUEST``; else a comma list of variant names, "all" and the
    groups torch, onnx, trt (the ``ON_REQUEST`` variants only by name). ``require_reference``: refuse a list
    without an FP32 reference (the report compares against it; a speed sweep does not)."""
    default = [name for name in VARIANT_NAMES if name not in ON_REQUEST]
    if formats is None:
        return default
    tokens = [t.strip().lower() for t in (formats.split(",") if isinstance(formats, str) else formats)]
    tokens = [t for t in tokens if t]
    if not tokens:
        return default
    chosen = set()
    for token in tokens:
        if token in VARIANT_NAMES:
            chosen.add(token)
        elif token == "all":
            chosen.update(default)
        elif token in GROUPS:
            chosen.update(name for name in default if BY_NAME[name].runtime == GROUPS[token])
        else:
            raise FgcliError(f"unknown report format '{token}'", hint=f"use all, a group ({', '.join(GROUPS)}) "
                                                                      f"or variant names: {', '.join(VARIANT_NAMES)}")
    if require_reference and not chosen & set(REFERENCE_CANDIDATES):
        raise FgcliError(f"--formats {','.join(tokens)} has no FP32 reference to compare against",
                         hint="add torch-fp32 or onnx-fp32 (or use --formats all)")
    return [name for name in VARIANT_NAMES if name in chosen]


def installed(module: str) -> bool:
    """True when the top-level package ``module`` is there, found without importing it (torch takes seconds)."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: blocked, as tests do to simulate a missing package
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # an import hook refused it
        return False


def is_gpu_device(device: str) -> bool:
    """Whether ``device`` may mean a GPU ("auto" may: whether one is there shows when the runner opens)."""
    return parse_device(device)[0] != "cpu"


def torch_gpu_reason(device: str, precision: str) -> str | None:
    """Why PyTorch cannot run ``precision`` (fp16 / bf16), or a compiled / CUDA-graph variant, on ``device``, or
    None when it can. On CPU they are refused: half precision there is slower than FP32, not a deployment."""
    if not is_gpu_device(device):
        return REASON_CPU_ONLY.format(device=device)
    import torch

    if not torch.cuda.is_available():
        return f"needs a CUDA GPU, and PyTorch sees none (--device {device})"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(0)} has no BF16 support"
    return None


def plan_variants(names: list[str], *, checkpoint: bool, export_dir: Path, device: str) -> list[Variant]:
    """Variants ``names`` with what is already known to stop them: missing packages, a CPU-only device,
    files missing from an export folder (``checkpoint=False``: the report was given a folder, not a .pt).

    With a checkpoint, missing ONNX files are not a reason: they get exported.
    """
    has_onnx, has_ort = installed("onnx"), installed("onnxruntime")
    has_modelopt, has_trt = installed("modelopt"), installed("tensorrt")
    variants = []
    for name in names:
        variant = Variant(name)
        backend = variant.backend
        if backend == TORCH:
            if not installed("torch"):
                variant.refuse(REASON_NO_TORCH)
            if not checkpoint:
                variant.refuse(f"needs the .pt checkpoint, and the report was given the export folder {export_dir}")
            if variant.available and (variant.precision != "fp32" or variant.torch_mode != "eager"):
                variant.refuse(torch_gpu_reason(device, variant.precision))
        if backend in (ONNXRUNTIME, TENSORRT) and checkpoint and not (has_onnx and has_ort):
            variant.refuse(REASON_NO_ONNX)
        if backend == ONNXRUNTIME:
            if not has_ort:
                variant.refuse(REASON_NO_ORT)
            if (BY_NAME[name].builder == MODELOPT or name == QAT_VARIANT) and checkpoint and not has_modelopt:
                variant.refuse(REASON_NO_MODELOPT)
            if not checkpoint and not (export_dir / ONNX_FILES[name]).is_file():
                variant.refuse(f"{export_dir} has no {ONNX_FILES[name]} ({export_hint(name)})")
        if backend == TENSORRT:
            if not has_trt:
                variant.refuse(REASON_NO_TENSORRT)
            if not is_gpu_device(device):
                variant.refuse(REASON_CPU_ONLY.format(device=device))
            if name == TRT_INT8 and checkpoint and not has_modelopt:
                variant.refuse(f"builds from the modelopt Q/DQ {variant.source_onnx}, and {REASON_NO_MODELOPT}")
            if not checkpoint:
                variant.refuse(_engine_source_reason(variant, export_dir, can_convert=has_onnx and has_ort))
        variants.append(variant)
    return variants


def onnxruntime_device(device: str) -> str:
    """Where ONNX Runtime runs for ``--device device``: the GPU when this onnxruntime has CUDAExecutionProvider,
    else the CPU ("cuda" is not a reason to refuse a runtime that has no GPU backend here; ``NOTE_ORT_ON_CPU``)."""
    if parse_device(device)[0] != "cuda":
        return device
    import onnxruntime

    return device if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def _engine_source_reason(variant: Variant, export_dir: Path, can_convert: bool) -> str | None:
    """Why the export folder cannot give TensorRT ``variant`` its ONNX, or None when it can (the FP16 ONNX may
    be converted here from model.onnx)."""
    source = export_dir / variant.source_onnx
    if source.is_file():
        return None
    fp32_file = file_of(ONNX_FP32)
    if variant.name == TRT_FP16 and (export_dir / fp32_file).is_file():
        return None if can_convert else (f"needs {source.name}, and converting {fp32_file} to it needs the onnx and "
                                         "onnxruntime packages (pip install fgcli[onnx])")
    made_from = fp32_file if variant.name == TRT_FP16 else source.name
    hint = export_hint(BY_NAME[variant.name].built_from if variant.name == TRT_INT8 else ONNX_FP32)
    return f"{export_dir} has no {made_from} to build the engine from ({hint})"


def export_hint(name: str) -> str:
    """The fgcli export command that writes the ONNX file of variant ``name``."""
    if name == ONNX_FP32:
        return "fgcli export CHECKPOINT --out DIR writes it"
    if name == QAT_VARIANT:
        return "fgcli train --qat --weights CHECKPOINT ... --out QAT_RUN, then fgcli export QAT_RUN/best.pt --out DIR writes it"
    fmt = BY_NAME[name]
    target = " --target-agreement 0.99" if fmt.auto else ""
    return f"fgcli export CHECKPOINT --out DIR --int8 --int8-backend {fmt.builder} --calib-data DATASET{target} writes it"
