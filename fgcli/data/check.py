"""`fgcli data check`: what is in a dataset and what is wrong with it, before a long training run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fgcli.data import LAYOUT_NAMES, dataset_splits, detect_layout, load_split
from fgcli.data.images import BadImageError, crop_bottom, describe_mode, open_image, to_rgb
from fgcli.data.index import Sample
from fgcli.errors import DataError
from fgcli.utils import sha256_file

TINY_SIDE = 32
EXAMPLES = 5  # class names listed in a "classes have no <split> images" warning


@dataclass
class CheckReport:
    root: str
    layout: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> split -> readable images
    errors: list[str] = field(default_factory=list)  # unreadable files, broken annotations: the CLI exits 1
    warnings: list[str] = field(default_factory=list)  # duplicates, tiny images, unusual modes, empty classes
    infos: list[str] = field(default_factory=list)  # harmless facts (grayscale files, no split folders)

    @property
    def summary(self) -> str:
        total = sum(sum(c.values()) for c in self.counts.values())
        return f"{LAYOUT_NAMES[self.layout]} layout at {self.root}: {len(self.counts)} classes, {total} images"

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "layout": self.layout, "summary": self.summary, "counts": self.counts,
                "errors": self.errors, "warnings": self.warnings, "infos": self.infos}


@dataclass
class FileFacts:
    error: str | None = None
    mode_note: str | None = None  # describe_mode of the file as stored
    size: tuple[int, int] = (0, 0)  # after the bottom crop, as training sees it
    digest: str = ""


def _inspect(sample: Sample) -> FileFacts:
    """Decode one file fully, as training would, and hash its bytes."""
    try:
        img = open_image(sample.path)
        rgb = crop_bottom(to_rgb(img), sample.bottom_crop, sample.path)
        digest = sha256_file(sample.path)
    except BadImageError as exc:
        return FileFacts(error=exc.message)
    except OSError as exc:
        return FileFacts(error=f"cannot read image {sample.path}: {exc}")
    return FileFacts(mode_note=describe_mode(img), size=rgb.size, digest=digest)


def check_dataset(root: str | Path, layout: str = "auto", progress: Callable[[int], None] | None = None,
                  threads: int = 4, **options) -> CheckReport:
    """Counts per class and split; unreadable / truncated files and broken annotations (errors); duplicates,
    tiny images, non-RGB files and classes missing from a split (warnings). ``progress(1)`` after each file;
    ``options`` go to the parser (``level`` for FGVC-Aircraft)."""
    layout = detect_layout(root) if layout == "auto" else layout
    report = CheckReport(str(root), layout)
    splits = {}
    for split in dataset_splits(root, layout):
        try:
            splits[split] = load_split(root, split, layout, **options)
        except DataError as exc:
            report.errors.append(str(exc))
    if not splits:
        return report
    first = next(iter(splits.values()))
    if first.note:
        report.infos.append(first.note)
    class_names = first.class_names
    report.counts = {name: {split: 0 for split in splits} for name in class_names}
    jobs = [(split, sample) for split, data in splits.items() for sample in data.samples]
    first_seen: dict[str, tuple[str, Sample]] = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for (split, sample), facts in zip(jobs, pool.map(lambda job: _inspect(job[1]), jobs)):
            if progress:
                progress(1)
            if facts.error:
                report.errors.append(facts.error)
                continue
            report.counts[class_names[sample.label]][split] += 1
            where = f"({split}, {class_names[sample.label]})"
            if facts.digest in first_seen:
                other_split, other = first_seen[facts.digest]
                report.warnings.append(f"duplicate: {sample.path} {where} has the same bytes as {other.path} "
                                       f"({other_split}, {class_names[other.label]})")
            else:
                first_seen[facts.digest] = (split, sample)
            if min(facts.size) < TINY_SIDE:
                report.warnings.append(f"tiny image ({facts.size[0]}x{facts.size[1]}), a side under {TINY_SIDE} px: "
                                       f"{sample.path}")
            if facts.mode_note and facts.mode_note.startswith("grayscale"):
                report.infos.append(f"{facts.mode_note}: {sample.path}")
            elif facts.mode_note:
                report.warnings.append(f"{facts.mode_note}: {sample.path}")
    for split in splits:
        empty = [name for name, counts in report.counts.items() if counts[split] == 0]
        if empty:
            shown = ", ".join(empty[:EXAMPLES]) + (", ..." if len(empty) > EXAMPLES else "")
            report.warnings.append(f"{len(empty)} classes have no readable {split} images: {shown}")
    return report
