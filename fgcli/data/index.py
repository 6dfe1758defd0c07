"""What a parsed dataset split is: image paths, labels and class names (no torch)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fgcli.errors import DataError


@dataclass
class Sample:
    path: str
    label: int
    bottom_crop: int = 0  # pixels cut from the bottom before anything else (FGVC-Aircraft's banner)
    box: tuple[float, float, float, float] | None = None  # x, y, w, h when the dataset provides one


@dataclass
class DatasetSplit:
    root: Path
    layout: str
    split: str
    class_names: list[str]
    samples: list[Sample] = field(default_factory=list)
    note: str = ""  # e.g. "no split folders: every split is the whole tree"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> dict[str, int]:
        """Images per class name, in class order."""
        counter = Counter(s.label for s in self.samples)
        return {name: counter.get(i, 0) for i, name in enumerate(self.class_names)}


def read_index_lines(path: Path, restore_hint: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of a dataset's text index.

    Accepts what downloaded and re-saved files carry: a UTF-8 byte-order mark, CRLF line endings, blank
    lines, trailing spaces. Anything not UTF-8 is refused with its line number rather than guessed at.
    """
    if not path.is_file():
        raise DataError(f"missing annotation file {path}", hint=restore_hint)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})",
                        hint="re-save the file as UTF-8, or " + restore_hint) from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def require_samples(split: DatasetSplit, source: str) -> DatasetSplit:
    """A split with no images is an error here, not a division by zero later; ``source`` says where it is set."""
    if not split.samples:
        raise DataError(f"the '{split.split}' split of {split.root} has no images: {source}",
                        hint="pass another --split, or fix the dataset's split files")
    return split
