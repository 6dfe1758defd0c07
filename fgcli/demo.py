"""`fgcli demo`: the whole pipeline on the synthetic dataset, small enough for 2 CPU cores.

Generate the dataset, train with the `small` recipe, evaluate, export ONNX (checked against
PyTorch), quantize to INT8 (modelopt Q/DQ and ONNX Runtime), and evaluate every variant with
the same code, so the cost of INT8 in accuracy is on screen at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fgcli.engine.config import TrainConfig, resolve_config

DEMO_CLASSES = 10
DEMO_PER_CLASS = 80


@dataclass
class VariantResult:
    name: str
    path: str
    runner: str
    top1: float
    top5: float
    agreement_with_fp32: float


@dataclass
class DemoResult:
    method: str
    run: Path
    variants: list[VariantResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ensure_synthetic(data: Path, classes: int, per_class: int, seed: int = 0, progress=None) -> Path:
    """Generate the synthetic dataset once; a later demo reuses it (images.txt is written last)."""
    from fgcli.data.synth import generate_synthetic

    if not (data / "images.txt").exists():
        generate_synthetic(data, num_classes=classes, per_class=per_class, seed=seed, progress=progress)
    return data


def demo_config(method: str, data: Path, out: Path, epochs: int | None = None, seed: int = 0) -> TrainConfig:
    return resolve_config({"method": method, "data": str(data), "out": str(out / "runs" / method),
                           "recipe": "small", "epochs": epochs, "seed": seed})


def export_and_evaluate(run: Path, data: Path, step=lambda message: None) -> DemoResult:
    """Export ``run/best.pt`` (FP32 ONNX, modelopt INT8, ORT INT8) and evaluate every variant on the test split."""
    from fgcli.data import load_split
    from fgcli.engine.evaluate import evaluate_runner
    from fgcli.errors import MissingDependencyError
    from fgcli.export.pipeline import ExportOptions, export_all
    from fgcli.runtime import open_runner

    checkpoint = run / "best.pt"
    result = DemoResult(method=run.name, run=run)
    variants = {"torch-fp32": checkpoint}
    try:
        summary = export_all(checkpoint, ExportOptions(out_dir=run / "export", int8=True, int8_backend="both",
                                                       calib_data=str(data), calib_size=300), step=step)
        variants["onnx-fp32"] = Path(summary.artifacts["onnx-fp32"]["path"])
        variants["onnx-int8-modelopt"] = Path(summary.artifacts["onnx-int8-modelopt"]["output_path"])
        variants["onnx-int8-ort"] = Path(summary.artifacts["onnx-int8-ort"]["output_path"])
    except MissingDependencyError as exc:
        result.notes.append(f"export skipped: {exc}")
    split = load_split(data, "test")
    reference = None
    for name, path in variants.items():
        step(f"evaluating {name}")
        with open_runner(path, device="cpu") as runner:
            evaluation = evaluate_runner(runner, split, model_name=str(path))
        predictions = evaluation.predictions
        reference = reference or predictions
        agreement = sum(a == b for a, b in zip(predictions, reference)) / max(1, len(reference))
        result.variants.append(VariantResult(name, str(path), evaluation.runner, evaluation.top1, evaluation.top5,
                                             agreement))
    (run / "demo.json").write_text(json.dumps(
        {"method": result.method, "variants": [v.__dict__ for v in result.variants], "notes": result.notes},
        indent=2) + "\n")
    return result
