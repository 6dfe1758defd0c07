"""Which official layout a folder holds, and which splits that layout has (no torch)."""

from __future__ import annotations

from pathlib import Path

from fgcli.errors import DataError

LAYOUTS = ("cub", "cars", "aircraft", "folder")
LAYOUT_NAMES = {"cub": "CUB-200-2011", "cars": "Stanford Cars", "aircraft": "FGVC-Aircraft", "folder": "class folders"}
LOOKED_FOR = ("CUB-200-2011 (images.txt + images/, in ROOT or ROOT/CUB_200_2011)",
              "Stanford Cars (devkit/cars_meta.mat, in ROOT or ROOT/stanford_cars)",
              "FGVC-Aircraft (data/variants.txt + data/images/, in ROOT or ROOT/fgvc-aircraft-2013b)",
              "class folders (ROOT/<class>/*.jpg or ROOT/{train,val,test}/<class>/*.jpg)")


def detect_layout(root: str | Path) -> str:
    """One of ``LAYOUTS``; an error listing what was looked for when none matches."""
    from fgcli.data.parsers.aircraft import find_aircraft_root
    from fgcli.data.parsers.cars import find_cars_root
    from fgcli.data.parsers.cub import find_cub_root
    from fgcli.data.parsers.folder import find_folder_root

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}", hint="pass --data with an existing folder")
    for layout, find in (("cub", find_cub_root), ("cars", find_cars_root), ("aircraft", find_aircraft_root),
                         ("folder", find_folder_root)):
        if find(root) is not None:
            return layout
    raise DataError(f"cannot tell the dataset layout of {root}: none of these was found: " + "; ".join(LOOKED_FOR),
                    hint="point --data at the extracted dataset folder, or pass --dataset cub|cars|aircraft|folder")


def dataset_splits(root: str | Path, layout: str) -> tuple[str, ...]:
    """The disjoint splits a dataset has (Aircraft's trainval is train + val, so it is not listed)."""
    from fgcli.data.parsers.folder import find_folder_root, split_dirs

    if layout in ("cub", "cars"):
        return ("train", "test")
    if layout == "aircraft":
        return ("train", "val", "test")
    if layout == "folder":
        base = find_folder_root(Path(root)) or Path(root)
        return tuple(s for s in split_dirs(base) if s != "trainval") or ("train",)
    raise DataError(f"unknown dataset layout '{layout}'", hint=f"use auto or one of: {', '.join(LAYOUTS)}")
