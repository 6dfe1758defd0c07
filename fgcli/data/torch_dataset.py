"""A torch Dataset over a DatasetSplit whose workers never raise on a bad image.

A bad file becomes a ``BadSample`` that the collate function carries to the main process, where
the training loop either stops with a message naming the file or skips it (``--skip-bad``).

``SeededSampler`` gives each drawn sample its own augmentation seed, so the crops and flips of an epoch depend
on the epoch's seed only, not on which worker process (seeded once, when persistent workers start) draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from fgcli.data.images import BadImageError, load_rgb
from fgcli.data.index import DatasetSplit


@dataclass
class BadSample:
    index: int
    path: str
    reason: str


class ImageDataset(Dataset):
    def __init__(self, split: DatasetSplit, transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getitem__(self, item: int | tuple[int, int]):
        """``item``: an index, or ``(index, seed)`` from ``SeededSampler`` (the transform draws from ``seed``)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        sample = self.split.samples[index]
        try:
            img = load_rgb(sample.path, bottom_crop=sample.bottom_crop)
        except BadImageError as exc:
            return BadSample(index, sample.path, exc.reason)
        if seed is None:
            return self.transform(img), sample.label, index
        with torch.random.fork_rng(devices=[]):  # the process's own RNG (workers=0: the trainer's) stays as it was
            torch.manual_seed(seed)
            return self.transform(img), sample.label, index


class SeededSampler(Sampler):
    """``(index, seed)`` pairs: ``sampler``'s order, each with a seed drawn from the one ``set_seed`` gave."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.seed = 0

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        indices = list(self.sampler)
        seeds = torch.randint(0, 2**62, (len(indices),), generator=torch.Generator().manual_seed(self.seed))
        return iter(zip(indices, seeds.tolist()))


def collate_with_bad(batch):
    """``(images, labels, indices, bad)``: the good samples stacked, the bad ones listed."""
    good = [item for item in batch if not isinstance(item, BadSample)]
    bad = [item for item in batch if isinstance(item, BadSample)]
    if good:
        images = torch.stack([item[0] for item in good])
    else:
        images = torch.zeros(0)
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = [item[2] for item in good]
    return images, labels, indices, bad
