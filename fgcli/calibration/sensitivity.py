"""Which nodes INT8 hurts: per-node sensitivity measured end to end on a validation subset.

For every node a quantizer turns into INT8 (a Conv with its folded bias and fused activation, a MatMul / Gemm,
an Add, a pooling ...), two Q/DQ models are built with the backend's own node selection (``nodes_to_quantize``
/ ``nodes_to_exclude`` of ONNX Runtime and modelopt, see ``int8_builder``): the node quantized alone (what it
costs) and every node but it quantized (what keeping it alone in float recovers). Both are compared with the
FP32 logits (``runtime.comparator``) on a validation subset disjoint from the calibration images: top-1
agreement, KL(FP32 || INT8) of the softmax and the RMS logit error. The FP32 logits are computed once; ONNX
Runtime calibrates once (its calibration cache) and reuses the ranges for every model, modelopt calibrates each
model in its child interpreter (slower). ``mixed_precision`` builds on the ranking.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fgcli.calibration import LAYOUT_OP_TYPES, NothingQuantizedError, QuantResult
from fgcli.calibration.dataset import CalibrationSet, CalibrationWarning, build_calibration_set
from fgcli.calibration.int8_builder import Int8Builder
from fgcli.data import dataset_splits, detect_layout
from fgcli.errors import FgcliError
from fgcli.runtime.comparator import Comparison, compare_logits
from fgcli.runtime.onnx_meta import load_onnx
from fgcli.runtime.onnx_runner import onnxruntime_logits
from fgcli.utils import write_json_atomic

#: splits a validation subset is drawn from, best first (calibration always samples the train split)
VALIDATION_SPLITS = ("val", "test")
SENSITIVITY_JSON = "sensitivity.json"


@dataclass
class NodeSensitivity:
    """One node: the error with it quantized alone, and the error of full INT8 with it alone kept in float."""

    name: str
    op_type: str
    alone: Comparison | None  # None: not measured (the greedy loop needs only the float side) or not
    # quantizable alone (ONNX Runtime quantizes a MaxPool only after a quantized node)
    kept_float: Comparison
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
    full_int8: Comparison
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
    reference = onnxruntime_logits(onnx_path, images)
    with tempfile.TemporaryDirectory(prefix="fgcli-sensitivity-") as work:
        builder = builder or Int8Builder(onnx_path, backend, calib, work, fp16=fp16, calib_method=calib_method,
                                         device=device)
        full = builder.build(Path(work) / "full.onnx")
        full_error = compare_logits(reference, onnxruntime_logits(full.output_path, images), labels)
        op_types = _op_types(full.output_path)
        groups = node_groups(full, op_types)
        nodes = []
        for name in groups:
            alone_error = None
            if alone:
                try:
                    alone_model = builder.build(Path(work) / "alone.onnx", only=[name])
                    alone_error = compare_logits(reference, onnxruntime_logits(alone_model.output_path, images), labels)
                except NothingQuantizedError:
                    pass  # e.g. a MaxPool: quantized only where its input already is, never alone
            kept = builder.build(Path(work) / "kept.onnx", extra_float=[name])
            kept_error = compare_logits(reference, onnxruntime_logits(kept.output_path, images), labels)
            nodes.append(NodeSensitivity(name, op_types.get(name, "?"), alone_error, kept_error,
                                         kept_error.agreement - full_error.agreement, full_error.kl - kept_error.kl))
            if progress is not None:
                progress(name, len(groups))
        constraints = builder.constraint_float_nodes()
    nodes.sort(key=lambda node: -node.score)
    return SensitivityResult(str(onnx_path), backend, len(calib), len(images), full_error, nodes, constraints,
                             time.perf_counter() - start)


def write_sensitivity(result: SensitivityResult, out_dir: str | Path) -> Path:
    """``sensitivity.json`` in ``out_dir`` (the CLI draws its bar chart, sensitivity.png)."""
    return write_json_atomic(Path(out_dir) / SENSITIVITY_JSON, result.to_dict())


def node_groups(full: QuantResult, op_types: dict[str, str]) -> list[str]:
    """The nodes of a full INT8 model that can be quantized or kept float on their own: its quantized nodes
    but the layout ops (Flatten, Reshape ...), which only pass their neighbours' Q/DQ through. Each stands for
    its group: quantizing a Conv alone also quantizes its fused ReLU and its bias."""
    return [name for name in full.quantized_nodes if op_types.get(name) not in LAYOUT_OP_TYPES]


def _op_types(path: Path) -> dict[str, str]:
    return {node.name: node.op_type for node in load_onnx(path).graph.node}


def validation_subset(data_root: str | Path, preprocess, size: int, seed: int = 0,
                      layout: str = "auto") -> CalibrationSet:
    """A class-balanced sample of the dataset's val split (else its test split), preprocessed for evaluation."""
    layout = detect_layout(data_root) if layout == "auto" else layout
    splits = dataset_splits(data_root, layout)
    split = next((name for name in VALIDATION_SPLITS if name in splits), None)
    if split is None:
        raise FgcliError(f"{data_root} has no val or test split to validate INT8 on (splits: {', '.join(splits)})",
                         hint="the validation images must be disjoint from the train split that calibrates")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # the "few calibration images" advice is not for this
        return build_calibration_set(data_root, preprocess, size=size, seed=seed, split=split, layout=layout)


def calibration_and_validation(data_root: str | Path, preprocess, calib_size: int,
                               val_size: int) -> tuple[CalibrationSet, CalibrationSet]:
    """The calibration set (train split) and the validation subset (val / test split), checked disjoint."""
    calib = build_calibration_set(data_root, preprocess, size=calib_size)
    validation = validation_subset(data_root, preprocess, size=val_size)
    check_validation(validation.images, calib, validation.paths)
    return calib, validation
