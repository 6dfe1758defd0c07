"""Which nodes INT8 hurts: per-node sensitivity measured end to end, and the greedy mixed precision built on it.

For every node a quantizer turns into INT8 (a Conv with its folded bias and fused activation, a MatMul / Gemm,
an Add, a pooling ...), two Q/DQ models are built with the backend's own node selection (``nodes_to_quantize``
/ ``nodes_to_exclude`` of ONNX Runtime and modelopt): the node quantized alone (what it costs) and every node
but it quantized (what keeping it alone in float recovers). Both are compared with the FP32 logits on a
validation subset disjoint from the calibration images: top-1 agreement, KL(FP32 || INT8) of the softmax and
the RMS logit error. The FP32 logits are computed once; ONNX Runtime calibrates once (its calibration cache)
and reuses the ranges for every model, modelopt calibrates each model in its child interpreter (slower).

``choose_float_nodes`` then starts from full INT8 and keeps the most sensitive nodes in float one at a time
until a target agreement (and / or a maximum top-1 drop) is met, timing each step on the CPU.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fgcli.calibration import LAYOUT_OP_TYPES, NothingQuantizedError, QuantResult
from fgcli.calibration.dataset import CalibrationSet, CalibrationWarning, build_calibration_set
from fgcli.errors import FgcliError

BACKENDS = ("ort", "modelopt")
DEFAULT_VALIDATION_SIZE = 256
DEFAULT_CALIBRATION_SIZE = 256
#: splits a validation subset is drawn from, best first (calibration always samples the train split)
VALIDATION_SPLITS = ("val", "test")
SENSITIVITY_JSON = "sensitivity.json"
SENSITIVITY_PNG = "sensitivity.png"


@dataclass(frozen=True)
class OutputError:
    """How far a model's logits are from the FP32 logits on the validation images."""

    agreement: float  # fraction of images with the same top-1 class
    kl: float  # mean KL(FP32 softmax || model softmax), nats
    logit_rmse: float
    top1: float | None = None  # accuracy against the labels, when known


def output_error(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None = None) -> OutputError:
    """Agreement, KL and RMS logit error of ``logits`` against ``reference`` (both (N, C))."""
    if reference.shape != logits.shape:
        raise FgcliError(f"logits of shape {logits.shape} cannot be compared with FP32 logits {reference.shape}")
    log_p, log_q = _log_softmax(reference), _log_softmax(logits)
    kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))
    top1 = None if labels is None else float(np.mean(logits.argmax(1) == labels))
    return OutputError(agreement=float(np.mean(reference.argmax(1) == logits.argmax(1))), kl=max(kl, 0.0),
                       logit_rmse=float(np.sqrt(np.mean((reference - logits) ** 2))), top1=top1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@dataclass
class NodeSensitivity:
    """One node: the error with it quantized alone, and the error of full INT8 with it alone kept in float."""

    name: str
    op_type: str
    alone: OutputError | None  # None: not measured (the greedy loop needs only the float side) or not
    # quantizable alone (ONNX Runtime quantizes a MaxPool only after a quantized node)
    kept_float: OutputError
    recovered_agreement: float  # kept_float.agreement - full INT8 agreement
    recovered_kl: float  # full INT8 KL - kept_float.kl

    @property
    def score(self) -> float:
        """The ranking key: the KL its INT8 alone adds plus the KL keeping it in float removes (nats)."""
        return (self.alone.kl if self.alone is not None else 0.0) + self.recovered_kl


@dataclass
class SensitivityResult:
    model: str
    backend: str
    calibration_images: int
    validation_images: int
    full_int8: OutputError
    nodes: list[NodeSensitivity]  # most sensitive first
    constraint_float_nodes: list[str]  # kept float by the model's own rules, never measured
    seconds: float

    @property
    def ranked_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def to_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "calibration_images": self.calibration_images,
                "validation_images": self.validation_images, "full_int8": asdict(self.full_int8),
                "constraint_float_nodes": self.constraint_float_nodes, "seconds": self.seconds,
                "nodes": [{**asdict(node), "score": node.score} for node in self.nodes]}


class Int8Builder:
    """Q/DQ models of one FP32 ONNX by one backend, with chosen nodes kept in float or quantized alone.

    ONNX Runtime calibrates on the first build and reuses the ranges (``calibration_cache``) for the others.
    """

    def __init__(self, onnx_path: str | Path, backend: str, calib: CalibrationSet, work_dir: str | Path,
                 fp16: bool = False, calib_method: str = "max", device: str = "cpu"):
        if backend not in BACKENDS:
            raise FgcliError(f"unknown INT8 backend '{backend}'", hint=f"use one of: {', '.join(BACKENDS)}")
        self.onnx_path, self.backend, self.calib = Path(onnx_path), backend, calib
        self.work_dir = Path(work_dir)
        self.fp16, self.calib_method, self.device = fp16, calib_method, device
        self.builds = 0

    def build(self, out_path: str | Path, extra_float: list[str] | tuple[str, ...] = (),
              only: list[str] | None = None) -> QuantResult:
        self.builds += 1
        if self.backend == "ort":
            from fgcli.calibration.ort_int8 import quantize_ort

            method = {"max": "minmax"}.get(self.calib_method, self.calib_method)
            return quantize_ort(self.onnx_path, self.calib, out_path, calib_method=method,
                                extra_float_nodes=extra_float, only_nodes=only,
                                calibration_cache=self.work_dir / "ort-calibration.json")
        from fgcli.calibration.modelopt_ptq import quantize_modelopt

        return quantize_modelopt(self.onnx_path, self.calib, out_path, calib_method=self.calib_method,
                                 fp16=self.fp16, device=self.device, extra_float_nodes=extra_float, only_nodes=only)

    def constraint_float_nodes(self) -> list[str]:
        """What the model's own rules keep in float (softmax-weighted nodes, ``FGVCModel.float_nodes``)."""
        from fgcli.calibration import float_nodes
        from fgcli.export.onnx import load_onnx

        source = load_onnx(self.onnx_path)
        return float_nodes(source, source)


def best_calibration(onnx_path: str | Path, backend: str, calib: CalibrationSet, work_dir: str | Path,
                     images: np.ndarray, labels: np.ndarray | None = None, fp16: bool = False, device: str = "cpu"
                     ) -> tuple[Int8Builder, dict[str, OutputError]]:
    """Quantize ``onnx_path`` fully with each calibration method ``backend`` offers; the builder of the one closest
    to FP32 on ``images`` (highest agreement, then lowest KL; the first listed on a tie) and every method's error.
    Ranges matter as much as float nodes: percentile ranges took GCAM-CSA's full INT8 from 96.1 % to 97.8 %."""
    from fgcli.calibration.modelopt_ptq import CALIB_METHODS as MODELOPT_METHODS
    from fgcli.calibration.ort_int8 import CALIB_METHODS as ORT_METHODS

    reference = validation_logits(onnx_path, images)
    builders, errors = {}, {}
    for method in ORT_METHODS if backend == "ort" else MODELOPT_METHODS:
        method_dir = Path(work_dir) / method
        method_dir.mkdir(parents=True, exist_ok=True)
        builders[method] = Int8Builder(onnx_path, backend, calib, method_dir, fp16=fp16, calib_method=method,
                                       device=device)
        full = builders[method].build(method_dir / "full.onnx")
        errors[method] = output_error(reference, validation_logits(full.output_path, images), labels)
    best = max(errors, key=lambda method: (errors[method].agreement, -errors[method].kl))
    return builders[best], errors


def validation_logits(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    """Logits of an ONNX model on ONNX Runtime CPU (the same kernels for every model compared)."""
    from fgcli.export.onnx import onnxruntime_logits

    return onnxruntime_logits(Path(onnx_path), images)


def check_validation(images: np.ndarray, calib: CalibrationSet, validation_paths: list[str] | None = None) -> None:
    """Refuse an empty validation subset, one of another image size, or one that shares images with ``calib``."""
    if len(images) == 0:
        raise FgcliError("the validation subset is empty: sensitivity compares INT8 with FP32 on it",
                         hint="pass a dataset with a val or test split holding images (--data)")
    if images.shape[1:] != calib.images.shape[1:]:
        raise FgcliError(f"validation images are {images.shape[1:]}, calibration images {calib.images.shape[1:]}",
                         hint="preprocess both with the model's preprocessing")
    shared = set(validation_paths or ()) & set(calib.paths)
    if shared:
        raise FgcliError(f"{len(shared)} validation images are also calibration images (e.g. {sorted(shared)[0]})",
                         hint="calibrate on the train split and validate on val or test")


def measure_sensitivity(onnx_path: str | Path, calib: CalibrationSet, images: np.ndarray, backend: str = "ort",
                        labels: np.ndarray | None = None, fp16: bool = False, calib_method: str = "max",
                        device: str = "cpu", progress: Callable[[str, int], None] | None = None,
                        builder: Int8Builder | None = None, alone: bool = True) -> SensitivityResult:
    """Rank every node ``backend`` quantizes in ``onnx_path`` by how much INT8 hurts it on ``images``.

    ``progress(node_name, total)`` is called after each node (2 builds and 2 evaluations). ``builder``: one to
    share (and its calibration) with a later ``choose_float_nodes``. ``alone=False`` measures only what keeping
    each node in float recovers (half the builds). Raises FgcliError on an empty validation
    subset and on a model with nothing to quantize.
    """
    check_validation(images, calib)
    start = time.perf_counter()
    reference = validation_logits(onnx_path, images)
    with tempfile.TemporaryDirectory(prefix="fgcli-sensitivity-") as work:
        builder = builder or Int8Builder(onnx_path, backend, calib, work, fp16=fp16, calib_method=calib_method,
                                         device=device)
        full = builder.build(Path(work) / "full.onnx")
        full_error = output_error(reference, validation_logits(full.output_path, images), labels)
        op_types = _op_types(full.output_path)
        groups = node_groups(full, op_types)
        nodes = []
        for name in groups:
            alone_error = None
            if alone:
                try:
                    alone_model = builder.build(Path(work) / "alone.onnx", only=[name])
                    alone_error = output_error(reference, validation_logits(alone_model.output_path, images), labels)
                except NothingQuantizedError:
                    pass  # e.g. a MaxPool: quantized only where its input already is, never alone
            kept = builder.build(Path(work) / "kept.onnx", extra_float=[name])
            kept_error = output_error(reference, validation_logits(kept.output_path, images), labels)
            nodes.append(NodeSensitivity(name, op_types.get(name, "?"), alone_error, kept_error,
                                         kept_error.agreement - full_error.agreement, full_error.kl - kept_error.kl))
            if progress is not None:
                progress(name, len(groups))
        constraints = builder.constraint_float_nodes()
    nodes.sort(key=lambda node: -node.score)
    return SensitivityResult(str(onnx_path), backend, len(calib), len(images), full_error, nodes, constraints,
                             time.perf_counter() - start)


def write_sensitivity(result: SensitivityResult, out_dir: str | Path, top: int = 20) -> dict[str, Path]:
    """``sensitivity.json`` and the bar chart ``sensitivity.png`` of the ``top`` nodes in ``out_dir``."""
    from fgcli.report.plots import plot_sensitivity
    from fgcli.utils import write_json_atomic

    out_dir = Path(out_dir)
    record = result.to_dict()
    return {"json": write_json_atomic(out_dir / SENSITIVITY_JSON, record),
            "png": plot_sensitivity(record, out_dir / SENSITIVITY_PNG, top=top)}


def node_groups(full: QuantResult, op_types: dict[str, str]) -> list[str]:
    """The nodes of a full INT8 model that can be quantized or kept float on their own: its quantized nodes
    but the layout ops (Flatten, Reshape ...), which only pass their neighbours' Q/DQ through. Each stands for
    its group: quantizing a Conv alone also quantizes its fused ReLU and its bias."""
    return [name for name in full.quantized_nodes if op_types.get(name) not in LAYOUT_OP_TYPES]


def _op_types(path: Path) -> dict[str, str]:
    from fgcli.export.onnx import load_onnx

    return {node.name: node.op_type for node in load_onnx(path).graph.node}


def validation_subset(data_root: str | Path, preprocess, size: int = DEFAULT_VALIDATION_SIZE, seed: int = 0,
                      layout: str = "auto") -> CalibrationSet:
    """A class-balanced sample of the dataset's val split (else its test split), preprocessed for evaluation."""
    from fgcli.data import dataset_splits, detect_layout

    layout = detect_layout(data_root) if layout == "auto" else layout
    splits = dataset_splits(data_root, layout)
    split = next((name for name in VALIDATION_SPLITS if name in splits), None)
    if split is None:
        raise FgcliError(f"{data_root} has no val or test split to validate INT8 on (splits: {', '.join(splits)})",
                         hint="the validation images must be disjoint from the train split that calibrates")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # the "few calibration images" advice is not for this
        return build_calibration_set(data_root, preprocess, size=size, seed=seed, split=split, layout=layout)


def calibration_and_validation(data_root: str | Path, preprocess, calib_size: int = DEFAULT_CALIBRATION_SIZE,
                               val_size: int = DEFAULT_VALIDATION_SIZE) -> tuple[CalibrationSet, CalibrationSet]:
    """The calibration set (train split) and the validation subset (val / test split), checked disjoint."""
    calib = build_calibration_set(data_root, preprocess, size=calib_size)
    validation = validation_subset(data_root, preprocess, size=val_size)
    check_validation(validation.images, calib, validation.paths)
    return calib, validation


# --------------------------------------------------------------------------- greedy mixed precision
@dataclass
class PrecisionStep:
    """Full INT8 with ``float_nodes`` kept in float: its error and its CPU latency at batch 1. ``too_slow``: the
    step fell below the speed floor, so its last node was put back to INT8 and the next candidate tried."""

    float_nodes: list[str]
    error: OutputError
    latency_ms: float
    fp32_latency_ms: float
    too_slow: bool = False

    @property
    def speedup(self) -> float:
        return self.fp32_latency_ms / self.latency_ms


@dataclass
class PrecisionChoice:
    target_agreement: float | None
    max_drop: float | None  # top-1 points (fraction) the INT8 model may lose against FP32
    fp32_top1: float | None
    min_speedup: float | None = None  # CPU speed-up over FP32 at batch 1 no kept step may fall below
    steps: list[PrecisionStep] = field(default_factory=list)
    met: bool = False
    chosen_step: int = -1  # index into steps: the last one, or the closest to FP32 when the target was not met

    @property
    def chosen(self) -> PrecisionStep:
        return self.steps[self.chosen_step]

    def to_dict(self) -> dict:
        return {"target_agreement": self.target_agreement, "max_drop": self.max_drop, "fp32_top1": self.fp32_top1,
                "min_speedup": self.min_speedup, "met": self.met,
                "chosen_step": range(len(self.steps))[self.chosen_step],
                "float_nodes": self.chosen.float_nodes, "agreement": self.chosen.error.agreement,
                "steps": [{"float_nodes": len(s.float_nodes), "added": s.float_nodes[-1] if s.float_nodes else None,
                           **asdict(s.error), "latency_ms": s.latency_ms, "speedup": s.speedup,
                           "too_slow": s.too_slow} for s in self.steps]}


def check_targets(target_agreement: float | None, max_drop: float | None, min_speedup: float | None = None) -> None:
    """Refuse a target no model can meet or none at all."""
    if target_agreement is None and max_drop is None:
        raise FgcliError("automatic mixed precision needs a target", hint="pass --target-agreement and/or --max-drop")
    if target_agreement is not None and not 0.0 < target_agreement <= 1.0:
        raise FgcliError(f"--target-agreement {target_agreement} is not a fraction in (0, 1]",
                         hint="agreement is the fraction of images with FP32's top-1 class, e.g. 0.99")
    if max_drop is not None and not 0.0 <= max_drop <= 100.0:
        raise FgcliError(f"--max-drop {max_drop} is not a number of top-1 points in [0, 100]", hint="e.g. 0.5")
    if min_speedup is not None and not min_speedup > 0.0:
        raise FgcliError(f"--min-speedup {min_speedup} is not a positive ratio",
                         hint="the CPU speed-up over FP32 at batch 1 to keep, e.g. 1.8")


def target_met(error: OutputError, target_agreement: float | None, max_drop: float | None,
               fp32_top1: float | None) -> bool:
    """Whether ``error`` meets every target given (``max_drop`` in top-1 points)."""
    if target_agreement is not None and error.agreement < target_agreement:
        return False
    if max_drop is not None:
        if fp32_top1 is None or error.top1 is None:
            raise FgcliError("--max-drop needs labelled validation images", hint="use --target-agreement")
        return 100.0 * (fp32_top1 - error.top1) <= max_drop + 1e-9
    return True


def cpu_latencies(fp32_runner, int8_path: Path, images: np.ndarray, iterations: int) -> tuple[float, float]:
    """p50 batch-1 latency (ms) of the INT8 model at ``int8_path`` and of FP32, timed interleaved on ORT CPU."""
    from fgcli.report.timing import time_interleaved
    from fgcli.runtime.onnx_runner import OnnxRunner

    with OnnxRunner(int8_path, device="cpu", spin_wait=False) as runner:
        timings = time_interleaved({"fp32": fp32_runner, "int8": runner}, images, [1], iterations, warmup=2)
    return timings["int8"].latency_ms["p50"], timings["fp32"].latency_ms["p50"]


def choose_float_nodes(builder: Int8Builder, ranked: list[str] | Callable[[], list[str]], out_path: str | Path,
                       images: np.ndarray,
                       labels: np.ndarray | None = None, target_agreement: float | None = None,
                       max_drop: float | None = None, timing_iterations: int = 20,
                       step_done: Callable[[PrecisionStep], None] | None = None,
                       min_speedup: float | None = None) -> tuple[PrecisionChoice, QuantResult]:
    """Keep ``ranked`` nodes (most sensitive first) in float one at a time from full INT8 until the target is met.

    Stops at the first step that meets it. ``min_speedup``: a node whose step takes the CPU speed-up over FP32
    below it goes back to INT8 (that step is marked ``too_slow``) and the next node is tried, so the choice
    trades accuracy only for speed it can afford. When no step meets the target (``met`` False: every ranked
    node tried, or the next step would leave nothing quantized), the kept step closest to FP32 is chosen
    (highest agreement, then top-1), not the last one. ``ranked`` may be a function, called only when full INT8
    misses the target (the measurement is the expensive part). The model of the chosen step is written to
    ``out_path``. ``step_done`` sees each step as it is measured.
    """
    from fgcli.runtime.onnx_runner import OnnxRunner

    check_targets(target_agreement, max_drop, min_speedup)
    reference = validation_logits(builder.onnx_path, images)
    fp32_top1 = None if labels is None else float(np.mean(reference.argmax(1) == labels))
    choice = PrecisionChoice(target_agreement, max_drop, fp32_top1, min_speedup)
    timing_images = np.ascontiguousarray(images[:1])

    def measure(float_nodes: list[str]) -> tuple[PrecisionStep, QuantResult]:
        result = builder.build(out_path, extra_float=float_nodes)
        error = output_error(reference, validation_logits(result.output_path, images), labels)
        step = PrecisionStep(float_nodes, error, *cpu_latencies(fp32_runner, result.output_path, timing_images,
                                                                timing_iterations))
        step.too_slow = bool(float_nodes) and min_speedup is not None and step.speedup < min_speedup
        choice.steps.append(step)
        if step_done is not None:
            step_done(step)
        return step, result

    with OnnxRunner(builder.onnx_path, device="cpu", spin_wait=False) as fp32_runner:
        step, result = measure([])
        choice.met = target_met(step.error, target_agreement, max_drop, fp32_top1)
        kept: list[str] = []
        for node in ([] if choice.met else (ranked() if callable(ranked) else ranked)):
            try:
                step, result = measure(kept + [node])
            except NothingQuantizedError:  # every quantizable node is float now: that is FP32, not a choice
                break
            if step.too_slow:
                continue
            kept = step.float_nodes
            if target_met(step.error, target_agreement, max_drop, fp32_top1):
                choice.met = True
                break
    kept_steps = [i for i, s in enumerate(choice.steps) if not s.too_slow]
    choice.chosen_step = kept_steps[-1] if choice.met else max(kept_steps, key=lambda i: (
        choice.steps[i].error.agreement, -1.0 if choice.steps[i].error.top1 is None else choice.steps[i].error.top1))
    if choice.chosen_step != len(choice.steps) - 1:
        result = builder.build(out_path, extra_float=choice.chosen.float_nodes)
    return choice, result


# --------------------------------------------------------------------------- from a model path and a dataset
def fp32_onnx_of(model: str | Path, out_dir: str | Path) -> Path:
    """The FP32 ONNX to measure: ``model`` itself (.onnx), an export folder's model.onnx, or a .pt checkpoint
    exported (and checked against PyTorch) to ``out_dir``/model.onnx."""
    from fgcli.export.onnx import read_onnx_metadata

    model = Path(model)
    if model.is_file() and model.suffix == ".pt":
        from fgcli.export.onnx import export_onnx

        return export_onnx(model, out_dir).path
    path = model / "model.onnx" if model.is_dir() else model
    if not path.is_file():
        raise FgcliError(f"{model} is neither a .pt checkpoint, an .onnx file nor an export folder with model.onnx",
                         hint="pass RUN/best.pt or the folder fgcli export wrote")
    precision = read_onnx_metadata(path)["precision"]
    if precision != "fp32":
        raise FgcliError(f"{path} is {precision}; sensitivity quantizes the FP32 model", hint="pass model.onnx")
    return path


def sensitivity_of(model: str | Path, data: str | Path, out_dir: str | Path, backend: str = "ort",
                   calib_size: int = DEFAULT_CALIBRATION_SIZE, val_size: int = DEFAULT_VALIDATION_SIZE,
                   top: int = 20, progress: Callable[[str, int], None] | None = None
                   ) -> tuple[SensitivityResult, dict[str, Path]]:
    """``measure_sensitivity`` of a checkpoint / export folder / ONNX on ``data``'s splits; writes
    sensitivity.json and sensitivity.png into ``out_dir``."""
    from fgcli.data.preprocess import PreprocessConfig
    from fgcli.export.onnx import read_onnx_metadata

    if backend not in BACKENDS:
        raise FgcliError(f"unknown INT8 backend '{backend}'", hint=f"use one of: {', '.join(BACKENDS)}")
    onnx_path = fp32_onnx_of(model, out_dir)
    preprocess = PreprocessConfig.from_dict(read_onnx_metadata(onnx_path)["preprocess"])
    calib, validation = calibration_and_validation(data, preprocess, calib_size, val_size)
    result = measure_sensitivity(onnx_path, calib, validation.images, backend=backend, labels=validation.labels,
                                 progress=progress)
    return result, write_sensitivity(result, out_dir, top=top)
