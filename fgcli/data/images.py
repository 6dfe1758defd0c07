"""Open any image file as RGB, or fail with a message that names the file and the fix (no torch)."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from fgcli.errors import DataError

BAD_IMAGE_HINT = "re-download or remove the file (fgcli data check lists every bad file), or pass --skip-bad"


class BadImageError(DataError):
    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot read image {path}: {reason}", hint=BAD_IMAGE_HINT)
        self.path = str(path)
        self.reason = reason


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: alpha composited on white, palettes with transparency through RGBA, 16-bit scaled."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike, bottom_crop: int = 0) -> Image.Image:
    """Fully decode ``path`` (so truncated files fail here, not later) and return it as RGB."""
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "the file is empty (0 bytes)")
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(img)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "the file does not exist") from None
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image file PIL can identify") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(path, f"corrupt or truncated ({exc})") from None
    if bottom_crop:
        width, height = rgb.size
        if height <= bottom_crop:
            raise BadImageError(path, f"image is {height} px high, less than the {bottom_crop} px banner to crop")
        rgb = rgb.crop((0, 0, width, height - bottom_crop))
    return rgb
