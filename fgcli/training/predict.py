"""Predict every image under a folder with any model kind and write a CSV (and JSON) of the top-k (no torch)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fgcli.data.images import find_image_files
from fgcli.training.batches import iter_image_batches
from fgcli.training.metrics import softmax
from fgcli.errors import FgcliError
from fgcli.utils import write_text_atomic

DEFAULT_TOPK = 5


@dataclass
class Prediction:
    path: str
    classes: list[str]
    probabilities: list[float]
    error: str = ""


def find_images(folder: str | Path, skipped: list[str] | None = None) -> list[str]:
    """``folder`` itself when it is a file, else every image file under it (``find_image_files``), sorted;
    the other files go to ``skipped``, so the caller can say what it left out."""
    folder = Path(folder)
    if folder.is_file():
        return [str(folder)]
    if not folder.is_dir():
        raise FgcliError(f"{folder} is neither a folder nor a file", hint="pass a folder of images")
    return sorted(find_image_files(folder, skipped))


def resolve_topk(topk: int | None, class_names: list[str]) -> int:
    """``None``: 5, or every class when the model has fewer; an explicit ``topk`` must fit the model."""
    if topk is None:
        return min(DEFAULT_TOPK, len(class_names))
    if not 1 <= topk <= len(class_names):
        raise FgcliError(f"top-k {topk} is not between 1 and the {len(class_names)} classes this model has",
                         hint=f"pass --topk between 1 and {len(class_names)}, or leave it out")
    return topk


def predict_paths(
    runner, paths: list[str], topk: int | None = None, batch_size: int = 32, threads: int = 4,
    progress: Callable[[int], None] | None = None,
) -> list[Prediction]:
    """Top-k class names and probabilities per image; unreadable images get an ``error`` instead."""
    return [p for batch in iter_predictions(runner, paths, topk, batch_size, threads, progress) for p in batch]


def iter_predictions(
    runner, paths: list[str], topk: int | None = None, batch_size: int = 32, threads: int = 4,
    progress: Callable[[int], None] | None = None,
) -> Iterator[list[Prediction]]:
    """``predict_paths`` batch by batch, in input order: a caller stopped half-way (Ctrl-C) keeps the
    predictions of the batches already yielded."""
    k = resolve_topk(topk, runner.class_names)
    if not paths:
        raise FgcliError("no images to predict", hint="pass a folder holding .jpg / .png / ... files")
    for batch in iter_image_batches(paths, runner.preprocess, batch_size, threads):
        predictions = {i: Prediction(paths[i], [], [], error=reason) for i, reason in batch.errors.items()}
        if batch.indices:
            probs = softmax(runner.run(batch.images))
            order = np.argsort(-probs, axis=1)[:, :k]
            for row, i in enumerate(batch.indices):
                predictions[i] = Prediction(paths[i], [runner.class_names[j] for j in order[row]],
                                            [float(probs[row, j]) for j in order[row]])
        if progress:
            progress(len(batch.indices) + len(batch.errors))
        yield [predictions[i] for i in sorted(predictions)]


def write_predictions_csv(path: str | Path, predictions: list[Prediction], topk: int) -> Path:
    """One row per image: path, class_1, prob_1, ..., class_k, prob_k, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["path"]
    for rank in range(1, topk + 1):
        header += [f"class_{rank}", f"prob_{rank}"]
    writer.writerow(header + ["error"])
    for p in predictions:
        row: list = [p.path]
        for rank in range(topk):
            if rank < len(p.classes):
                row += [p.classes[rank], f"{p.probabilities[rank]:.6f}"]
            else:
                row += ["", ""]
        writer.writerow(row + [p.error])
    return write_text_atomic(path, buffer.getvalue())


def predictions_json(predictions: list[Prediction]) -> str:
    return json.dumps(
        [{"path": p.path, "classes": p.classes, "probabilities": p.probabilities, "error": p.error or None}
         for p in predictions],
        indent=2,
    )
