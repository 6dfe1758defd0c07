"""CUB-200-2011: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/,
optional bounding_boxes.txt (x, y, width, height in pixels).

Class names are kept whole, as in classes.txt and the image folders ("001.Black_footed_Albatross"):
the numeric prefix keeps them unique and sorted the way the paper tables list them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fgcli.data.index import DatasetSplit, Sample, read_index_lines, require_samples
from fgcli.errors import DataError

SPLITS = {"train": 1, "test": 0}
RESTORE_HINT = "the annotation files disagree or are damaged; restore them from the dataset archive (CUB_200_2011.tgz)"


@dataclass
class Row:
    line: int  # 1-based line number, for error messages
    values: list[str]


def find_cub_root(root: str | Path) -> Path | None:
    """The folder holding images.txt: ``root`` itself or its ``CUB_200_2011`` child."""
    root = Path(root)
    for candidate in (root, root / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    return None


def _read_table(path: Path, columns: int) -> dict[int, Row]:
    """``image id -> Row`` of a whitespace-separated annotation file, with file:line in every error."""
    rows: dict[int, Row] = {}
    for number, line in read_index_lines(path, "restore it from the CUB-200-2011 archive (CUB_200_2011.tgz)"):
        parts = line.split(maxsplit=columns - 1)
        if len(parts) != columns or not parts[0].isdigit():
            raise DataError(f"{path}:{number}: expected an id and {columns - 1} more columns, got '{line}'",
                            hint=RESTORE_HINT)
        if int(parts[0]) in rows:
            raise DataError(f"{path}:{number}: id {parts[0]} already appears on line {rows[int(parts[0])].line}",
                            hint=RESTORE_HINT)
        rows[int(parts[0])] = Row(number, parts[1:])
    return rows


def _number(path: Path, row: Row, column: int, kind=int):
    try:
        return kind(row.values[column])
    except ValueError:
        raise DataError(f"{path}:{row.line}: '{row.values[column]}' is not a number", hint=RESTORE_HINT) from None


def _lookup(path: Path, table: dict[int, Row], image_id: int, image_name: str) -> Row:
    if image_id not in table:
        raise DataError(f"{path} has no line for image id {image_id} ({image_name}, listed in images.txt)",
                        hint=RESTORE_HINT)
    return table[image_id]


def load_cub(root: str | Path, split: str = "train") -> DatasetSplit:
    if split not in SPLITS:
        raise DataError(f"CUB-200-2011 has no split '{split}'", hint="use --split train or --split test")
    base = find_cub_root(root)
    if base is None:
        raise DataError(f"{root} has no images.txt (nor CUB_200_2011/images.txt)",
                        hint="point --data at the CUB_200_2011 folder or the folder it was extracted into")
    paths = {name: base / name for name in
             ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt")}
    images = _read_table(paths["images.txt"], 2)
    labels = _read_table(paths["image_class_labels.txt"], 2)
    is_train = _read_table(paths["train_test_split.txt"], 2)
    classes = _read_table(paths["classes.txt"], 2)
    boxes = _read_table(paths["bounding_boxes.txt"], 5) if paths["bounding_boxes.txt"].is_file() else None
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise DataError(f"{paths['classes.txt']}: class ids must be 1..{len(classes)} without gaps",
                        hint=RESTORE_HINT)
    class_names = [classes[k].values[0] for k in sorted(classes)]
    samples = []
    for image_id in sorted(images):
        name = images[image_id].values[0]
        split_row = _lookup(paths["train_test_split.txt"], is_train, image_id, name)
        label_row = _lookup(paths["image_class_labels.txt"], labels, image_id, name)
        is_train_flag = _number(paths["train_test_split.txt"], split_row, 0)
        if is_train_flag not in (0, 1):
            raise DataError(f"{paths['train_test_split.txt']}:{split_row.line}: image id {image_id} has "
                            f"{is_train_flag}; expected 1 (train) or 0 (test)", hint=RESTORE_HINT)
        if is_train_flag != SPLITS[split]:
            continue
        label = _number(paths["image_class_labels.txt"], label_row, 0)
        if not 1 <= label <= len(class_names):
            raise DataError(
                f"{paths['image_class_labels.txt']}: image id {image_id} has label {label}, "
                f"outside 1..{len(class_names)} (classes.txt), on line {label_row.line}",
                hint="fix the label or classes.txt; " + RESTORE_HINT,
            )
        box = None
        if boxes is not None:
            box_row = _lookup(paths["bounding_boxes.txt"], boxes, image_id, name)
            box = tuple(_number(paths["bounding_boxes.txt"], box_row, i, float) for i in range(4))
        samples.append(Sample(str(base / "images" / name), label - 1, box=box))
    return require_samples(DatasetSplit(base, "cub", split, class_names, samples),
                           f"{paths['train_test_split.txt']} marks no image {SPLITS[split]} ({split})")
