"""Predict every image under a folder with any model kind and write a CSV (and JSON) of the top-k (no torch)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fgcli.engine.batches import iter_image_batches
from fgcli.engine.metrics import softmax
from fgcli.errors import FgcliError
from fgcli.utils import write_text_atomic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Prediction:
    path: str
    classes: list[str]
    probabilities: list[float]
    error: str = ""


def find_images(folder: str | Path) -> list[str]:
    """Every file with an image suffix under ``folder``, recursively, sorted."""
    folder = Path(folder)
    if folder.is_file():
        return [str(folder)]
    if not folder.is_dir():
        raise FgcliError(f"{folder} is neither a folder nor a file", hint="pass a folder of images")
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def predict_paths(
    runner, paths: list[str], topk: int = 5, batch_size: int = 32, threads: int = 4,
    progress: Callable[[int], None] | None = None,
) -> list[Prediction]:
    """Top-k class names and probabilities per image; unreadable images get an ``error`` instead."""
    return [p for batch in iter_predictions(runner, paths, topk, batch_size, threads, progress) for p in batch]


def iter_predictions(
    runner, paths: list[str], topk: int = 5, batch_size: int = 32, threads: int = 4,
    progress: Callable[[int], None] | None = None,
) -> Iterator[list[Prediction]]:
    """``predict_paths`` batch by batch, in input order: a caller stopped half-way (Ctrl-C) keeps the
    predictions of the batches already yielded."""
    k = max(1, min(topk, len(runner.class_names)))
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
