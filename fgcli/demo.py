"""`fgcli demo`: the whole pipeline on the synthetic dataset, small enough for 2 CPU cores.

Generate the dataset, train with the `small` recipe, then run `fgcli report` on the model: export ONNX
(checked against PyTorch), quantize to INT8 (modelopt Q/DQ and ONNX Runtime), evaluate and time every
variant with the same code, so the cost and the gain of INT8 are on screen at the end.
"""

from __future__ import annotations

from pathlib import Path

from fgcli.training.config import TrainConfig, resolve_config

DEMO_CLASSES = 10
DEMO_PER_CLASS = 80
#: fgcli report settings of the demo: few timed calls, so the whole demo stays near 3.5 minutes on 2 cores
DEMO_REPORT_OPTIONS = {"batch_sizes": (1, 8), "iterations": 30, "warmup": 3, "calib_size": 300}


def ensure_synthetic(data: Path, classes: int, per_class: int, seed: int = 0, progress=None) -> Path:
    """Generate the synthetic dataset once; a later demo reuses it (images.txt is written last)."""
    from fgcli.data.synth import generate_synthetic

    if not (data / "images.txt").exists():
        generate_synthetic(data, num_classes=classes, per_class=per_class, seed=seed, progress=progress)
    return data


def demo_config(method: str, data: Path, out: Path, epochs: int | None = None, seed: int = 0) -> TrainConfig:
    """The demo's run of ``method``; a demo run again retrains into its own OUT/runs/METHOD (overwrite)."""
    return resolve_config({"method": method, "data": str(data), "out": str(out / "runs" / method),
                           "recipe": "small", "epochs": epochs, "seed": seed, "overwrite": True})
