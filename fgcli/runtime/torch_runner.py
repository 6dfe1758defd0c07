"""Run an fgcli checkpoint with eager PyTorch: the reference every exported model is compared against."""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.data.preprocess import PreprocessConfig
from fgcli.errors import FgcliError
from fgcli.devices import resolve_torch_device
from fgcli.runtime.base import Runner
from fgcli.utils import optional_import


#: ``autocast`` value -> torch dtype name; mixed precision as in AMP training, on CUDA only
AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


class TorchRunner(Runner):
    """Eval-mode model rebuilt from a checkpoint (a path or an already-loaded checkpoint dict).

    ``autocast`` ("fp16" or "bf16") runs the forward pass under CUDA autocast, so the report can time the
    mixed-precision speed of eager PyTorch; on CPU it is refused rather than silently run in FP32.
    """

    def __init__(self, checkpoint: str | Path | dict[str, Any], device: str = "auto", autocast: str | None = None):
        torch = optional_import("torch", "torch", "Running a PyTorch checkpoint")
        from fgcli.engine.checkpoint import load_checkpoint, model_from_checkpoint  # imports torch

        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise FgcliError(f"unknown autocast precision '{autocast}'",
                             hint=f"use one of: {', '.join(AUTOCAST_DTYPES)}")
        self._torch = torch
        self.device = resolve_torch_device(torch, device)
        if autocast is not None and self.device.type != "cuda":
            raise FgcliError(f"PyTorch {autocast.upper()} autocast runs on a CUDA GPU only, and this runner is on "
                             f"{self.device}", hint="use --device cuda on a machine with an NVIDIA GPU, or FP32 on CPU")
        self._autocast = (partial(torch.autocast, "cuda", dtype=getattr(torch, AUTOCAST_DTYPES[autocast]))
                          if autocast else nullcontext)
        source = "the checkpoint" if isinstance(checkpoint, dict) else checkpoint
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.model = model_from_checkpoint(ckpt, source).to(self.device)
        super().__init__(name=f"torch:{self.device}", class_names=ckpt["class_names"],
                         preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]), precision=autocast or "fp32")

    def run(self, images: np.ndarray) -> np.ndarray:
        batch = self._torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with self._torch.inference_mode(), self._autocast():
            return self.model(batch).float().cpu().numpy()

    def close(self) -> None:
        self.model = None
