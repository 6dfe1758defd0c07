"""Evaluation preprocessing in numpy + PIL, identical to the torchvision eval transform (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from fgcli.data.images import to_rgb
from fgcli.errors import DataError, FgcliError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the most pixels the eval resize may produce (~200 MB as RGB): checked before resizing, not by a MemoryError
MAX_RESIZED_PIXELS = 1 << 26


@dataclass(frozen=True)
class PreprocessConfig:
    img_size: int = 448
    resize_size: int = 512
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if not 0 < self.img_size <= self.resize_size:
            raise FgcliError(f"crop size {self.img_size} must be positive and at most the resize size "
                             f"{self.resize_size}", hint="pass --resize-size >= --img-size (e.g. 512 for 448)")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise FgcliError(f"mean {self.mean} / std {self.std} need 3 values each, std > 0",
                             hint="give one value per RGB channel")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: object = "") -> "PreprocessConfig":
        """The settings stored in a checkpoint, ONNX metadata, engine sidecar or calibration set (``source``,
        named in errors)."""
        hint = "the checkpoint or model was not written by fgcli; re-export it"
        where = f"{source}: " if source else ""
        missing = [key for key in ("img_size", "resize_size", "mean", "std") if key not in values]
        if missing:
            raise FgcliError(f"{where}preprocessing settings lack {', '.join(missing)} (got {sorted(values)})",
                             hint=hint)
        try:
            return cls(int(values["img_size"]), int(values["resize_size"]),
                       tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"]))
        except (TypeError, ValueError) as exc:  # before: a traceback for a mean of "x"
            raise FgcliError(f"{where}stored preprocessing settings {values} are not numbers ({exc})",
                             hint=hint) from None
        except FgcliError as exc:  # its own hint names command-line options, which made no stored file
            raise FgcliError(f"{where}stored preprocessing settings are invalid: {exc.message}", hint=hint) from None


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the shorter side becomes ``shorter``, the other keeps the aspect (truncated)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision ``CenterCrop``'s box (left, top, right, bottom); the image is at least ``size`` on each side
    because ``PreprocessConfig`` keeps ``img_size <= resize_size``."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def preprocess_eval(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Resize shorter side (bilinear), center crop, scale to [0, 1], normalise: ``(3, S, S)`` float32."""
    img = to_rgb(img)
    width, height = resized_size(*img.size, cfg.resize_size)
    if width * height > MAX_RESIZED_PIXELS:
        raise DataError(f"a {img.size[0]}x{img.size[1]} image resized to {width}x{height} would exceed the "
                        f"{MAX_RESIZED_PIXELS:,} pixels fgcli allows (its aspect ratio is too extreme)",
                        hint="crop the image to the object, or remove it")
    img = img.resize((width, height), Image.BILINEAR)
    img = img.crop(center_crop_box(width, height, cfg.img_size))
    array = np.asarray(img, dtype=np.float32) / 255.0
    array = (array - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))
