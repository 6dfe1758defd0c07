"""torchvision transforms for training and evaluation, parameterised by a PreprocessConfig."""

from __future__ import annotations

from torchvision import transforms as T

from fgcli.data.preprocess import PreprocessConfig


def eval_transform(cfg: PreprocessConfig) -> T.Compose:
    """Resize the shorter side, center crop: the same pixels as ``preprocess_eval``."""
    return T.Compose([
        T.Resize(cfg.resize_size, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(cfg.img_size),
        T.ToTensor(),
        T.Normalize(cfg.mean, cfg.std),
    ])


def train_transform(cfg: PreprocessConfig) -> T.Compose:
    """FGVC practice: resize the shorter side, random crop, horizontal flip."""
    return T.Compose([
        T.Resize(cfg.resize_size, interpolation=T.InterpolationMode.BILINEAR),
        T.RandomCrop(cfg.img_size),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(cfg.mean, cfg.std),
    ])
