"""Checkpoints: one self-describing dict, written atomically, read without executing pickled code."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

import fgcli
from fgcli.training.qat import is_qat_checkpoint, restore_quantizers
from fgcli.errors import FgcliError
from fgcli.models import create_model
from fgcli.torch_files import torch_load_safely
from fgcli.utils import atomic_path

#: keys every checkpoint carries so that later commands need no flags repeated
REQUIRED_KEYS = ("method", "backbone", "num_classes", "class_names", "preprocess", "model")
CHECKPOINT_HINT = "use RUN/best.pt or RUN/last.pt as written by fgcli train (copy it again if it was cut short)"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; adds the fgcli version."""
    state = {"fgcli_version": fgcli.__version__, **state}
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch reports a failed write (a full disk) as "enforce fail at ..."
            free_mb = shutil.disk_usage(tmp.parent).free / 1e6
            raise FgcliError(f"cannot write {path}: torch.save failed with {free_mb:.1f} MB free in {tmp.parent} "
                             f"({str(exc).strip()[:200]}); the previous file, if any, is unchanged",
                             hint="free some space there (a full disk fails like this), or pass another --out") from None
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it is an fgcli checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FgcliError(f"checkpoint not found: {path}", hint="pass RUN/best.pt or RUN/last.pt written by fgcli train")
    ckpt = torch_load_safely(path, hint=CHECKPOINT_HINT)
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise FgcliError(f"{path} is not an fgcli checkpoint (missing: {', '.join(missing)})", hint=CHECKPOINT_HINT)
    names = ckpt["class_names"]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise FgcliError(f"{path}: class_names is {type(names).__name__} {names!r:.80}, not a list of names",
                         hint=CHECKPOINT_HINT)
    if len(ckpt["class_names"]) != ckpt["num_classes"]:
        raise FgcliError(f"{path} lists {len(ckpt['class_names'])} class names for {ckpt['num_classes']} classes",
                         hint=CHECKPOINT_HINT)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], source: str | os.PathLike = "the checkpoint"):
    """Rebuild the model a checkpoint describes (with its INT8 quantizers for a QAT run), load its weights, and
    return it in eval mode."""
    method = ckpt["method"]
    try:
        model = create_model(method, ckpt["num_classes"], backbone=ckpt["backbone"], **ckpt.get("model_kwargs", {}))
        if is_qat_checkpoint(ckpt):  # a fgcli train --qat run: its fake INT8 quantizers first, their ranges are weights
            model = restore_quantizers(model, ckpt["qat"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # options, keys or shapes this model no longer has
        first_lines = " ".join(str(exc).split())[:300]
        raise FgcliError(
            f"the weights in {source} do not fit a {method} model with a {ckpt['backbone']} backbone and "
            f"{ckpt['num_classes']} classes (written by fgcli {ckpt.get('fgcli_version', '(unknown version)')}, "
            f"this is fgcli {fgcli.__version__}): {first_lines}",
            hint=f"{CHECKPOINT_HINT}; if the {method} model changed since that version (CLAN was rebuilt from its "
                 "paper's figures), retrain it with fgcli train",
        ) from None
    return model.eval()
