"""CUB-200-2011: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/."""

from __future__ import annotations

from pathlib import Path

from fgcli.data.index import DatasetSplit, Sample
from fgcli.errors import DataError

REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
SPLITS = {"train": "1", "test": "0"}


def find_cub_root(root: str | Path) -> Path | None:
    """The folder holding images.txt: ``root`` itself or its ``CUB_200_2011`` child."""
    root = Path(root)
    for candidate in (root, root / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    return None


def _read_table(path: Path, columns: int) -> dict[str, list[str]]:
    """``id -> other columns`` of a whitespace-separated annotation file, with file:line in every error."""
    if not path.is_file():
        raise DataError(f"missing annotation file {path}",
                        hint="restore it from the CUB-200-2011 archive (CUB_200_2011.tgz)")
    rows: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=columns - 1)
        if len(parts) != columns:
            raise DataError(f"{path}:{number}: expected {columns} columns, got '{line.strip()}'",
                            hint="the file is damaged; restore it from the dataset archive")
        rows[parts[0]] = parts[1:]
    return rows


def load_cub(root: str | Path, split: str = "train") -> DatasetSplit:
    if split not in SPLITS:
        raise DataError(f"CUB-200-2011 has no split '{split}'", hint="use --split train or --split test")
    base = find_cub_root(root)
    if base is None:
        raise DataError(f"{root} has no images.txt", hint="point --data at the CUB_200_2011 folder")
    images = _read_table(base / "images.txt", 2)
    labels = _read_table(base / "image_class_labels.txt", 2)
    is_train = _read_table(base / "train_test_split.txt", 2)
    classes = _read_table(base / "classes.txt", 2)
    boxes_path = base / "bounding_boxes.txt"
    boxes = _read_table(boxes_path, 5) if boxes_path.is_file() else {}
    class_names = [classes[k][0] for k in sorted(classes, key=int)]
    samples = []
    for image_id in sorted(images, key=int):
        for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DataError(f"{base / name} has no line for image id {image_id} ({images[image_id][0]})",
                                hint="the annotation files disagree; restore them from the dataset archive")
        if is_train[image_id][0] != SPLITS[split]:
            continue
        label = int(labels[image_id][0])
        if not 1 <= label <= len(class_names):
            raise DataError(
                f"{base / 'image_class_labels.txt'}: image id {image_id} has label {label}, "
                f"outside 1..{len(class_names)} (classes.txt)",
                hint="fix the label or classes.txt",
            )
        box = tuple(float(v) for v in boxes[image_id]) if image_id in boxes else None
        samples.append(Sample(str(base / "images" / images[image_id][0]), label - 1, box=box))
    return DatasetSplit(base, "cub", split, class_names, samples)
