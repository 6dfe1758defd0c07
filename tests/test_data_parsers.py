"""Parsers: malformed annotations name the file and line, optional files, wrappers, split lists.

The happy paths of each layout are in test_datasets.py; these cover what can go wrong around them.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_tiny_folder_dataset
from layouts import write_aircraft, write_cars, write_cub

from fgcli.data import dataset_splits, describe_layout, detect_layout, load_split
from fgcli.errors import DataError


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture changed: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# ----------------------------------------------------------------------------- CUB-200-2011
def test_cub_root_may_be_the_cub_folder_itself(tmp_path):
    inner = write_cub(tmp_path) / "CUB_200_2011"
    assert detect_layout(inner) == "cub"
    split = load_split(inner, "test")
    assert split.root == inner and len(split.samples) == 2 and split.samples[1].label == 1


@pytest.mark.parametrize("file,old,new,expected", [
    ("images.txt", "3 001", "x 001", r"images.txt:3: expected an id and 1 more columns, got 'x 001"),
    ("train_test_split.txt", "2 1\n", "2 yes\n", r"train_test_split.txt:2: 'yes' is not a number"),
    ("train_test_split.txt", "2 1\n", "2 2\n", r"train_test_split.txt:2: image id 2 has 2; expected 1 \(train\)"),
    ("train_test_split.txt", "4 1\n", "3 1\n", r"train_test_split.txt:4: id 3 already appears on line 3"),
    ("image_class_labels.txt", "5 2\n", "", r"image_class_labels.txt has no line for image id 5 "
                                             r"\(002.Laysan_Albatross/Laysan_Albatross_0001.jpg"),
    ("image_class_labels.txt", "4 2\n", "4 0\n", r"image id 4 has label 0, outside 1..2 \(classes.txt\), on line 4"),
    ("bounding_boxes.txt", "1 1.0 2.0 30.0 20.0", "1 1.0 2.0 wide 20.0", r"bounding_boxes.txt:1: 'wide' is not"),
    ("bounding_boxes.txt", "2 1.0 2.0 30.0 20.0\n", "", r"bounding_boxes.txt has no line for image id 2"),
    ("classes.txt", "2 002", "3 002", r"classes.txt: class ids must be 1..2 without gaps"),
])
def test_cub_malformed_annotations_name_file_and_line(tmp_path, file, old, new, expected):
    root = write_cub(tmp_path)
    _edit(root / "CUB_200_2011" / file, old, new)
    with pytest.raises(DataError, match=expected) as info:
        load_split(root, "train")
    assert str(root / "CUB_200_2011" / file) in info.value.message and "restore" in info.value.hint


def test_cub_without_bounding_boxes_has_no_boxes(tmp_path):
    root = write_cub(tmp_path)
    (root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    assert [s.box for s in load_split(root, "test").samples] == [None, None]


def test_cub_unknown_split(tmp_path):
    with pytest.raises(DataError, match="CUB-200-2011 has no split 'val'"):
        load_split(write_cub(tmp_path), "val")


# ----------------------------------------------------------------------------- Stanford Cars
def test_cars_test_annotations_without_labels_say_which_file_is_needed(tmp_path):
    from scipy.io import savemat

    root = write_cars(tmp_path) / "stanford_cars"
    unlabeled = np.array([[(5, 6, 35, 25, "00001.jpg")]],
                         dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("fname", "O")])
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": unlabeled})
    with pytest.raises(DataError, match="cars_test_annos_withlabels.mat: the annotations have no field class") as info:
        load_split(root, "test")
    assert "cars_test_annos_withlabels.mat, not cars_test_annos.mat" in info.value.hint


def test_cars_missing_files_and_variables_are_named(tmp_path):
    from scipy.io import savemat

    root = write_cars(tmp_path) / "stanford_cars"
    (root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match="missing annotation file .*cars_test_annos_withlabels.mat"):
        load_split(root, "test")
    assert len(load_split(root, "train").samples) == 4
    savemat(root / "devkit" / "cars_meta.mat", {"names": np.array([["a", "b"]], dtype=object)})
    with pytest.raises(DataError, match=r"cars_meta.mat has no 'class_names' variable \(found: names\)"):
        load_split(root, "train")
    (root / "devkit" / "cars_train_annos.mat").write_bytes(b"not a mat file")
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([["a", "b"]], dtype=object)})
    with pytest.raises(DataError, match="cannot read .*cars_train_annos.mat"):
        load_split(root, "train")


def test_cars_class_out_of_range_names_the_annotation(tmp_path):
    from scipy.io import savemat

    root = write_cars(tmp_path, class_names=("A", "B"), per_class=1)
    dtype = [(name, "O") for name in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    records = np.array([[(5, 6, 35, 25, 1, "00001.jpg"), (5, 6, 35, 25, 3, "00002.jpg")]], dtype=dtype)
    savemat(root / "stanford_cars" / "devkit" / "cars_train_annos.mat", {"annotations": records})
    with pytest.raises(DataError, match=r"cars_train_annos.mat: annotation 2 \(00002.jpg\) has class 3, outside 1..2"):
        load_split(root, "train")


def test_repackaged_cars_class_folders_inside_wrappers(tmp_path):
    inner = write_tiny_folder_dataset(tmp_path / "car_data" / "car_data", {"train": 2, "test": 1})
    (tmp_path / "car_data" / "names.csv").write_text("alpha\nbeta\ngamma\n")
    outer = tmp_path / "car_data"
    assert detect_layout(outer) == "folder" and detect_layout(tmp_path) == "folder"
    test = load_split(tmp_path, "test")
    assert test.root == inner and test.class_names == ["alpha", "beta", "gamma"] and len(test.samples) == 3


# ----------------------------------------------------------------------------- FGVC-Aircraft
def test_aircraft_manufacturer_level_and_val_split(tmp_path):
    root = write_aircraft(tmp_path, variants=("707-320", "A300B4", "737-200"),
                          families=("Boeing 707", "A300", "Boeing 737"), manufacturers=("Boeing", "Airbus", "Boeing"))
    data = root / "fgvc-aircraft-2013b" / "data"
    with pytest.raises(DataError, match=r"manufacturers.txt:3: class 'Boeing' is listed twice"):
        load_split(root, "val", level="manufacturer")
    (data / "manufacturers.txt").write_text("Boeing\nAirbus\n")
    val = load_split(root, "val", level="manufacturer")
    assert val.class_names == ["Boeing", "Airbus"]
    assert [s.label for s in val.samples] == [0, 0, 1, 1, 0, 0]
    assert load_split(root, "val", level="variant").num_classes == 3
    assert dataset_splits(root, "aircraft") == ("train", "val", "test")
    assert describe_layout(root, level="family") == "FGVC-Aircraft layout: 3 classes, 6 train / 6 val / 6 test images"


def test_aircraft_boxes_become_zero_based_xywh(tmp_path):
    root = write_aircraft(tmp_path)
    data = root / "fgvc-aircraft-2013b" / "data"
    first = load_split(root, "test").samples[0]
    image_id = first.path.rsplit("/", 1)[1][:-4]
    (data / "images_box.txt").write_text(f"{image_id} 3 4 32 24\n")
    samples = load_split(root, "test").samples
    assert samples[0].box == (2.0, 3.0, 30.0, 21.0) and samples[1].box is None
    (data / "images_box.txt").write_text(f"{image_id} 3 4 32\n")
    with pytest.raises(DataError, match=r"images_box.txt:1: expected '<image id> xmin ymin xmax ymax'"):
        load_split(root, "test")


def test_aircraft_malformed_or_missing_lists(tmp_path):
    root = write_aircraft(tmp_path)
    data = root / "fgvc-aircraft-2013b" / "data"
    listing = data / "images_family_val.txt"
    listing.write_text(listing.read_text() + "1234567\n")
    with pytest.raises(DataError, match=r"images_family_val.txt:5: expected '<image id> <value>', got '1234567'"):
        load_split(root, "val", level="family")
    (data / "images_variant_train.txt").unlink()
    with pytest.raises(DataError, match="missing annotation file .*images_variant_train.txt") as info:
        load_split(root, "train")
    assert "fgvc-aircraft-2013b.tar.gz" in info.value.hint


# ----------------------------------------------------------------------------- folders and detection
def test_flat_class_tree_is_every_split_and_says_so(tmp_path):
    root = write_tiny_folder_dataset(tmp_path, {"all": 2}) / "all"
    assert dataset_splits(root, "folder") == ("train",)
    assert describe_layout(root) == ("class folders layout: 3 classes, 6 train images "
                                     "(no train/val/test folders: every split is the whole tree)")
    assert load_split(root, "val").note and len(load_split(root, "val").samples) == 6


def test_folder_classes_are_shared_across_splits(tmp_path):
    root = write_tiny_folder_dataset(tmp_path, {"train": 1, "val": 1})
    (root / "train" / "delta").mkdir()
    val = load_split(root, "val")
    assert val.class_names == ["alpha", "beta", "delta", "gamma"]
    assert val.counts() == {"alpha": 1, "beta": 1, "delta": 0, "gamma": 1}
    assert dataset_splits(root, "folder") == ("train", "val")


def test_broken_cub_is_not_mistaken_for_class_folders(tmp_path):
    root = write_cub(tmp_path)
    (root / "CUB_200_2011" / "images.txt").unlink()
    with pytest.raises(DataError) as info:
        detect_layout(root)
    message = info.value.message
    assert f"cannot tell the dataset layout of {root}" in message
    for looked_for in ("images.txt", "devkit/cars_meta.mat", "data/variants.txt", "ROOT/<class>/*.jpg"):
        assert looked_for in message


def test_missing_folder_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        detect_layout(tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown dataset layout 'imagenet'"):
        load_split(tmp_path, "train", layout="imagenet")
