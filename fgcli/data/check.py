"""`fgcli data check`: what is in a dataset and what is wrong with it, before a long training run."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from fgcli.data import LAYOUT_NAMES, detect_layout, load_split
from fgcli.data.images import BadImageError, load_rgb
from fgcli.errors import DataError

TINY_SIDE = 32
SPLITS = {"cub": ("train", "test"), "cars": ("train", "test"), "aircraft": ("train", "val", "test"),
          "folder": ("train", "val", "test")}


@dataclass
class CheckReport:
    root: str
    layout: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> split -> images
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        total = sum(sum(c.values()) for c in self.counts.values())
        return f"{LAYOUT_NAMES[self.layout]} layout at {self.root}: {len(self.counts)} classes, {total} images"

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "layout": self.layout, "summary": self.summary, "counts": self.counts,
                "errors": self.errors, "warnings": self.warnings}


def _inspect(path: str, bottom_crop: int) -> tuple[str | None, str | None, tuple[int, int] | None, str | None]:
    """(error, mode, size, sha256) of one file; decodes it fully, as training would."""
    try:
        with Image.open(path) as img:
            mode = img.mode
        size = load_rgb(path, bottom_crop=bottom_crop).size
    except BadImageError as exc:
        return exc.message, None, None, None
    except OSError as exc:
        return f"cannot read image {path}: {exc}", None, None, None
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return None, mode, size, digest


def check_dataset(root: str | Path, layout: str = "auto", progress: Callable[[int], None] | None = None,
                  threads: int = 4) -> CheckReport:
    """Counts per class and split; unreadable / truncated files (errors); duplicates, tiny images,
    non-RGB files and classes missing from a split (warnings). Annotation problems are errors too."""
    layout = detect_layout(root) if layout == "auto" else layout
    report = CheckReport(str(root), layout)
    splits = {}
    for split in SPLITS[layout]:
        try:
            data = load_split(root, split, layout)
        except DataError as exc:
            if "no split" in exc.message or "has no '" in exc.message:
                continue  # a split this dataset does not have
            report.errors.append(exc.message)
            continue
        if data.note and split != "train":
            continue  # a tree without split folders: count it once
        splits[split] = data
    if not splits:
        return report
    class_names = next(iter(splits.values())).class_names
    report.counts = {name: {split: 0 for split in splits} for name in class_names}
    seen: dict[str, str] = {}
    jobs = [(split, s) for split, data in splits.items() for s in data.samples]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = pool.map(lambda job: _inspect(job[1].path, job[1].bottom_crop), jobs)
        for (split, sample), (error, mode, size, digest) in zip(jobs, results):
            if progress:
                progress(1)
            if error:
                report.errors.append(error)
                continue
            report.counts[class_names[sample.label]][split] += 1
            if digest in seen:
                report.warnings.append(f"duplicate: {sample.path} has the same bytes as {seen[digest]}")
            seen.setdefault(digest, sample.path)
            if min(size) < TINY_SIDE:
                report.warnings.append(f"tiny image ({size[0]}x{size[1]}): {sample.path}")
            if mode not in ("RGB", "L"):
                report.warnings.append(f"{mode} image (converted to RGB when loaded): {sample.path}")
    missing = defaultdict(list)
    for name, counts in report.counts.items():
        for split, count in counts.items():
            if count == 0:
                missing[split].append(name)
    for split, names in missing.items():
        report.warnings.append(f"{len(names)} classes have no {split} images (e.g. {names[0]})")
    return report
