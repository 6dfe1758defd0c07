"""load_rgb: the pixel values of every mode conversion, describe_mode, and errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fgcli.data.images import BadImageError, describe_mode, load_rgb, open_image


def _save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


def _pixels(path) -> np.ndarray:
    return np.asarray(load_rgb(path))


def test_palette_without_transparency_keeps_its_colours(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((3, 1), 1)
    path = _save(img, tmp_path / "p.png")
    rgb = _pixels(path)
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[1, 3].tolist() == [0, 0, 255]
    assert describe_mode(open_image(path)) == "palette image (converted to RGB when loaded)"


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_is_composited_on_white(tmp_path, suffix):
    img = Image.new("P", (4, 2))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((0, 0), 1)
    path = _save(img, tmp_path / f"p{suffix}", transparency=0)
    rgb = _pixels(path)
    assert rgb[0, 0].tolist() == [200, 100, 50] and rgb[1, 1].tolist() == [255, 255, 255]
    assert describe_mode(open_image(path)).startswith("palette image with transparency")


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(100, 50, 0, 255), (100, 50, 0, 0), (100, 50, 0, 128)])
    rgb = _pixels(_save(rgba, tmp_path / "a.png"))
    blend = [round(c * 128 / 255 + 255 * 127 / 255) for c in (100, 50, 0)]
    assert rgb[0].tolist() == [[100, 50, 0], [255, 255, 255], blend]
    la = Image.new("LA", (2, 1))
    la.putdata([(40, 255), (40, 0)])
    path = _save(la, tmp_path / "la.png")
    assert _pixels(path)[0].tolist() == [[40, 40, 40], [255, 255, 255]]
    assert describe_mode(open_image(path)) == "LA image with an alpha channel (composited on white when loaded)"


def test_cmyk_sixteen_bit_grayscale_and_bilevel(tmp_path):
    cyan = _save(Image.new("CMYK", (2, 2), (255, 0, 0, 0)), tmp_path / "c.tif")
    assert _pixels(cyan)[0, 0].tolist() == [0, 255, 255]
    assert describe_mode(open_image(cyan)).startswith("CMYK image")
    sixteen = _save(Image.fromarray(np.array([[0, 25600, 65535]], dtype=np.uint16)), tmp_path / "d.png")
    assert open_image(sixteen).mode.startswith("I")
    assert _pixels(sixteen)[0].tolist() == [[0, 0, 0], [100, 100, 100], [255, 255, 255]]
    assert describe_mode(open_image(sixteen)).startswith("16-bit image")
    gray = _save(Image.new("L", (2, 2), 77), tmp_path / "g.png")
    assert _pixels(gray)[1, 1].tolist() == [77, 77, 77]
    assert describe_mode(open_image(gray)) == "grayscale image (channel copied to R, G, B)"
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert _pixels(_save(bilevel, tmp_path / "b.png"))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    assert describe_mode(open_image(_save(Image.new("RGB", (2, 2)), tmp_path / "rgb.jpg"))) is None


def test_bottom_crop_removes_the_banner_rows(tmp_path):
    pixels = np.zeros((30, 8, 3), dtype=np.uint8)
    pixels[-20:] = 255
    path = _save(Image.fromarray(pixels), tmp_path / "plane.png")
    cropped = load_rgb(path, bottom_crop=20)
    assert cropped.size == (8, 10) and np.asarray(cropped).max() == 0
    with pytest.raises(BadImageError, match=r"plane.png: image is 30 px high, less than the 40 px banner"):
        load_rgb(path, bottom_crop=40)


def test_missing_file_and_folder_are_bad_images_naming_the_path(tmp_path):
    with pytest.raises(BadImageError) as info:
        load_rgb(tmp_path / "gone.jpg")
    assert info.value.path == str(tmp_path / "gone.jpg") and info.value.reason == "the file does not exist"
    assert str(tmp_path / "gone.jpg") in info.value.message and "--skip-bad" in info.value.hint
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(BadImageError, match="dir.jpg: this is a folder, not an image file"):
        load_rgb(tmp_path / "dir.jpg")


def test_jpeg_header_followed_by_garbage_is_caught(tmp_path):
    path = tmp_path / "broken.jpg"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(path)
    header = path.read_bytes()[:300]
    path.write_bytes(header + bytes(range(256)) * 4)
    with pytest.raises(BadImageError) as info:
        load_rgb(path)
    assert str(path) in info.value.message and "corrupt" in info.value.reason
