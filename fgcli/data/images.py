"""Open any image file as RGB, or fail with a message that names the file and the fix (no torch)."""

from __future__ import annotations

import os
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from fgcli.errors import DataError

# PIL warns (on stderr, between progress lines) about a header above MAX_IMAGE_PIXELS and decodes it anyway;
# as an error it is caught by ``open_image`` and becomes the image's reason, like PIL's DecompressionBombError.
# A process-wide filter: ``warnings.catch_warnings`` is not thread-safe, and images load in threads.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

#: refused before decoding: a longer side this many times the shorter one is no photo, and resizing its
#: shorter side to the model's resolution would ask for gigabytes (a 20000000x1 PNG is 2.5 KB)
MAX_ASPECT_RATIO = 100
_TOO_MANY_PIXELS = "more than the {:,} pixels fgcli decodes (PIL's decompression-bomb limit, PIL.Image.MAX_IMAGE_PIXELS)"
BAD_IMAGE_HINT = "re-download or remove the file (fgcli data check lists every bad file), or pass --skip-bad"
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


#: files with these suffixes are taken as images without a look inside; any other file only if PIL identifies it
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def find_image_files(folder: str | os.PathLike, skipped: list[str] | None = None) -> list[str]:
    """Every image file under ``folder``, recursively, in no set order; symlinked folders are followed, each real
    folder searched once (a symlink loop ends there).

    An image is a file with an image suffix, or one whose header PIL identifies (``.jfif``, ``.avif``, a JPEG
    without an extension); every other file is appended to ``skipped`` (sorted), so the caller can say what it
    left out. Before, such files and symlinked folders were left out without a word."""
    found, searched = [], set()
    for root, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in searched:
            subfolders[:] = []
            continue
        searched.add(real)
        for name in files:
            path = os.path.join(root, name)
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES or _pil_identifies(path):
                found.append(path)
            elif skipped is not None:
                skipped.append(path)
    if skipped is not None:
        skipped.sort()
    return found


def _pil_identifies(path: str) -> bool:
    """Whether PIL recognises the file's header as an image (reads a few bytes, decodes nothing)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression-bomb header: still an image, refused when loaded
            with Image.open(path):
                return True
    except Image.DecompressionBombError:
        return True
    except Exception:  # not an image PIL reads (PIL raises assorted errors on foreign files)
        return False


class BadImageError(DataError):
    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot read image {path}: {reason}", hint=BAD_IMAGE_HINT)
        self.path = str(path)
        self.reason = reason


def check_dimensions(path: str | os.PathLike, width: int, height: int) -> None:
    """Refuse sizes that cannot be decoded or resized safely, from the header alone (before any pixel is read)."""
    if width < 1 or height < 1:
        raise BadImageError(path, f"the header declares {width}x{height} pixels")
    limit = Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb warning threshold, ~89.5 M pixels (~270 MB as RGB)
    if limit and width * height > limit:
        raise BadImageError(path, f"{width}x{height} is {width * height:,} pixels, {_TOO_MANY_PIXELS.format(limit)}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadImageError(path, f"{width}x{height} has an aspect ratio above {MAX_ASPECT_RATIO}:1, which fgcli "
                                  "refuses (resizing its shorter side to the model's input would need gigabytes)")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Fully decode ``path`` in its own mode, so that truncated or corrupt files fail here, not in a batch.

    The EXIF orientation is applied (``ImageOps.exif_transpose``): a phone photo stored sideways with an
    orientation tag is returned upright, as image viewers show it. torchvision's ``ImageFolder`` loader and
    timm's datasets do not do this, so fgcli's train, eval, predict and ONNX checks all see upright images.
    """
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "the file is empty (0 bytes)")
        with Image.open(path) as img:
            check_dimensions(path, *img.size)
            img.load()
            return ImageOps.exif_transpose(img)  # a copy, so the file is closed on return
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "the file does not exist") from None
    except PermissionError:
        raise BadImageError(path, "permission denied") from None
    except IsADirectoryError:
        raise BadImageError(path, "this is a folder, not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # PIL's check, before ours
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(declared.group(1)):,} pixels" if declared else "too many pixels"
        raise BadImageError(path, f"{size}, {_TOO_MANY_PIXELS.format(Image.MAX_IMAGE_PIXELS)}") from None
    except MemoryError:
        raise BadImageError(path, "not enough memory to decode it") from None
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image file PIL can identify") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(path, f"corrupt or truncated ({exc})") from None
    except Exception as exc:  # PIL's decoders raise assorted errors (struct.error, IndexError, ...) on damaged files
        raise BadImageError(path, f"corrupt ({type(exc).__name__}: {exc})") from None


def _palette_has_alpha(img: Image.Image) -> bool:
    """A palette image with a transparent colour (GIF, PNG tRNS) or an RGBA palette."""
    return "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: alpha composited on white, palettes with transparency through RGBA, 16-bit scaled."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        if not _palette_has_alpha(img):
            return img.convert("RGB")
        img = img.convert("RGBA")
    if img.mode in ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in SIXTEEN_BIT_MODES:
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")


def describe_mode(img: Image.Image) -> str | None:
    """How ``load_rgb`` changes this image's pixels (None for plain RGB), for `fgcli data check`."""
    mode = img.mode
    if mode == "RGB":
        return None
    if mode == "L":
        return "grayscale image (channel copied to R, G, B)"
    if mode == "1":
        return "1-bit image (black and white copied to R, G, B)"
    if mode == "CMYK":
        return "CMYK image (converted to RGB when loaded; colours may shift)"
    if mode == "P":
        if _palette_has_alpha(img):
            return "palette image with transparency (composited on white when loaded)"
        return "palette image (converted to RGB when loaded)"
    if mode in ALPHA_MODES:
        return f"{mode} image with an alpha channel (composited on white when loaded)"
    if mode in SIXTEEN_BIT_MODES:
        return f"16-bit image ({mode}, scaled to 8-bit grayscale RGB when loaded)"
    return f"{mode} image (converted to RGB when loaded)"


def crop_bottom(img: Image.Image, pixels: int, path: str | os.PathLike) -> Image.Image:
    """Cut ``pixels`` rows off the bottom (FGVC-Aircraft's copyright banner)."""
    if not pixels:
        return img
    width, height = img.size
    if height <= pixels:
        raise BadImageError(path, f"image is {height} px high, less than the {pixels} px banner to crop")
    return img.crop((0, 0, width, height - pixels))


def load_rgb(path: str | os.PathLike, bottom_crop: int = 0) -> Image.Image:
    """Fully decode ``path`` (so truncated files fail here, not later) and return it as RGB."""
    return crop_bottom(to_rgb(open_image(path)), bottom_crop, path)
