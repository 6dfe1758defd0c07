"""A torch Dataset over a DatasetSplit whose workers never raise on a bad image.

A bad file becomes a ``BadSample`` that the collate function carries to the main process, where
the training loop either stops with a message naming the file or skips it (``--skip-bad``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

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

    def __getitem__(self, index: int):
        sample = self.split.samples[index]
        try:
            img = load_rgb(sample.path, bottom_crop=sample.bottom_crop)
        except BadImageError as exc:
            return BadSample(index, sample.path, exc.reason)
        return self.transform(img), sample.label, index


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
