"""FGVC-Aircraft (fgvc-aircraft-2013b): ``data/images/``, ``data/{variants,families,manufacturers}.txt``,
``data/images_<level>_<split>.txt``, optional ``data/images_box.txt``. The bottom 20 pixels (a copyright
banner) are cropped, as the official toolkit does.
"""

from __future__ import annotations

from pathlib import Path

from fgcli.data.index import DatasetSplit, Sample, read_index_lines, require_samples
from fgcli.errors import DataError

LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
SPLITS = ("train", "val", "trainval", "test")
BANNER_PIXELS = 20
RESTORE_HINT = "restore it from the FGVC-Aircraft archive (fgvc-aircraft-2013b.tar.gz)"


def find_aircraft_root(root: str | Path) -> Path | None:
    """The folder holding ``variants.txt``: ``root/data``, ``root/fgvc-aircraft-2013b/data`` or ``root``."""
    root = Path(root)
    for candidate in (root / "data", root / "fgvc-aircraft-2013b" / "data", root):
        if (candidate / "variants.txt").is_file() and (candidate / "images").is_dir():
            return candidate
    return None


def _id_and_rest(path: Path, number: int, line: str) -> tuple[str, str]:
    image_id, _, rest = line.partition(" ")
    if not rest.strip():
        raise DataError(f"{path}:{number}: expected '<image id> <value>', got '{line}'",
                        hint="the file is damaged; " + RESTORE_HINT)
    return image_id, rest.strip()


def _boxes(base: Path) -> dict[str, tuple[float, float, float, float]]:
    """images_box.txt holds 1-based inclusive ``xmin ymin xmax ymax``; returned as 0-based (x, y, width, height)."""
    path = base / "images_box.txt"
    if not path.is_file():
        return {}
    boxes = {}
    for number, line in read_index_lines(path, RESTORE_HINT):
        image_id, rest = _id_and_rest(path, number, line)
        try:
            xmin, ymin, xmax, ymax = (float(v) for v in rest.split())
        except ValueError:
            raise DataError(f"{path}:{number}: expected '<image id> xmin ymin xmax ymax', got '{line}'",
                            hint="the file is damaged; " + RESTORE_HINT) from None
        boxes[image_id] = (xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1)
    return boxes


def load_aircraft(root: str | Path, split: str = "trainval", level: str = "variant") -> DatasetSplit:
    """Labels at ``level`` (variant: 100 classes, family: 70, manufacturer: 30)."""
    if split not in SPLITS:
        raise DataError(f"FGVC-Aircraft has no split '{split}'", hint=f"use one of: {', '.join(SPLITS)}")
    if level not in LEVELS:
        raise DataError(f"FGVC-Aircraft has no level '{level}'", hint=f"use one of: {', '.join(LEVELS)}")
    base = find_aircraft_root(root)
    if base is None:
        raise DataError(f"{root} has no data/variants.txt with data/images/ beside it",
                        hint="point --data at the fgvc-aircraft-2013b folder")
    class_file = base / LEVELS[level]
    class_names, index = [], {}
    for number, name in read_index_lines(class_file, RESTORE_HINT):
        if name in index:
            raise DataError(f"{class_file}:{number}: class '{name}' is listed twice",
                            hint="the file is damaged; " + RESTORE_HINT)
        index[name] = len(class_names)
        class_names.append(name)
    boxes = _boxes(base)
    list_file = base / f"images_{level}_{split}.txt"
    samples, seen = [], {}
    for number, line in read_index_lines(list_file, RESTORE_HINT):
        image_id, name = _id_and_rest(list_file, number, line)
        if image_id in seen:
            raise DataError(f"{list_file}:{number}: image {image_id} already appears on line {seen[image_id]}",
                            hint="the file is damaged; " + RESTORE_HINT)
        seen[image_id] = number
        if name not in index:
            raise DataError(f"{list_file}:{number}: class '{name}' is not in {LEVELS[level]}",
                            hint="the list files disagree; " + RESTORE_HINT)
        samples.append(Sample(str(base / "images" / f"{image_id}.jpg"), index[name], bottom_crop=BANNER_PIXELS,
                              box=boxes.get(image_id)))
    return require_samples(DatasetSplit(base, "aircraft", split, class_names, samples), f"{list_file} lists none")
