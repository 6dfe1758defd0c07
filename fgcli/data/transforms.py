"""torchvision transforms for training and evaluation, parameterised by a PreprocessConfig.

The training loop's workers produce uint8 images (``train_pixels`` / ``eval_pixels``) and ``Normalizer`` turns a
batch into normalised floats on the training device: measured at 448 px, ``ToTensor`` + ``Normalize`` were 1.8 of
the 3.9 ms a worker spent per image, and a float32 image is 4x the bytes of a uint8 one crossing from a worker
process (``docs/results.md``, "Training speed"). ``train_transform`` / ``eval_transform`` are the same pixels as
floats in one step: ``preprocess_eval``'s torch twin, and the reference the uint8 path is tested against.
"""

from __future__ import annotations

import torch
from torchvision import transforms as T

from fgcli.data.preprocess import PreprocessConfig


def _eval_geometry(cfg: PreprocessConfig) -> list:
    return [T.Resize(cfg.resize_size, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(cfg.img_size)]


def _train_geometry(cfg: PreprocessConfig) -> list:
    """FGVC practice: resize the shorter side, random crop, horizontal flip."""
    return [T.Resize(cfg.resize_size, interpolation=T.InterpolationMode.BILINEAR), T.RandomCrop(cfg.img_size),
            T.RandomHorizontalFlip()]


def eval_transform(cfg: PreprocessConfig) -> T.Compose:
    """Resize the shorter side, center crop, normalised floats: the same pixels as ``preprocess_eval``."""
    return T.Compose([*_eval_geometry(cfg), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


def train_transform(cfg: PreprocessConfig) -> T.Compose:
    """The training augmentation as normalised floats (``train_pixels`` then ``Normalizer``, in one step)."""
    return T.Compose([*_train_geometry(cfg), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


def eval_pixels(cfg: PreprocessConfig) -> T.Compose:
    """``eval_transform`` before its float conversion: a uint8 CHW tensor for ``Normalizer``."""
    return T.Compose([*_eval_geometry(cfg), T.PILToTensor()])


def train_pixels(cfg: PreprocessConfig) -> T.Compose:
    """``train_transform`` before its float conversion: a uint8 CHW tensor for ``Normalizer``."""
    return T.Compose([*_train_geometry(cfg), T.PILToTensor()])


class Normalizer:
    """uint8 ``(B, 3, H, W)`` batches to normalised float32 on ``device``: the operations of ``ToTensor`` +
    ``Normalize`` in their order (divide by 255, subtract the mean, divide by the std), so the values are the
    float pipeline's to the bit; optionally in channels_last, the layout cuDNN's fast convolutions take."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).float().div_(255).sub_(self.mean).div_(self.std)
        return images.contiguous(memory_format=self.memory_format)
