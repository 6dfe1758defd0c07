"""One comparator of model outputs: how far a model's logits are from a reference's, and the tolerance rule.

Every place that asks "is this model still the same model?" measures here, so the numbers mean the same
everywhere: the export check (ONNX against PyTorch, FP16 against FP32, a QAT Q/DQ graph against its fake-quantized
model), the INT8 sensitivity and mixed-precision search (INT8 against FP32), and the report (each variant's
predicted classes against the reference's). numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fgcli.errors import FgcliError

#: which difference a tolerance bounds: the largest |logit difference| (FP32, FP16) or its RMS (QAT Q/DQ, where
#: one INT8 rounding step moves single logits far while the model as a whole stays close)
METRICS = ("max", "rms")


@dataclass(frozen=True)
class Comparison:
    """A model's logits against a reference's on the same ``n_images`` images."""

    agreement: float  # fraction of images with the reference's top-1 class
    kl: float  # mean KL(reference softmax || model softmax), nats
    logit_rmse: float  # RMS logit difference
    top1: float | None = None  # the model's accuracy against the labels, when known
    max_abs_diff: float = 0.0  # largest |logit difference|
    n_images: int = 0

    def difference(self, metric: str) -> float:
        """The difference a tolerance of ``metric`` ("max" or "rms") bounds."""
        return self.logit_rmse if metric == "rms" else self.max_abs_diff


def compare_logits(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None = None) -> Comparison:
    """Agreement, KL, max / RMS difference (and top-1 against ``labels``) of ``logits`` against ``reference``,
    both (N, C)."""
    if reference.shape != logits.shape:
        raise FgcliError(f"logits of shape {logits.shape} cannot be compared with the reference's {reference.shape}")
    difference = reference.astype(np.float64) - logits
    log_p, log_q = _log_softmax(reference), _log_softmax(logits)
    kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))
    return Comparison(
        agreement=top1_agreement(reference.argmax(1), logits.argmax(1)), kl=max(kl, 0.0),
        logit_rmse=float(np.sqrt(np.mean(difference ** 2))),
        top1=None if labels is None else float(np.mean(logits.argmax(1) == labels)),
        max_abs_diff=float(np.abs(difference).max()), n_images=len(reference))


def top1_agreement(reference: Sequence, predictions: Sequence) -> float:
    """Fraction of images on which two models predict the same class (indices or class names)."""
    reference, predictions = np.asarray(reference), np.asarray(predictions)
    if reference.shape != predictions.shape:
        raise FgcliError(f"{len(predictions)} predictions cannot be compared with {len(reference)} reference ones")
    return float(np.mean(reference == predictions))


def logit_tolerance(reference: np.ndarray, atol: float, rtol: float) -> float:
    """``atol``, or ``rtol`` of the largest reference |logit| when that is larger: rounding grows with the logits."""
    return max(atol, rtol * float(np.abs(reference).max()))


def within_tolerance(comparison: Comparison, tolerance: float, metric: str = "max", strict_top1: bool = True) -> bool:
    """The one tolerance rule: the ``metric`` difference is at most ``tolerance`` (NaN fails), and with
    ``strict_top1`` every image keeps the reference's top-1 class."""
    if metric not in METRICS:
        raise FgcliError(f"unknown tolerance metric '{metric}'", hint=f"use one of: {', '.join(METRICS)}")
    return comparison.difference(metric) <= tolerance and (not strict_top1 or comparison.agreement >= 1.0)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
