"""A plain class-per-folder tree: ``ROOT/<class>/*`` or ``ROOT/{train,val,test}/<class>/*``.

Re-packaged datasets often wrap the tree in folders of the same name (Stanford Cars from Kaggle:
``car_data/car_data/{train,test}/<class>/``); up to two such single-folder wrappers are stepped into.
"""

from __future__ import annotations

import os
from pathlib import Path

from fgcli.data.images import IMAGE_SUFFIXES, find_image_files
from fgcli.data.index import DatasetSplit, Sample, require_samples
from fgcli.errors import DataError

SPLIT_DIRS = ("train", "val", "test", "trainval")
WRAPPER_DEPTH = 2
FLAT_TREE_NOTE = "no train/val/test folders: every split is the whole tree"


def split_dirs(root: Path) -> list[str]:
    return [name for name in SPLIT_DIRS if (root / name).is_dir()]


def class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _holds_images(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES for e in entries)


def find_folder_root(root: str | Path) -> Path | None:
    """The folder holding split folders (through single-folder wrappers), or ``root`` if it has class folders
    with images in them; None when it is neither."""
    root = Path(root)
    candidate = root
    for _ in range(WRAPPER_DEPTH + 1):
        if split_dirs(candidate):
            return candidate
        children = class_dirs(candidate)
        if len(children) != 1 or _holds_images(candidate):
            break
        candidate = candidate / children[0]
    if any(_holds_images(root / name) for name in class_dirs(root)):
        return root
    return None


def load_folder(root: str | Path, split: str = "train") -> DatasetSplit:
    """Class names are the sorted folder names, shared by every split."""
    base = find_folder_root(root)
    if base is None:
        raise DataError(f"{root} has neither train/val/test folders nor class folders with images in them",
                        hint="lay images out as ROOT/<class>/*.jpg or ROOT/{train,test}/<class>/*.jpg")
    splits = split_dirs(base)
    note = ""
    if splits:
        if split not in splits:
            raise DataError(f"{base} has no '{split}' folder (found: {', '.join(splits)})",
                            hint=f"pass --split with one of: {', '.join(splits)}")
        names = sorted({name for s in splits for name in class_dirs(base / s)})
        images = base / split
    else:
        names = class_dirs(base)
        images = base
        note = FLAT_TREE_NOTE
    if not names:
        raise DataError(f"{images} has no class folders", hint="lay images out as ROOT/<class>/*.jpg")
    skipped: list[str] = []
    samples = [
        Sample(path, label)
        for label, name in enumerate(names) if (images / name).is_dir()
        for path in sorted(find_image_files(images / name, skipped), key=Path)
    ]
    if skipped:
        named = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        note = "; ".join(filter(None, [note, f"{len(skipped)} files that are not images PIL reads are left out: "
                                             f"{named}"]))
    suffixes = " ".join(sorted(IMAGE_SUFFIXES))
    return require_samples(DatasetSplit(base, "folder", split, names, samples, note),
                           f"no image files ({suffixes}) in the class folders under {images}")
