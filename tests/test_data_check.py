"""check_dataset on official layouts: counts, broken annotations as errors, duplicates across splits, modes."""

from __future__ import annotations

from conftest import write_tiny_folder_dataset
from layouts import write_aircraft, write_cub
from PIL import Image

from fgcli.data.check import check_dataset


def test_cub_counts_progress_and_clean_report(tmp_path):
    root = write_cub(tmp_path)
    ticks = []
    report = check_dataset(root, progress=ticks.append)
    assert report.layout == "cub" and report.errors == [] and report.infos == []
    assert report.counts == {"001.Black_footed_Albatross": {"train": 2, "test": 1},
                             "002.Laysan_Albatross": {"train": 2, "test": 1}}
    assert ticks == [1] * 6
    # the fixture writes one flat colour for every image, so every file after the first is a duplicate
    assert sum("duplicate" in w for w in report.warnings) == 5
    assert report.summary == f"CUB-200-2011 layout at {root}: 2 classes, 6 images"
    assert report.to_dict()["counts"] == report.counts


def test_broken_annotation_is_an_error_and_other_splits_still_count(tmp_path):
    root = write_aircraft(tmp_path)
    (root / "fgvc-aircraft-2013b" / "data" / "images_variant_val.txt").unlink()
    report = check_dataset(root)
    assert len(report.errors) == 1 and "missing annotation file" in report.errors[0]
    assert "images_variant_val.txt" in report.errors[0] and "hint:" in report.errors[0]
    assert report.counts == {"707-320": {"train": 2, "test": 2}, "A300B4": {"train": 2, "test": 2}}


def test_aircraft_sizes_are_checked_after_the_banner_crop(tmp_path):
    root = write_aircraft(tmp_path)  # 40x50 images: 40x30 once the 20 px banner is cut
    data = root / "fgvc-aircraft-2013b" / "data"
    short = data / "images" / f"{(data / 'images_variant_test.txt').read_text().split()[0]}.jpg"
    Image.new("RGB", (40, 45), (9, 9, 9)).save(short)
    report = check_dataset(root, level="family")
    assert list(report.counts) == ["Boeing 707", "A300"]
    assert any(w.startswith("tiny image (40x25)") and w.endswith(str(short)) for w in report.warnings)
    Image.new("RGB", (40, 15)).save(short)
    errors = check_dataset(root).errors
    assert errors == [f"cannot read image {short}: image is 15 px high, less than the 20 px banner to crop"]


def test_duplicates_name_both_splits_and_modes_are_reported(tmp_path):
    root = write_tiny_folder_dataset(tmp_path, {"train": 1, "test": 1})
    leaked = root / "test" / "beta" / "leak.png"
    leaked.write_bytes((root / "train" / "alpha" / "alpha_0.png").read_bytes())
    Image.new("L", (40, 40), 5).save(root / "train" / "gamma" / "gray.png")
    Image.new("RGBA", (40, 40)).save(root / "train" / "gamma" / "alpha.png")
    report = check_dataset(root, threads=2)
    assert report.errors == []
    assert (f"duplicate: {leaked} (test, beta) has the same bytes as {root / 'train' / 'alpha' / 'alpha_0.png'} "
            f"(train, alpha)") in report.warnings
    assert f"grayscale image (channel copied to R, G, B): {root / 'train' / 'gamma' / 'gray.png'}" in report.infos
    assert any(w.startswith("RGBA image with an alpha channel") and w.endswith("alpha.png") for w in report.warnings)
    assert report.counts["beta"] == {"train": 1, "test": 2}


def test_classes_without_images_in_a_split_are_listed(tmp_path):
    root = write_tiny_folder_dataset(tmp_path, {"train": 1, "test": 1})
    for path in (root / "test" / "gamma").iterdir():
        path.unlink()
    (root / "test" / "alpha" / "alpha_0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = check_dataset(root)
    assert len(report.errors) == 1 and "alpha_0.png" in report.errors[0]
    assert "2 classes have no readable test images: alpha, gamma" in report.warnings
    assert report.counts["alpha"] == {"train": 1, "test": 0}


def test_flat_tree_is_counted_once_and_says_why(tmp_path):
    root = write_tiny_folder_dataset(tmp_path, {"all": 2}) / "all"
    report = check_dataset(root, layout="folder")
    assert report.infos == ["no train/val/test folders: every split is the whole tree"]
    assert report.counts == {name: {"train": 2} for name in ("alpha", "beta", "gamma")}
