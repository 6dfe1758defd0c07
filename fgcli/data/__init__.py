"""Datasets: parsers for the official layouts, image loading, preprocessing (torch-free at import)."""

from __future__ import annotations

from pathlib import Path

from fgcli.data.index import DatasetSplit, Sample
from fgcli.data.parsers.detect import LAYOUT_NAMES, LAYOUTS, dataset_splits, detect_layout
from fgcli.errors import DataError


def load_split(root: str | Path, split: str = "train", layout: str = "auto", **options) -> DatasetSplit:
    """Parse one split of a dataset; ``layout="auto"`` detects it. Options: ``level`` for FGVC-Aircraft."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "cub":
        from fgcli.data.parsers.cub import load_cub as loader
    elif layout == "cars":
        from fgcli.data.parsers.cars import load_cars as loader
    elif layout == "aircraft":
        from fgcli.data.parsers.aircraft import load_aircraft as loader
    elif layout == "folder":
        from fgcli.data.parsers.folder import load_folder as loader
    else:
        raise DataError(f"unknown dataset layout '{layout}'", hint=f"use auto or one of: {', '.join(LAYOUTS)}")
    return loader(root, split, **options)


def describe_layout(root: str | Path, layout: str = "auto", **options) -> str:
    """One line for ``--dataset auto``: which layout, how many classes and images per split."""
    layout = detect_layout(root) if layout == "auto" else layout
    splits = [load_split(root, split, layout, **options) for split in dataset_splits(root, layout)]
    counts = " / ".join(f"{len(data.samples)} {data.split}" for data in splits)
    note = f" ({splits[0].note})" if splits[0].note else ""
    return f"{LAYOUT_NAMES[layout]} layout: {splits[0].num_classes} classes, {counts} images{note}"


__all__ = ["DatasetSplit", "Sample", "LAYOUTS", "LAYOUT_NAMES", "dataset_splits", "detect_layout", "load_split",
           "describe_layout"]
