"""Checkpoints: one self-describing dict, written atomically, read without executing pickled code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

import fgcli
from fgcli.errors import FgcliError
from fgcli.utils import atomic_path

#: keys every checkpoint carries so that later commands need no flags repeated
REQUIRED_KEYS = ("method", "backbone", "num_classes", "class_names", "preprocess", "model")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; adds the fgcli version."""
    state = {"fgcli_version": fgcli.__version__, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it is an fgcli checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FgcliError(f"checkpoint not found: {path}", hint="pass RUN/best.pt or RUN/last.pt written by fgcli train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FgcliError(
            f"could not load checkpoint {path}: {exc}",
            hint="fgcli loads checkpoints with weights_only=True; use a file written by fgcli train",
        ) from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise FgcliError(f"{path} is not an fgcli checkpoint (missing: {', '.join(missing)})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]):
    """Rebuild the model a checkpoint describes, load its weights, and return it in eval mode."""
    from fgcli.models import create_model

    method = ckpt["method"]
    try:
        model = create_model(method, ckpt["num_classes"], backbone=ckpt["backbone"], **ckpt.get("model_kwargs", {}))
        model.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError) as exc:  # options or layers this fgcli's model no longer has
        raise FgcliError(
            f"the {method} checkpoint written by fgcli {ckpt.get('fgcli_version', '(unknown version)')} does not fit "
            f"fgcli {fgcli.__version__}'s {method} model: {str(exc).splitlines()[0]}",
            hint=f"the {method} model changed since that version (CLAN was rebuilt from its paper's figures); "
                 "retrain it with fgcli train",
        ) from exc
    return model.eval()
