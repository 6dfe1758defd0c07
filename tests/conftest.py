"""Shared fixtures: tiny datasets written on the fly (no downloads) and a trained tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_CLASSES = ("alpha", "beta", "gamma")

#: per-method FP32 vs INT8 figures from tests/test_deploy_methods.py, printed at the end of the run
DEPLOY_FIGURES: list[dict] = []


def pytest_terminal_summary(terminalreporter):
    """Print the deployment check's figures, so CI's log holds them, not only pass / fail."""
    if not DEPLOY_FIGURES:
        return
    terminalreporter.section("FP32 vs INT8 per method (synthetic test split, ONNX Runtime CPU)")
    terminalreporter.write_line("method: variant top-1 / agreement with torch-fp32 / p50 ms at batch 1 "
                                "[/ nodes INT8 keeps float]")
    for row in DEPLOY_FIGURES:
        cells = [f"{name} {v['top1']:.3f} / {v['agreement']:.3f} / {v['p50_ms']:.1f}"
                 + ("" if v.get("float_nodes") is None else f" / {v['float_nodes']}")
                 + ("" if "target_met" not in v else " (target met)" if v["target_met"] else " (target NOT met)")
                 + ("" if "calib_method" not in v else f" ({v['calib_method']} ranges)")
                 for name, v in row.items() if name != "method"]
        terminalreporter.write_line(f"{row['method']}: " + "; ".join(cells))


def write_tiny_folder_dataset(root: Path, per_split: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``root/{train,test}/<class>/*.png``: noise images whose mean colour tells the class apart."""
    per_split = per_split or {"train": 8, "test": 4}
    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        for label, name in enumerate(TINY_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = rng.integers(36, 56, size=2)
                pixels = rng.integers(0, 90, size=(h, w, 3))
                pixels[..., label] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_tiny_folder_dataset(tmp_path_factory.mktemp("tiny_dataset"))


def tiny_train_config(data: Path, out: Path, **overrides):
    from fgcli.training.config import TrainConfig

    values = dict(
        method="baseline", data=str(data), out=str(out), backbone="resnet18", img_size=32, resize_size=36,
        epochs=2, batch_size=8, lr=0.05, backbone_lr_scale=1.0, warmup_epochs=1, workers=0, device="cpu", seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """A baseline trained for 2 epochs on the tiny dataset: RUN/best.pt."""
    from fgcli.training.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    train(tiny_train_config(tiny_dataset, out))
    return out / "best.pt"


def block_imports_script(*packages: str) -> str:
    """Python source that makes every import of ``packages`` (and their submodules) fail, as on a machine
    without them: prepended to a ``python -c`` script, or written as a ``sitecustomize.py``."""
    return f"""
import sys
class BlockImports:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {set(packages)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked for this test)", name=name)
sys.meta_path.insert(0, BlockImports())
"""


def import_blocker(folder: Path, *packages: str) -> Path:
    """A folder whose sitecustomize.py makes ``packages`` unimportable in a subprocess that has it on its path."""
    folder = folder / ("block-" + "-".join(packages))
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(block_imports_script(*packages))
    return folder


#: prepended to a ``python -c`` script: every ``import torch`` in it fails, as on a Jetson without PyTorch
BLOCK_TORCH = block_imports_script("torch")

#: this checkout, put first on the PYTHONPATH of the console-script subprocesses
REPO_ROOT = Path(__file__).resolve().parents[1]


def fgcli_script() -> str:
    """The installed ``fgcli`` console script: beside this Python (a virtualenv's bin/), else on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).with_name("fgcli")
    found = str(beside) if beside.is_file() else shutil.which("fgcli")
    if not found:
        pytest.skip("the fgcli console script is not installed (pip install -e .)")
    return found


def fgcli_env(*first_on_path: Path, **variables: str) -> dict[str, str]:
    """The environment of a console-script subprocess: this checkout (after ``first_on_path``) imported as
    fgcli, no COLUMNS (so output is laid out as in a log file), plus ``variables``."""
    import os

    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, first_on_path), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return {**env, **variables}


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tiny_dataset, tmp_path_factory) -> Path:
    """The tiny checkpoint exported to ONNX (checked against PyTorch on the tiny test images)."""
    from fgcli.export.pipeline import ExportOptions, export_all

    out = tmp_path_factory.mktemp("tiny_export")
    summary = export_all(tiny_checkpoint, ExportOptions(out_dir=out, check_data=str(tiny_dataset)))
    return Path(summary.artifacts["onnx-fp32"]["path"])
