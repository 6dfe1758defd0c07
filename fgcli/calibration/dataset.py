"""The INT8 calibration set: a class-balanced sample of the training split, preprocessed as evaluation is.

Calibration measures activation ranges, so the images must look exactly like what the deployed model
sees (``preprocess_eval``), and every class should be represented: a sample drawn at random from a
long-tailed split can miss the classes whose features produce the largest activations. The set is
stored as calib.npz, read by modelopt PTQ, ONNX Runtime static quantization and the TensorRT calibrator.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fgcli.data import load_split
from fgcli.data.images import BadImageError, load_rgb
from fgcli.data.index import Sample
from fgcli.data.preprocess import PreprocessConfig, preprocess_eval
from fgcli.errors import DataError
from fgcli.utils import atomic_path

# TensorRT's developer guide: "about 500 images are sufficient for calibrating ImageNet classification
# networks". Well below that, max / entropy ranges depend on which images happened to be drawn.
RECOMMENDED_MIN_SIZE = 300
NPZ_KEYS = ("images", "labels", "paths", "preprocess")
CREATE_HINT = "create it with `fgcli calib`"


class CalibrationWarning(UserWarning):
    """The calibration set is usable but smaller or dirtier than asked for."""


@dataclass
class CalibrationSet:
    images: np.ndarray  # (N, 3, S, S) float32, normalised exactly as preprocess_eval does
    labels: np.ndarray  # (N,) int64
    paths: list[str]
    preprocess: PreprocessConfig
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path) -> Path:
        """Write calib.npz atomically (uncompressed: float images barely compress and load faster raw)."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, images=np.ascontiguousarray(self.images, dtype=np.float32),
                     labels=np.asarray(self.labels, dtype=np.int64),
                     paths=np.asarray(self.paths, dtype=str),
                     preprocess=np.asarray(json.dumps(self.preprocess.to_dict())))
        return path

    def batches(self, batch_size: int):
        """Consecutive ``(b, 3, S, S)`` slices; the last one may be shorter."""
        for start in range(0, len(self.images), batch_size):
            yield self.images[start:start + batch_size]


def load_calibration_set(path: str | Path) -> CalibrationSet:
    """Read calib.npz written by ``CalibrationSet.save``; errors name the file and how to recreate it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration set not found: {path}", hint=CREATE_HINT)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise DataError(f"{path} is not an fgcli calibration set: missing {', '.join(missing)}",
                                hint=CREATE_HINT)
            images, labels = npz["images"], npz["labels"]
            paths = [str(p) for p in npz["paths"]]
            preprocess = PreprocessConfig.from_dict(json.loads(str(npz["preprocess"])))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read calibration set {path}: {exc}", hint=CREATE_HINT) from exc
    size = preprocess.img_size
    if images.ndim != 4 or images.shape[1:] != (3, size, size) or images.dtype != np.float32:
        raise DataError(f"{path}: images are {images.dtype} {images.shape}, expected float32 (N, 3, {size}, {size})",
                        hint=CREATE_HINT)
    if len(images) == 0 or len(labels) != len(images) or len(paths) != len(images):
        raise DataError(f"{path}: {len(images)} images, {len(labels)} labels and {len(paths)} paths do not match",
                        hint=CREATE_HINT)
    return CalibrationSet(images, labels.astype(np.int64), paths, preprocess)


def balanced_order(samples: list[Sample], seed: int) -> list[Sample]:
    """Every sample once, round-robin over classes: each class shuffled, classes visited in a shuffled order.

    Any prefix of the result is class-balanced (class counts differ by at most one until a class runs out),
    and a bad image can be replaced by simply reading further.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    labels = sorted(by_class)
    queues = []
    for c in rng.permutation(len(labels)):
        members = by_class[labels[c]]
        queues.append([members[i] for i in rng.permutation(len(members))])
    order = []
    for rank in range(max(map(len, queues), default=0)):
        order.extend(queue[rank] for queue in queues if rank < len(queue))
    return order


def build_calibration_set(data_root: str | Path, preprocess_cfg: PreprocessConfig, size: int, seed: int = 0,
                          split: str = "train", layout: str = "auto",
                          progress: Callable[[int, int], None] | None = None) -> CalibrationSet:
    """Sample ``size`` images from ``split`` class-balanced and deterministically for ``seed``.

    Unreadable images are skipped (listed in ``skipped``) and replaced by the next image of the order.
    Shortfalls are reported in ``warnings`` and as :class:`CalibrationWarning`. ``progress(done, total)``
    is called after each image.
    """
    if size < 1:
        raise DataError(f"calibration size must be at least 1, got {size}", hint="ask for about 500 images")
    data = load_split(data_root, split, layout)
    if not data.samples:
        raise DataError(f"the '{split}' split of {data_root} has no images", hint="check --data and --split")
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        warnings.warn(message, CalibrationWarning, stacklevel=3)

    if len(data.samples) < size:
        note(f"the '{split}' split has only {len(data.samples)} images, fewer than the {size} asked for: using all")
        size = len(data.samples)
    if size < RECOMMENDED_MIN_SIZE:
        note(f"{size} calibration images is few: INT8 ranges may be unstable "
             f"(use at least {RECOMMENDED_MIN_SIZE}; TensorRT suggests about 500)")

    images = np.empty((size, 3, preprocess_cfg.img_size, preprocess_cfg.img_size), dtype=np.float32)
    labels, paths, skipped = [], [], []
    for sample in balanced_order(data.samples, seed):
        if len(paths) == size:
            break
        try:
            image = load_rgb(sample.path, sample.bottom_crop)
        except BadImageError as exc:
            skipped.append((exc.path, exc.reason))
            continue
        images[len(paths)] = preprocess_eval(image, preprocess_cfg)
        labels.append(sample.label)
        paths.append(sample.path)
        if progress is not None:
            progress(len(paths), size)
    if not paths:
        raise DataError(f"none of the {len(skipped)} images of the '{split}' split of {data_root} could be read "
                        f"(first: {skipped[0][0]}: {skipped[0][1]})", hint="run `fgcli data check` on the dataset")
    if skipped:
        note(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}: {skipped[0][1]}")
    if len(paths) < size:
        note(f"only {len(paths)} readable images in the '{split}' split, fewer than the {size} asked for")
    return CalibrationSet(images[:len(paths)], np.asarray(labels, dtype=np.int64), paths, preprocess_cfg,
                          skipped, notes)
