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

    @abstractmethod
    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits ``(B, K)`` float32 for a preprocessed ``(B, 3, S, S)`` float32 batch."""

    def close(self) -> None:
        """Release the backend's resources (sessions, device memory); the runner is unusable afterwards."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        classes = len(self.class_names)
        return f"{type(self).__name__}(name={self.name!r}, precision={self.precision!r}, classes={classes})"
