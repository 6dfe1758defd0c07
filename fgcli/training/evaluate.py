"""Evaluate any model kind (.pt, .onnx, .engine) on a dataset split with one code path (no torch)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fgcli.data.index import DatasetSplit
from fgcli.training.batches import iter_image_batches
from fgcli.training.metrics import ClassificationMetrics
from fgcli.errors import DataError, FgcliError


@dataclass
class EvalResult:
    model: str
    runner: str
    split: str
    class_names: list[str]
    top1: float
    top5: float
    count: int
    per_class: list[float]
    confusion: list[list[int]]
    bad_images: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    predictions: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        per_class = {
            name: (None if np.isnan(acc) else acc) for name, acc in zip(self.class_names, self.per_class)
        }
        return {
            "model": self.model, "runner": self.runner, "split": self.split, "top1": self.top1,
            "top5": self.top5, "count": self.count, "per_class_accuracy": per_class,
            "confusion_matrix": self.confusion, "class_names": self.class_names,
            "bad_images": self.bad_images, "seconds": self.seconds,
        }


def label_mapping(model_classes: list[str], data_classes: list[str], data_root: str) -> np.ndarray:
    """Dataset label -> model output index, matched by class name (orders may differ)."""
    index = {name: i for i, name in enumerate(model_classes)}
    missing = [name for name in data_classes if name not in index]
    if missing:
        raise DataError(
            f"{len(missing)} classes of {data_root} are unknown to the model (e.g. '{missing[0]}')",
            hint="evaluate on the dataset the model was trained on (class names must match)",
        )
    return np.array([index[name] for name in data_classes], dtype=np.int64)


def evaluate_runner(
    runner, split: DatasetSplit, batch_size: int = 32, threads: int = 4,
    progress: Callable[[int], None] | None = None, model_name: str = "",
) -> EvalResult:
    """Top-1 / top-5 / per-class accuracy / confusion matrix of ``runner`` on ``split``."""
    if not split.samples:
        raise DataError(f"the {split.split} split of {split.root} has no images")
    to_model = label_mapping(runner.class_names, split.class_names, str(split.root))
    paths = [s.path for s in split.samples]
    labels = to_model[np.array([s.label for s in split.samples], dtype=np.int64)]
    metrics = ClassificationMetrics(len(runner.class_names))
    bad: dict[str, str] = {}
    start = time.perf_counter()
    for batch in iter_image_batches(
        paths, runner.preprocess, batch_size, threads, [s.bottom_crop for s in split.samples]
    ):
        bad.update({paths[i]: reason for i, reason in batch.errors.items()})
        if batch.indices:
            logits = runner.run(batch.images)
            if logits.shape != (len(batch.indices), len(runner.class_names)):
                raise FgcliError(f"{runner.name} returned logits of shape {logits.shape}")
            metrics.update(logits, labels[batch.indices])
        if progress:
            progress(len(batch.indices) + len(batch.errors))
    if metrics.count == 0:
        raise DataError(f"none of the {len(paths)} images of {split.root} could be read", hint="run fgcli data check")
    return EvalResult(
        model=model_name, runner=runner.name, split=split.split, class_names=list(runner.class_names),
        top1=metrics.top1(), top5=metrics.top5(), count=metrics.count,
        per_class=[float(x) for x in metrics.per_class_accuracy()],
        confusion=metrics.confusion_matrix().tolist(), bad_images=bad,
        seconds=time.perf_counter() - start, predictions=metrics.predictions.tolist(),
    )
