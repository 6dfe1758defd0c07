"""What a parsed dataset split is: image paths, labels and class names (no torch)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


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
