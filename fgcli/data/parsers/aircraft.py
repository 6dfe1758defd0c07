"""FGVC-Aircraft (fgvc-aircraft-2013b): ``data/images/``, ``data/{variants,families,manufacturers}.txt``,
``data/images_<level>_<split>.txt``. The bottom 20 pixels (a copyright banner) are cropped, as the
official toolkit does.
"""

from __future__ import annotations

from pathlib import Path

from fgcli.data.index import DatasetSplit, Sample
from fgcli.errors import DataError

LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
SPLITS = ("train", "val", "trainval", "test")
BANNER_PIXELS = 20


def find_aircraft_root(root: str | Path) -> Path | None:
    """The folder holding ``variants.txt``: ``root/data``, ``root/fgvc-aircraft-2013b/data`` or ``root``."""
    root = Path(root)
    for candidate in (root / "data", root / "fgvc-aircraft-2013b" / "data", root):
        if (candidate / "variants.txt").is_file() and (candidate / "images").is_dir():
            return candidate
    return None


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing annotation file {path}",
                        hint="restore it from the FGVC-Aircraft archive (fgvc-aircraft-2013b.tar.gz)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_aircraft(root: str | Path, split: str = "trainval", level: str = "variant") -> DatasetSplit:
    """Labels at ``level`` (variant: 100 classes, family: 70, manufacturer: 30)."""
    if split not in SPLITS:
        raise DataError(f"FGVC-Aircraft has no split '{split}'", hint=f"use one of: {', '.join(SPLITS)}")
    if level not in LEVELS:
        raise DataError(f"FGVC-Aircraft has no level '{level}'", hint=f"use one of: {', '.join(LEVELS)}")
    base = find_aircraft_root(root)
    if base is None:
        raise DataError(f"{root} has no data/variants.txt", hint="point --data at the fgvc-aircraft-2013b folder")
    class_names = _lines(base / LEVELS[level])
    index = {name: i for i, name in enumerate(class_names)}
    list_file = base / f"images_{level}_{split}.txt"
    samples = []
    for number, line in enumerate(_lines(list_file), start=1):
        image_id, _, name = line.partition(" ")
        if name not in index:
            raise DataError(f"{list_file}:{number}: class '{name}' is not in {LEVELS[level]}",
                            hint="the list files disagree; restore them from the dataset archive")
        samples.append(Sample(str(base / "images" / f"{image_id}.jpg"), index[name], bottom_crop=BANNER_PIXELS))
    return DatasetSplit(base, "aircraft", split, class_names, samples)
