"""Classification metrics from logits, in numpy so deployment runtimes share them with training."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClassificationMetrics:
    """Accumulates logits batch by batch; reads out top-k, per-class accuracy and the confusion matrix."""

    num_classes: int
    _preds: list = field(default_factory=list)
    _labels: list = field(default_factory=list)
    _top5_hits: int = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        logits = np.asarray(logits, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        k = min(5, logits.shape[1])
        topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        self._top5_hits += int((topk == labels[:, None]).any(axis=1).sum())
        self._preds.append(logits.argmax(axis=1))
        self._labels.append(labels)

    @property
    def count(self) -> int:
        return sum(len(x) for x in self._labels)

    @property
    def predictions(self) -> np.ndarray:
        return np.concatenate(self._preds) if self._preds else np.zeros(0, dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=np.int64)

    def top1(self) -> float:
        return float((self.predictions == self.labels).mean()) if self.count else 0.0

    def top5(self) -> float:
        return self._top5_hits / self.count if self.count else 0.0

    def confusion_matrix(self) -> np.ndarray:
        """``cm[true, predicted]`` counts."""
        cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        np.add.at(cm, (self.labels, self.predictions), 1)
        return cm

    def per_class_accuracy(self) -> np.ndarray:
        """Accuracy per true class; NaN for classes absent from the split."""
        cm = self.confusion_matrix()
        totals = cm.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
