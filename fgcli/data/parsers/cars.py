"""Stanford Cars, devkit layout: ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``,
``cars_test_annos_withlabels.mat``, ``cars_train/``, ``cars_test/`` (the files and struct fields
torchvision's StanfordCars reads). Boxes are stored as (x, y, width, height).

The common re-packaged layout (``car_data/car_data/{train,test}/<class>/``) is a class-folder tree,
handled by the folder parser.
"""

from __future__ import annotations

from pathlib import Path

from fgcli.data.index import DatasetSplit, Sample, require_samples
from fgcli.errors import DataError
from fgcli.utils import optional_import

ANNOTATIONS = {"train": ("devkit/cars_train_annos.mat", "cars_train"),
               "test": ("cars_test_annos_withlabels.mat", "cars_test")}
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
RESTORE_HINT = ("restore it from the Stanford Cars devkit (car_devkit.tgz; the test labels are in "
                "cars_test_annos_withlabels.mat, published separately)")


def find_cars_root(root: str | Path) -> Path | None:
    root = Path(root)
    for candidate in (root, root / "stanford_cars"):
        if (candidate / "devkit" / "cars_meta.mat").is_file():
            return candidate
    return None


def _load_variable(path: Path, name: str):
    """One variable of a .mat file, read with scipy (imported only here)."""
    scipy_io = optional_import("scipy.io", "torch", "Reading the Stanford Cars .mat annotations")
    if not path.is_file():
        raise DataError(f"missing annotation file {path}", hint=RESTORE_HINT)
    try:
        contents = scipy_io.loadmat(str(path), squeeze_me=True)
    except Exception as exc:
        raise DataError(f"cannot read {path}: {exc}", hint="the .mat file is damaged; " + RESTORE_HINT) from None
    if name not in contents:
        found = ", ".join(k for k in contents if not k.startswith("__")) or "nothing"
        raise DataError(f"{path} has no '{name}' variable (found: {found})", hint=RESTORE_HINT)
    return contents[name]


def load_cars(root: str | Path, split: str = "train") -> DatasetSplit:
    if split not in ANNOTATIONS:
        raise DataError(f"Stanford Cars has no split '{split}'", hint="use --split train or --split test")
    base = find_cars_root(root)
    if base is None:
        raise DataError(f"{root} has no devkit/cars_meta.mat (nor stanford_cars/devkit/cars_meta.mat)",
                        hint="point --data at the Stanford Cars folder")
    class_names = [str(name) for name in _load_variable(base / "devkit" / "cars_meta.mat", "class_names").tolist()]
    annotation_file, image_dir = ANNOTATIONS[split]
    annotations = _load_variable(base / annotation_file, "annotations")
    missing = [f for f in FIELDS if f not in (annotations.dtype.names or ())]
    if missing:
        raise DataError(f"{base / annotation_file}: the annotations have no field {', '.join(missing)}",
                        hint="the test split needs cars_test_annos_withlabels.mat, not cars_test_annos.mat; "
                             + RESTORE_HINT)
    samples = []
    for number, record in enumerate(annotations.ravel().tolist() if annotations.ndim else [annotations.item()], 1):
        fields = dict(zip(annotations.dtype.names, record))
        label = int(fields["class"])
        if not 1 <= label <= len(class_names):
            raise DataError(f"{base / annotation_file}: annotation {number} ({fields['fname']}) has class {label}, "
                            f"outside 1..{len(class_names)} (cars_meta.mat)", hint=RESTORE_HINT)
        x1, y1, x2, y2 = (float(fields[k]) for k in FIELDS[:4])
        samples.append(Sample(str(base / image_dir / str(fields["fname"])), label - 1, box=(x1, y1, x2 - x1, y2 - y1)))
    return require_samples(DatasetSplit(base, "cars", split, class_names, samples),
                           f"{base / annotation_file} has no annotations")
