"""The Runner interface: one ``run(images) -> logits`` over PyTorch, ONNX Runtime and TensorRT (no torch here).

Evaluation, prediction and the latency report only talk to this interface, so every backend is measured
and used the same way: the caller preprocesses with ``runner.preprocess`` and gets float32 logits back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fgcli.data.preprocess import PreprocessConfig


class Runner(ABC):
    """A loaded model that maps a float32 NCHW batch to float32 ``(B, K)`` logits.

    ``name`` says which backend actually runs (e.g. "onnxruntime:CPUExecutionProvider"), ``precision`` the
    numeric format of the model ("fp32", "fp16", "int8"), ``class_names[k]`` labels logit column ``k``.
    """

    def __init__(self, *, name: str, class_names: list[str], preprocess: PreprocessConfig, precision: str):
        self.name = name
        self.class_names = list(class_names)
        self.preprocess = preprocess
        self.precision = precision

    #: what one timed ``run_staged`` call covers, as the report states it
    timed_region = "host input to host logits (any copy to and from a device included)"

    @abstractmethod
    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits ``(B, K)`` float32 for a preprocessed ``(B, 3, S, S)`` float32 batch."""

    @property
    def placement(self) -> tuple[str, str]:
        """(device, provider) the model runs on, e.g. ("cuda:0", "PyTorch eager"); a runner that uses a GPU
        overrides this default for host-only runners."""
        return "cpu", self.name

    def stage_input(self, images: np.ndarray):
        """``images`` made ready for ``run_staged`` (a runner that keeps its model on a device copies them there
        here, so a timing can leave the copy out)."""
        return images

    def run_staged(self, staged) -> None:
        """One timed call on a ``stage_input`` result; returns once the work is done."""
        self.run(staged)

    def close(self) -> None:
        """Release the backend's resources (sessions, device memory); the runner is unusable afterwards."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        classes = len(self.class_names)
        return f"{type(self).__name__}(name={self.name!r}, precision={self.precision!r}, classes={classes})"
