"""Writers of tiny datasets in each official layout (real file names and formats), for parser tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _image(path: Path, size=(40, 30), colour=(120, 60, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_cub(root: Path, classes=("001.Black_footed_Albatross", "002.Laysan_Albatross"), per_class=3) -> Path:
    """CUB_200_2011: ids 1..N, the last image of each class in test."""
    base = root / "CUB_200_2011"
    images, labels, split, boxes = [], [], [], []
    image_id = 0
    for label, name in enumerate(classes, start=1):
        for i in range(per_class):
            image_id += 1
            rel = f"{name}/{name.split('.', 1)[1]}_{i:04d}.jpg"
            _image(base / "images" / rel)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {label}")
            split.append(f"{image_id} {0 if i == per_class - 1 else 1}")
            boxes.append(f"{image_id} 1.0 2.0 30.0 20.0")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (base / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(classes, start=1)))
    return root


def write_cars(root: Path, class_names=("AM General Hummer SUV 2000", "Acura RL Sedan 2012"), per_class=2) -> Path:
    """Stanford Cars devkit layout with .mat files in the devkit's struct format."""
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([list(class_names)], dtype=object)})
    for annotation_file, folder in (("devkit/cars_train_annos.mat", "cars_train"),
                                    ("cars_test_annos_withlabels.mat", "cars_test")):
        records = []
        for label in range(1, len(class_names) + 1):
            for i in range(per_class):
                fname = f"{len(records) + 1:05d}.jpg"
                _image(base / folder / fname)
                records.append((5, 6, 35, 25, label, fname))
        dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
        annotations = np.array([records], dtype=dtype)
        savemat(base / annotation_file, {"annotations": annotations})
    return root


def write_aircraft(root: Path, variants=("707-320", "A300B4"), families=("Boeing 707", "A300"),
                   manufacturers=("Boeing", "Airbus"), per_split=2) -> Path:
    """fgvc-aircraft-2013b/data with the three levels and four splits; images 40x50 with the banner."""
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    for name, values in (("variants.txt", variants), ("families.txt", families), ("manufacturers.txt", manufacturers)):
        (data / name).write_text("\n".join(values) + "\n")
    image_id = 1000000
    lists = {(level, split): [] for level in ("variant", "family", "manufacturer")
             for split in ("train", "val", "trainval", "test")}
    for split in ("train", "val", "test"):
        for k in range(len(variants)):
            for _ in range(per_split):
                image_id += 1
                _image(data / "images" / f"{image_id}.jpg", size=(40, 50))
                for level, values in (("variant", variants), ("family", families), ("manufacturer", manufacturers)):
                    lists[(level, split)].append(f"{image_id} {values[k]}")
                    if split in ("train", "val"):
                        lists[(level, "trainval")].append(f"{image_id} {values[k]}")
    for (level, split), lines in lists.items():
        (data / f"images_{level}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root
