"""Image loading + preprocessing in a thread pool, batch by batch, for eval and predict (no torch)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from fgcli.data.images import load_rgb
from fgcli.data.preprocess import PreprocessConfig, preprocess_eval
from fgcli.errors import DataError, FgcliError


@dataclass
class ImageBatch:
    images: np.ndarray  # (n, 3, S, S) float32, only the readable images
    indices: list[int]  # positions of those images in the input list
    errors: dict[int, str]  # position -> why the image could not be read


def _load_one(path: str, bottom_crop: int, cfg: PreprocessConfig) -> np.ndarray | str:
    try:
        return preprocess_eval(load_rgb(path, bottom_crop=bottom_crop), cfg)
    except DataError as exc:
        return exc.message if path in exc.message else f"{path}: {exc.message}"
    except OSError as exc:
        return f"{path}: {exc}"
    except MemoryError:  # one image must never take a whole predict or eval run down
        return f"{path}: not enough memory to load and preprocess it"


def iter_image_batches(
    paths: Sequence[str], cfg: PreprocessConfig, batch_size: int, threads: int = 4,
    bottom_crops: Sequence[int] | None = None,
) -> Iterator[ImageBatch]:
    """Yield preprocessed batches in input order; unreadable images are reported, never raised."""
    if batch_size < 1:
        raise FgcliError(f"batch size {batch_size} must be at least 1", hint="pass --batch-size 1 or more")
    crops = bottom_crops or [0] * len(paths)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = range(start, min(start + batch_size, len(paths)))
            results = list(pool.map(lambda i: _load_one(paths[i], crops[i], cfg), chunk))
            arrays, indices, errors = [], [], {}
            for i, result in zip(chunk, results):
                if isinstance(result, str):
                    errors[i] = result
                else:
                    arrays.append(result)
                    indices.append(i)
            size = cfg.img_size
            images = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), dtype=np.float32)
            yield ImageBatch(images, indices, errors)
