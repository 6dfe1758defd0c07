"""A plain class-per-folder tree: ``ROOT/<class>/*`` or ``ROOT/{train,val,test}/<class>/*``."""

from __future__ import annotations

from pathlib import Path

from fgcli.data.index import DatasetSplit, Sample
from fgcli.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_DIRS = ("train", "val", "test", "trainval")


def split_dirs(root: Path) -> list[str]:
    return [name for name in SPLIT_DIRS if (root / name).is_dir()]


def class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_folder(root: str | Path, split: str = "train") -> DatasetSplit:
    """Class names are the sorted folder names, shared by every split."""
    root = Path(root)
    splits = split_dirs(root)
    note = ""
    if splits:
        if split not in splits:
            raise DataError(f"{root} has no '{split}' folder (found: {', '.join(splits)})",
                            hint=f"pass --split with one of: {', '.join(splits)}")
        names = sorted({name for s in splits for name in class_dirs(root / s)})
        base = root / split
    else:
        names = class_dirs(root)
        base = root
        note = "no train/val/test folders: every split is the whole tree"
    if not names:
        raise DataError(f"{base} has no class folders", hint="lay images out as ROOT/<class>/*.jpg")
    samples = [
        Sample(str(path), label)
        for label, name in enumerate(names) if (base / name).is_dir()
        for path in sorted((base / name).rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    return DatasetSplit(root, "folder", split, names, samples, note)
