"""The synthetic dataset: CUB layout, determinism, nuisance variation, and classes that differ only locally."""

from __future__ import annotations

import hashlib
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgcli.data.synth import (
    MARKER, PALETTE, WING_PATTERNS, BirdClass, Jitter, Pose, class_catalogue, generate_synthetic, render_scene,
)
from fgcli.errors import FgcliError


def read_table(path: Path) -> dict[int, list[str]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return {int(row[0]): row[1:] for row in rows}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "cub"
    advanced = []
    summary = generate_synthetic(out, num_classes=10, per_class=40, seed=3, progress=advanced.append)
    return out, summary, advanced


def test_layout_is_consistent_cub(dataset):
    out, summary, advanced = dataset
    images = read_table(out / "images.txt")
    labels = read_table(out / "image_class_labels.txt")
    split = read_table(out / "train_test_split.txt")
    boxes = read_table(out / "bounding_boxes.txt")
    classes = read_table(out / "classes.txt")

    assert sorted(images) == sorted(labels) == sorted(split) == sorted(boxes) == list(range(1, 401))
    assert sorted(classes) == list(range(1, 11))
    assert [classes[k][0] for k in range(1, 11)] == list(summary.class_names)
    assert sum(advanced) == summary.num_images == 400
    test_per_class = np.zeros(11, dtype=int)
    for image_id, (relpath,) in images.items():
        label = int(labels[image_id][0])
        folder, filename = relpath.split("/")
        assert folder == classes[label][0]
        assert filename == f"{folder.split('.', 1)[1]}_{image_id:05d}.jpg"
        assert split[image_id][0] in ("0", "1")
        test_per_class[label] += split[image_id][0] == "0"
        with Image.open(out / "images" / relpath) as image:
            image.load()
            assert image.format == "JPEG" and image.mode in ("RGB", "L")
            width, height = image.size
        x, y, w, h = map(float, boxes[image_id])
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
    assert test_per_class[1:].tolist() == [12] * 10  # round(40 * 0.3) per class
    assert (summary.num_train, summary.num_test) == (280, 120)


def test_the_cub_parser_reads_it(dataset):
    from fgcli.data.parsers.cub import load_cub

    out, summary, _ = dataset
    train, test = load_cub(out, "train"), load_cub(out, "test")
    assert train.class_names == list(summary.class_names)
    assert len(train.samples) == 280 and len(test.samples) == 120
    assert all(s.box is not None for s in train.samples)


def test_grayscale_share_and_varied_sizes(dataset):
    out, summary, _ = dataset
    modes, sizes = [], set()
    for (relpath,) in read_table(out / "images.txt").values():
        with Image.open(out / "images" / relpath) as image:
            modes.append(image.mode)
            sizes.add(image.size)
    assert modes.count("L") == summary.num_grayscale == 12  # 3% of 400
    assert len(sizes) > 100
    assert all(120 <= side <= 260 for size in sizes for side in size)
    aspects = [w / h for w, h in sizes]
    assert min(aspects) < 0.8 and max(aspects) > 1.25
    assert all(0.7 <= a <= 1.43 for a in aspects)


def test_same_arguments_same_bytes_other_seed_other_bytes(tmp_path):
    first = tree_digest(generate_synthetic(tmp_path / "a", num_classes=3, per_class=4, seed=7).out)
    again = tree_digest(generate_synthetic(tmp_path / "b", num_classes=3, per_class=4, seed=7).out)
    other = tree_digest(generate_synthetic(tmp_path / "c", num_classes=3, per_class=4, seed=8).out)
    assert first == again
    assert first.keys() == other.keys()
    images = [k for k in first if k.endswith(".jpg")]
    assert all(first[k] != other[k] for k in images)


def test_refuses_foreign_folder_and_regenerates_its_own(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(FgcliError, match="not empty"):
        generate_synthetic(foreign, num_classes=2, per_class=2)
    assert (foreign / "holiday.jpg").read_bytes() == b"not ours"

    out = tmp_path / "synth"
    generate_synthetic(out, num_classes=3, per_class=2)
    generate_synthetic(out, num_classes=2, per_class=2)
    assert len(list((out / "images").iterdir())) == 2  # the old third class is gone
    assert len(read_table(out / "images.txt")) == 4
    assert (out / MARKER).is_file()


@pytest.mark.parametrize("kwargs", [dict(num_classes=1), dict(per_class=1), dict(test_fraction=1.0),
                                    dict(seed=-1), dict(num_classes=10**6)])
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(FgcliError):
        generate_synthetic(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_catalogue_is_distinct_stable_and_spread():
    classes = class_catalogue(200)
    assert len({c.name for c in classes}) == 200
    assert class_catalogue(10) == classes[:10]
    assert classes[0].name.endswith("_Tail") and "_Wing_" in classes[0].name
    names = " ".join(c.name for c in classes[:40])
    assert all(colour in names for colour in PALETTE) and all(p in names for p in WING_PATTERNS)

    def distance(a, b):
        return sum(x != y for x, y in zip(vars(a).values(), vars(b).values()))

    # Every prefix is spread out: the first 5 differ in all four parts, the first 35 in three,
    # the first 255 in two; only larger catalogues hold pairs that differ in a single part.
    first_300 = class_catalogue(300)
    for count, parts in ((5, 4), (35, 3), (36, 2), (255, 2), (256, 1), (300, 1)):
        assert min(distance(a, b) for a, b in combinations(first_300[:count], 2)) == parts


def differing_fraction(a: BirdClass, b: BirdClass, pose: Pose) -> tuple[float, np.ndarray, tuple]:
    background = Image.new("RGB", (pose.width, pose.height), (120, 130, 110))
    image_a, box = render_scene(a, pose, background, Jitter(hue=0.01, pattern_phase=(0.3, 0.6)))
    image_b, box_b = render_scene(b, pose, background, Jitter(hue=0.01, pattern_phase=(0.3, 0.6)))
    assert box == box_b
    # "Differs" = visibly: more than 8 grey levels in a channel, not the faint tails of interpolation.
    differs = (np.abs(np.asarray(image_a, np.int16) - np.asarray(image_b, np.int16)) > 8).any(axis=-1)
    return float(differs.mean()), differs, box


BASE = BirdClass("Solid", "Red", "Red", "Red")
ONE_PART_CHANGES = (
    [BirdClass(p, "Blue", "Red", "Red") for p in WING_PATTERNS[1:]]  # another pattern and colour
    + [BirdClass("Spotted", "Red", "Red", "Red"), BirdClass("Solid", "Red", "White", "Red"),
       BirdClass("Solid", "Red", "Red", "Cyan")]
)


@pytest.mark.parametrize("pose", [Pose(200, 200, 0.6), Pose(210, 190, 0.6, angle=25, flip=True, center=(90, 110))])
def test_classes_differ_only_in_a_few_percent_inside_the_bird(pose):
    for other in ONE_PART_CHANGES + [BirdClass("Striped", "Blue", "Blue", "Blue")]:
        fraction, differs, (x, y, w, h) = differing_fraction(BASE, other, pose)
        assert 0.01 <= fraction <= 0.08, (other.name, fraction)
        rows, cols = np.nonzero(differs)
        assert rows.min() >= y and rows.max() < y + h and cols.min() >= x and cols.max() < x + w
        assert differs.sum() < 0.25 * w * h  # most of the bird is the shared shape
    # Spotted vs Barred on otherwise equal birds: patterns alone, between two non-solid classes.
    fraction, _, _ = differing_fraction(BirdClass("Spotted", "Green", "Blue", "White"),
                                        BirdClass("Barred", "Green", "Blue", "White"), pose)
    assert 0.01 <= fraction <= 0.08


@pytest.mark.parametrize("pose", [Pose(120, 120, 0.7, angle=-30), Pose(200, 200, 0.7, angle=15, flip=True)])
def test_all_four_parts_differing_stay_below_8_percent_at_the_largest_scale(pose):
    worst = max(differing_fraction(BirdClass(p, "Red", "Red", "Red"), BirdClass(q, "Blue", "Blue", "Blue"), pose)[0]
                for p in WING_PATTERNS for q in WING_PATTERNS)
    assert 0.05 < worst <= 0.08


def test_box_encloses_the_bird_and_details_vary_within_a_class():
    pose = Pose(220, 150, 0.5, angle=-20, center=(200, 20))  # clamped into the image
    background = Image.new("RGB", (220, 150), (0, 0, 0))
    bird = BirdClass("Striped", "Yellow", "Cyan", "Purple")
    image, (x, y, w, h) = render_scene(bird, pose, background)
    rows, cols = np.nonzero(np.asarray(image).any(axis=-1))
    drawn = np.array([rows.min(), rows.max() + 1, cols.min(), cols.max() + 1])
    assert np.abs(drawn - [y, y + h, x, x + w]).max() <= 1  # faint anti-aliased edges may round to black
    assert x + w == 220 and y == 0
    shifted, _ = render_scene(bird, pose, background, Jitter(hue=0.015, pattern_phase=(0.5, 0.0)))
    assert not np.array_equal(np.asarray(image), np.asarray(shifted))

