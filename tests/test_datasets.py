"""Parsers on official-layout fixtures, layout detection, and every bad-input case."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fgcli.data import describe_layout, detect_layout, load_split
from fgcli.data.images import BadImageError, load_rgb
from fgcli.data.preprocess import PreprocessConfig, preprocess_eval
from fgcli.errors import DataError
from conftest import write_tiny_folder_dataset
from layouts import write_aircraft, write_cars, write_cub


def test_cub_splits_labels_boxes_and_class_names(tmp_path):
    root = write_cub(tmp_path)
    assert detect_layout(root) == "cub"
    train, test = load_split(root, "train"), load_split(root, "test")
    assert train.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert [s.label for s in train.samples] == [0, 0, 1, 1]
    assert [s.label for s in test.samples] == [0, 1]
    assert train.samples[0].box == (1.0, 2.0, 30.0, 20.0)
    assert train.samples[0].path.endswith("images/001.Black_footed_Albatross/Black_footed_Albatross_0000.jpg")
    assert describe_layout(root) == "CUB-200-2011 layout: 2 classes, 4 train / 2 test images"


def test_cub_label_out_of_range_names_file_and_image(tmp_path):
    root = write_cub(tmp_path)
    labels = root / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("2 1\n", "2 7\n"))
    with pytest.raises(DataError, match=r"image_class_labels.txt: image id 2 has label 7, outside 1..2"):
        load_split(root, "train")


def test_cub_missing_annotation_file_says_how_to_restore(tmp_path):
    root = write_cub(tmp_path)
    (root / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(DataError) as info:
        load_split(root, "train")
    assert "train_test_split.txt" in str(info.value) and "restore" in str(info.value)


def test_stanford_cars_devkit(tmp_path):
    root = write_cars(tmp_path)
    assert detect_layout(root) == "cars"
    train, test = load_split(root, "train"), load_split(root, "test")
    assert train.class_names == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    assert [s.label for s in train.samples] == [0, 0, 1, 1] and len(test.samples) == 4
    assert train.samples[0].path.endswith("cars_train/00001.jpg")
    assert test.samples[0].path.endswith("cars_test/00001.jpg")
    assert train.samples[0].box == (5.0, 6.0, 30.0, 19.0)


def test_aircraft_levels_splits_and_banner(tmp_path):
    root = write_aircraft(tmp_path)
    assert detect_layout(root) == "aircraft"
    variant = load_split(root, "trainval")
    assert variant.class_names == ["707-320", "A300B4"] and len(variant.samples) == 8
    family = load_split(root, "test", level="family")
    assert family.class_names == ["Boeing 707", "A300"]
    assert [s.label for s in family.samples] == [0, 0, 1, 1]
    assert all(s.bottom_crop == 20 for s in variant.samples)
    assert load_rgb(variant.samples[0].path, variant.samples[0].bottom_crop).size == (40, 30)
    with pytest.raises(DataError, match="no level 'model'"):
        load_split(root, "test", level="model")


def test_aircraft_unknown_class_in_list_names_file_and_line(tmp_path):
    root = write_aircraft(tmp_path)
    listing = root / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    lines = listing.read_text().splitlines()
    lines[1] = lines[1].split()[0] + " 747-400"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"images_variant_test.txt:2: class '747-400'"):
        load_split(root, "test")


def test_class_folders_with_and_without_split_folders(tmp_path):
    root = write_tiny_folder_dataset(tmp_path / "split", {"train": 2, "test": 1})
    assert detect_layout(root) == "folder"
    assert load_split(root, "test").class_names == ["alpha", "beta", "gamma"]
    assert len(load_split(root, "train").samples) == 6
    flat = write_tiny_folder_dataset(tmp_path / "flat", {"train": 2})
    tree = load_split(flat / "train", "test")
    assert len(tree.samples) == 6 and "every split" in tree.note
    with pytest.raises(DataError, match="no 'val' folder"):
        load_split(root, "val")


def test_unknown_layout_lists_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        detect_layout(tmp_path)
    assert "images.txt" in str(info.value) and "cars_meta.mat" in str(info.value)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"),
    (b"plain text, not a picture", "not an image"),
])
def test_bad_files_name_the_file_and_the_fix(tmp_path, content, reason):
    path = tmp_path / "bird.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImageError) as info:
        load_rgb(path)
    assert str(path) in str(info.value) and reason in str(info.value) and "--skip-bad" in str(info.value)


def test_corrupt_png_data_is_caught_at_load(tmp_path):
    path = tmp_path / "bad.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[200:260] = b"\x00" * 60  # inside the compressed IDAT stream
    path.write_bytes(bytes(data))
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        load_rgb(path)


def test_truncated_jpeg_is_caught_at_load(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-400])
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        load_rgb(path)


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "L", "I;16"])
def test_other_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGBA", (8, 6), (10, 200, 30, 0)) if mode in ("RGBA", "LA") else Image.new("RGB", (8, 6), (10, 200, 30))
    suffix = ".tif" if mode == "CMYK" else ".png"
    converted = img.convert(mode) if mode != "RGBA" else img
    path = tmp_path / f"x{suffix}"
    converted.save(path)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (8, 6)
    if mode == "RGBA":  # fully transparent pixels composite onto white
        assert rgb.getpixel((0, 0)) == (255, 255, 255)


def test_numpy_preprocessing_equals_torchvision_eval_transform(tmp_path):
    torch = pytest.importorskip("torch")
    from fgcli.data.transforms import eval_transform

    cfg = PreprocessConfig(img_size=32, resize_size=37)
    rng = np.random.default_rng(0)
    for size in [(50, 41), (41, 77), (37, 37), (120, 33)]:
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        expected = eval_transform(cfg)(img).numpy()
        got = preprocess_eval(img, cfg)
        assert got.shape == (3, 32, 32) and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-6, size
    assert torch is not None


def test_data_check_counts_and_finds_problems(tmp_path):
    from fgcli.data.check import check_dataset

    root = write_tiny_folder_dataset(tmp_path / "d", {"train": 3, "test": 1})
    clean = check_dataset(root)
    assert clean.errors == [] and clean.counts["beta"] == {"train": 3, "test": 1}
    (root / "train" / "alpha" / "zero.jpg").write_bytes(b"")
    copy = root / "train" / "gamma" / "copy.png"
    copy.write_bytes((root / "train" / "gamma" / "gamma_0.png").read_bytes())
    Image.new("RGB", (12, 40)).save(root / "test" / "beta" / "tiny.png")
    Image.new("RGB", (40, 40)).convert("CMYK").save(root / "test" / "alpha" / "cmyk.jpg")
    report = check_dataset(root)
    assert len(report.errors) == 1 and "zero.jpg" in report.errors[0]
    assert any("duplicate" in w and "copy.png" in w for w in report.warnings)
    assert any("tiny image (12x40)" in w for w in report.warnings)
    assert any(w.startswith("CMYK image") for w in report.warnings)
    assert report.counts["gamma"]["train"] == 4


def test_data_check_cli_exit_code(tmp_path):
    from typer.testing import CliRunner

    from fgcli.cli import app

    root = write_tiny_folder_dataset(tmp_path / "d", {"train": 2, "test": 1})
    assert CliRunner().invoke(app, ["data", "check", str(root)]).exit_code == 0
    (root / "test" / "beta" / "broken.jpg").write_bytes(b"nope")
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1 and "broken.jpg" in result.output
