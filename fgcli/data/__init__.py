"""Datasets: parsers for the official layouts, image loading, preprocessing (torch-free at import)."""

from __future__ import annotations

from pathlib import Path

from fgcli.data.index import DatasetSplit, Sample
from fgcli.errors import DataError

LAYOUTS = ("cub", "cars", "aircraft", "folder")
LAYOUT_NAMES = {"cub": "CUB-200-2011", "cars": "Stanford Cars", "aircraft": "FGVC-Aircraft", "folder": "class folders"}


def detect_layout(root: str | Path) -> str:
    """Which official layout ``root`` holds; an error listing what was looked for when none matches."""
    from fgcli.data.parsers.aircraft import find_aircraft_root
    from fgcli.data.parsers.cars import find_cars_root
    from fgcli.data.parsers.cub import find_cub_root
    from fgcli.data.parsers.folder import class_dirs, split_dirs

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}", hint="pass --data with an existing folder")
    if find_cub_root(root):
        return "cub"
    if find_cars_root(root):
        return "cars"
    if find_aircraft_root(root):
        return "aircraft"
    if split_dirs(root) or class_dirs(root):
        return "folder"
    raise DataError(
        f"cannot tell the layout of {root}",
        hint="expected CUB-200-2011 (images.txt), Stanford Cars (devkit/cars_meta.mat), "
             "FGVC-Aircraft (data/variants.txt) or class folders (ROOT/<class>/*.jpg)",
    )


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


def describe_layout(root: str | Path, layout: str = "auto", splits: tuple[str, ...] = ("train", "test")) -> str:
    """One line for ``--dataset auto``: which layout, how many classes and images per split."""
    layout = detect_layout(root) if layout == "auto" else layout
    parts, classes = [], 0
    for split in splits:
        try:
            data = load_split(root, split, layout)
        except DataError:
            continue
        classes = data.num_classes
        parts.append(f"{len(data.samples)} {split}")
    return f"{LAYOUT_NAMES[layout]} layout: {classes} classes, {' / '.join(parts)} images"


__all__ = ["DatasetSplit", "Sample", "LAYOUTS", "detect_layout", "load_split", "describe_layout"]
