"""The hostile-input campaign: every bad file or value a careless user can give ends in a clear FgcliError
(file, line where there is one, what to do), or, where the input is valid, works; nothing is half-written and
no pickled code runs. The table in docs/architecture.md ("What bad input gets") lists the same cases.
"""

from __future__ import annotations

import builtins
import csv
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from layouts import write_aircraft, write_cub
from PIL import Image
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.data import load_split
from fgcli.data.images import MAX_ASPECT_RATIO, BadImageError, load_rgb
from fgcli.data.preprocess import PreprocessConfig, preprocess_eval
from fgcli.errors import DataError, FgcliError

REPO = Path(__file__).resolve().parents[1]
cli = CliRunner()


def run_fgcli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed console script (beside this Python), importing this checkout's fgcli."""
    exe = Path(sys.executable).with_name("fgcli")
    if not exe.is_file():
        pytest.skip(f"no fgcli console script beside {sys.executable}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def one_line(text: str) -> str:
    """Output with rich's line breaks undone, for asserting on messages whatever the console width."""
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------ index files
def _crlf_bom_blank(path: Path) -> None:
    """Re-save as Windows tools and some mirrors do: a UTF-8 BOM, CRLF endings, blank lines between rows."""
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n\r\n"))


def test_cub_index_with_bom_crlf_and_blank_lines_is_read_as_the_clean_one(tmp_path):
    clean = load_split(write_cub(tmp_path / "clean"), "train")
    root = write_cub(tmp_path / "dirty")
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt"):
        _crlf_bom_blank(root / "CUB_200_2011" / name)
    dirty = load_split(root, "train")
    assert dirty.class_names == clean.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert [(Path(s.path).name, s.label, s.box) for s in dirty.samples] == \
           [(Path(s.path).name, s.label, s.box) for s in clean.samples]


def test_aircraft_lists_with_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    root = write_aircraft(tmp_path)
    for path in (root / "fgvc-aircraft-2013b" / "data").glob("*.txt"):
        _crlf_bom_blank(path)
    split = load_split(root, "test")
    assert split.class_names == ["707-320", "A300B4"]
    assert [s.label for s in split.samples] == [0, 0, 1, 1]


def test_an_index_file_that_is_not_utf8_names_its_line(tmp_path):
    root = write_cub(tmp_path)
    classes = root / "CUB_200_2011" / "classes.txt"
    classes.write_bytes("1 001.Black_footed_Albatross\n2 002.M\xe9sange\n".encode("latin-1"))
    with pytest.raises(DataError) as error:
        load_split(root, "train")
    assert f"{classes}:2: not UTF-8 text" in error.value.message and "UTF-8" in error.value.hint


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("file, old, new, message", [
    ("images.txt", "2 001.", "1 001.", "images.txt:2: id 1 already appears on line 1"),
    ("image_class_labels.txt", "4 2\n", "4 7\n", "image id 4 has label 7, outside 1..2 (classes.txt), on line 4"),
    ("train_test_split.txt", "1 1\n", "1 2\n", "train_test_split.txt:1: image id 1 has 2; expected 1 (train) or 0"),
    ("train_test_split.txt", "1 1\n", "1 yes\n", "train_test_split.txt:1: 'yes' is not a number"),
    ("image_class_labels.txt", "1 1\n", "", "image_class_labels.txt has no line for image id 1"),
])
def test_damaged_cub_index_is_refused_naming_file_and_line(tmp_path, file, old, new, message):
    root = write_cub(tmp_path)
    _edit(root / "CUB_200_2011" / file, old, new)
    with pytest.raises(DataError, match="CUB_200_2011") as error:
        load_split(root, "train")
    assert message in error.value.message and error.value.hint


def test_a_missing_cub_index_file_is_named_with_where_to_get_it(tmp_path):
    root = write_cub(tmp_path)
    (root / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(DataError, match="missing annotation file .*train_test_split.txt") as error:
        load_split(root, "train")
    assert "CUB_200_2011.tgz" in error.value.hint


def test_aircraft_image_listed_twice_is_refused_with_both_lines(tmp_path):
    root = write_aircraft(tmp_path)
    listing = root / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    first = listing.read_text().splitlines()[0]
    listing.write_text(listing.read_text() + first + "\n")
    with pytest.raises(DataError, match=r"images_variant_test.txt:5: image \d+ already appears on line 1"):
        load_split(root, "test")


def test_file_names_with_spaces_and_non_ascii_are_accepted(tmp_path):
    root = write_cub(tmp_path, classes=("001.Mésange bleue", "002.Rouge-gorge familier"))
    split = load_split(root, "test")
    assert split.class_names == ["001.Mésange bleue", "002.Rouge-gorge familier"]
    assert all(Path(s.path).is_file() for s in split.samples)
    assert " " in split.samples[0].path and "é" in split.samples[0].path
    folder = tmp_path / "folder"
    for name in ("Æsop's fable", "東京"):
        (folder / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / name / "an image é.png")
    assert load_split(folder, "train").counts() == {"Æsop's fable": 1, "東京": 1}


def test_an_empty_class_is_kept_and_data_check_warns_about_it(tmp_path):
    from fgcli.data.check import check_dataset

    root = tmp_path / "data"
    for split in ("train", "test"):
        for name in ("alpha", "beta"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (40, 40), (20, 200, 20)).save(root / split / name / "a.png")
    (root / "train" / "gamma").mkdir()  # a class folder with no images
    split = load_split(root, "train")
    assert split.counts() == {"alpha": 1, "beta": 1, "gamma": 0}
    report = check_dataset(root)
    assert any("1 classes have no readable train images: gamma" in w for w in report.warnings)


def test_a_split_with_no_images_is_an_error_naming_where_the_split_comes_from(tmp_path):
    root = write_cub(tmp_path / "cub")
    _edit(root / "CUB_200_2011" / "train_test_split.txt", "3 0\n", "3 1\n")
    _edit(root / "CUB_200_2011" / "train_test_split.txt", "6 0\n", "6 1\n")
    with pytest.raises(DataError, match="the 'test' split of .* has no images: .*train_test_split.txt marks no image 0"):
        load_split(root, "test")
    folder = tmp_path / "folder"
    (folder / "train" / "alpha").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "train" / "alpha" / "a.png")
    (folder / "test" / "alpha").mkdir(parents=True)
    (folder / "test" / "alpha" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="the 'test' split .* has no images: no image files"):
        load_split(folder, "test")


# ------------------------------------------------------------------------------------------------------ images
def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header is patched to declare ``width`` x ``height`` (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def exif_rotated_jpeg(path: Path) -> Path:
    """A 40x20 JPEG, left half red, whose EXIF says "rotate 90 degrees clockwise to view" (orientation 6)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize("name, make", [
    ("cmyk.jpg", lambda p: Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(p)),
    ("sixteen.png", lambda p: Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(p)),
    ("palette_alpha.png", lambda p: Image.new("P", (30, 20), 0).save(p, transparency=0)),
    ("lossless.webp", lambda p: Image.new("RGB", (30, 20), (10, 20, 30)).save(p, lossless=True)),
    ("scan.tiff", lambda p: Image.new("RGB", (30, 20), (10, 20, 30)).save(p)),
    ("anim.gif", lambda p: Image.new("P", (30, 20), 1).save(p)),
])
def test_every_common_image_format_and_mode_loads_as_rgb(tmp_path, name, make):
    make(tmp_path / name)
    img = load_rgb(tmp_path / name)
    assert img.mode == "RGB" and img.size == (30, 20)
    assert preprocess_eval(img, PreprocessConfig(16, 18)).shape == (3, 16, 16)


def test_exif_orientation_is_applied_the_same_for_training_and_deployment(tmp_path):
    import torch

    from fgcli.data.index import DatasetSplit, Sample
    from fgcli.data.torch_dataset import ImageDataset
    from fgcli.data.transforms import eval_transform

    path = exif_rotated_jpeg(tmp_path / "phone.jpg")
    upright = load_rgb(path)
    assert upright.size == (20, 40)  # turned upright: what a photo viewer shows
    top, bottom = np.asarray(upright)[2, 10], np.asarray(upright)[-3, 10]
    assert top[0] > 200 and top[1] < 60 and bottom[0] < 60  # the red half is now on top
    cfg = PreprocessConfig(16, 18)
    deployed = preprocess_eval(upright, cfg)  # what predict, eval, the ONNX check and calibration feed
    trained = ImageDataset(DatasetSplit(tmp_path, "folder", "test", ["a"], [Sample(str(path), 0)]),
                           eval_transform(cfg))[0][0]
    torch.testing.assert_close(trained, torch.from_numpy(deployed), atol=2e-2, rtol=0)


def test_a_one_pixel_image_is_valid_input(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    array = preprocess_eval(load_rgb(tmp_path / "dot.png"), PreprocessConfig(32, 36))
    assert array.shape == (3, 32, 32) and np.ptp(array[0]) == 0


@pytest.mark.parametrize("width, height, reason", [
    (100_000, 100_000, "more than the 89,478,485 pixels fgcli decodes"),  # PIL raises DecompressionBombError itself
    (12_000, 10_000, "more than the 89,478,485 pixels fgcli decodes"),  # PIL only warns, then decodes 360 MB
    (20_000_000, 1, f"aspect ratio above {MAX_ASPECT_RATIO}:1"),  # 2.5 KB file, ~311 GB after the resize
])
def test_absurd_image_sizes_are_refused_from_the_header_before_decoding(tmp_path, width, height, reason):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(width, height))
    start = time.perf_counter()
    with pytest.raises(BadImageError) as error:
        load_rgb(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in error.value.message and reason in error.value.reason
    assert f"{width}x{height}" in error.value.reason or f"{width * height:,} pixels" in error.value.reason


def test_the_resize_refuses_an_output_it_cannot_hold_before_allocating_it():
    img = Image.new("RGB", (100, 1))  # within the aspect limit; at --resize-size 2048 it would be 204800x2048
    with pytest.raises(DataError, match="resized to 204800x2048 would exceed the 67,108,864 pixels"):
        preprocess_eval(img, PreprocessConfig(2048, 2048))


@pytest.fixture
def hostile_image_folder(tmp_path) -> tuple[Path, dict[str, str]]:
    """Two good images and one of each kind of bad one; name -> the reason predict must give."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate(((250, 10, 10), (10, 250, 10))):
        Image.new("RGB", (40, 40), colour).save(folder / f"good_{i}.png")
    Image.new("L", (20_000_000, 1)).save(folder / "long.png")  # a valid 2.5 KB PNG
    (folder / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    (folder / "text.jpg").write_text("this is a text file named .jpg\n")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:600])
    (folder / "empty.jpg").write_bytes(b"")
    reasons = {"long.png": "aspect ratio above", "bomb.png": "more than the", "text.jpg": "not an image file",
               "truncated.jpg": "truncated", "empty.jpg": "the file is empty"}
    return folder, reasons


def test_hostile_images_are_reported_per_image_and_the_others_predicted(hostile_image_folder, tmp_path):
    from fake_tensorrt import write_classifier_onnx

    from fgcli.training.predict import find_images, predict_paths, write_predictions_csv
    from fgcli.runtime import open_runner

    folder, reasons = hostile_image_folder
    model = write_classifier_onnx(tmp_path / "model.onnx")
    with open_runner(model, device="cpu") as runner:
        predictions = predict_paths(runner, find_images(folder), batch_size=3)
    by_name = {Path(p.path).name: p for p in predictions}
    for name, reason in reasons.items():
        assert reason in by_name[name].error and str(folder / name) in by_name[name].error
        assert by_name[name].classes == []
    assert [len(by_name[f"good_{i}.png"].classes) for i in (0, 1)] == [3, 3]
    rows = list(csv.DictReader(open(write_predictions_csv(tmp_path / "p.csv", predictions, 3))))
    assert len(rows) == 7 and sum(bool(r["class_1"]) for r in rows) == 2


def test_a_memory_error_in_one_image_does_not_end_the_run(monkeypatch, tmp_path):
    from fake_tensorrt import write_classifier_onnx

    import fgcli.training.batches as batches
    from fgcli.training.predict import predict_paths
    from fgcli.runtime import open_runner

    paths = []
    for i in range(3):
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    real = batches.preprocess_eval

    def exhausted_on_the_second(img, cfg):
        if img.getpixel((0, 0))[0] == 40:
            raise MemoryError
        return real(img, cfg)

    monkeypatch.setattr(batches, "preprocess_eval", exhausted_on_the_second)
    with open_runner(write_classifier_onnx(tmp_path / "model.onnx"), device="cpu") as runner:
        predictions = predict_paths(runner, paths)
    assert [bool(p.classes) for p in predictions] == [True, False, True]
    assert predictions[1].error == f"{paths[1]}: not enough memory to load and preprocess it"


def test_predict_console_script_writes_the_csv_despite_hostile_images(hostile_image_folder, tmp_path):
    from fake_tensorrt import write_classifier_onnx

    folder, reasons = hostile_image_folder
    out = tmp_path / "predictions.csv"
    proc = run_fgcli("predict", write_classifier_onnx(tmp_path / "model.onnx"), folder, "--out", out,
                     "--device", "cpu")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr  # unreadable files are listed
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out))}
    assert set(rows) == {*reasons, "good_0.png", "good_1.png"}
    assert all(reason in rows[name]["error"] for name, reason in reasons.items())


def test_predict_on_an_empty_folder_is_an_error(tmp_path):
    from fake_tensorrt import write_classifier_onnx

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    proc = run_fgcli("predict", write_classifier_onnx(tmp_path / "model.onnx"), tmp_path / "empty",
                     "--out", tmp_path / "p.csv", "--device", "cpu")
    assert proc.returncode != 0
    assert "no images found under" in one_line(proc.stderr + proc.stdout) and "Traceback" not in proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_topk_above_the_class_count_is_refused_by_the_library_and_defaults_to_at_most_the_classes(tmp_path):
    from fake_tensorrt import write_classifier_onnx

    from fgcli.training.predict import predict_paths
    from fgcli.runtime import open_runner

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    with open_runner(write_classifier_onnx(tmp_path / "model.onnx"), device="cpu") as runner:
        with pytest.raises(FgcliError, match="top-k 4 is not between 1 and the 3 classes"):
            predict_paths(runner, [str(tmp_path / "a.png")], topk=4)
        for batch_size in (0, -1):
            with pytest.raises(FgcliError, match=f"batch size {batch_size} must be at least 1"):
                predict_paths(runner, [str(tmp_path / "a.png")], batch_size=batch_size)
        assert len(predict_paths(runner, [str(tmp_path / "a.png")])[0].classes) == 3  # default 5, capped


# ------------------------------------------------------------------------------------------------- checkpoints
class WritesMarker:
    """Unpickling this opens (creates) the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


@pytest.fixture
def malicious_checkpoint(tiny_checkpoint, tmp_path) -> tuple[Path, Path]:
    """A real fgcli checkpoint plus a payload that creates ``marker`` when unpickled."""
    import torch

    marker = tmp_path / "PAYLOAD_RAN"
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    ckpt["notes"] = WritesMarker(marker)
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    torch.save(ckpt, path)
    return path, marker


def test_the_malicious_checkpoint_fixture_would_run_its_payload_if_unpickled(malicious_checkpoint):
    import torch

    path, marker = malicious_checkpoint
    torch.load(path, weights_only=False)  # what fgcli must never do
    assert marker.exists()


@pytest.mark.parametrize("command", ["eval", "predict", "export", "report", "cam", "resume", "weights"])
def test_no_command_runs_the_code_a_checkpoint_carries(malicious_checkpoint, tiny_dataset, tmp_path, command):
    path, marker = malicious_checkpoint
    image = next((tiny_dataset / "test" / "alpha").iterdir())
    train = ["train", "--data", str(tiny_dataset), "--img-size", "32", "--resize-size", "36", "--epochs", "1",
             "--batch-size", "8", "--workers", "0", "--device", "cpu"]
    args = {
        "eval": ["eval", str(path), "--data", str(tiny_dataset), "--device", "cpu"],
        "predict": ["predict", str(path), str(image), "--out", str(tmp_path / "p.csv"), "--device", "cpu"],
        "export": ["export", str(path), "--out", str(tmp_path / "export")],
        "report": ["report", str(path), "--data", str(tiny_dataset), "--out", str(tmp_path / "report")],
        "cam": ["cam", str(path), str(image), "--out", str(tmp_path / "cam"), "--device", "cpu"],
        "resume": [*train, "--out", str(path.parent), "--resume"],
        "weights": [*train, "--out", str(tmp_path / "fresh"), "--weights", str(path)],
    }[command]
    result = cli.invoke(app, args)
    assert result.exit_code not in (0, None) and not marker.exists()
    assert isinstance(result.exception, FgcliError), result.output
    assert f"refused to load {path}" in result.exception.message
    assert "loading it would call io.open" in result.exception.message


def test_malicious_checkpoint_through_the_console_script(malicious_checkpoint, tiny_dataset):
    path, marker = malicious_checkpoint
    proc = run_fgcli("eval", path, "--data", tiny_dataset, "--device", "cpu")
    assert proc.returncode != 0 and not marker.exists()
    assert f"refused to load {path}" in one_line(proc.stderr) and "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_a_damaged_checkpoint_is_a_clear_error(tiny_checkpoint, tmp_path, damage):
    from fgcli.runtime import open_runner

    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "best.pt"
    path.write_bytes({"truncated": data[: len(data) // 2], "random bytes": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(FgcliError) as error:
        open_runner(path, device="cpu")
    assert str(path) in error.value.message and "RUN/best.pt" in error.value.hint
    assert "weights_only=False" not in str(error.value)


def test_checkpoint_weights_that_do_not_fit_its_description_are_refused(tiny_checkpoint, tmp_path):
    import torch

    from fgcli.runtime import open_runner

    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    ckpt["class_names"] = [*ckpt["class_names"], "delta"]
    torch.save(ckpt, tmp_path / "names.pt")
    with pytest.raises(FgcliError, match="lists 4 class names for 3 classes"):
        open_runner(tmp_path / "names.pt", device="cpu")
    ckpt["num_classes"] = 4
    torch.save(ckpt, tmp_path / "shapes.pt")
    with pytest.raises(FgcliError, match="do not fit a baseline model with a resnet18 backbone and 4 classes"):
        open_runner(tmp_path / "shapes.pt", device="cpu")


def test_resume_from_a_run_of_another_method_names_both(tiny_checkpoint, tiny_dataset, tmp_path):
    import shutil

    from conftest import tiny_train_config

    from fgcli.training.train import train

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "last.pt")
    with pytest.raises(FgcliError) as error:
        train(tiny_train_config(tiny_dataset, run, method="tdsa", resume=True))
    assert "is a baseline run (resnet18), but this run asks for --method tdsa" in error.value.message
    assert "--method baseline" in error.value.hint


# ------------------------------------------------------------------------------------------ model files (runners)
def _set_metadata(path: Path, **props: str) -> Path:
    import onnx

    model = onnx.load(str(path))
    current = {p.key: p.value for p in model.metadata_props}
    current.update({f"fgcli.{k}": v for k, v in props.items()})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, current)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case, message", [
    ("random bytes", "ONNX Runtime cannot load"),
    ("truncated", "ONNX Runtime cannot load"),
    ("no metadata", "lacks the fgcli metadata fgcli.class_names"),
    ("more class names", "lists 4 class names; every prediction would carry the wrong name"),
    ("fewer class names", "lists 2 class names; every prediction would carry the wrong name"),
    ("other input size", "but its fgcli metadata says images of (batch, 3, 16, 16)"),
])
def test_an_onnx_model_that_is_damaged_or_misdescribed_is_refused_when_opened(tmp_path, case, message):
    from fake_tensorrt import write_classifier_onnx

    from fgcli.runtime import open_runner

    path = write_classifier_onnx(tmp_path / "model.onnx", metadata=case != "no metadata")
    if case == "random bytes":
        path.write_bytes(os.urandom(2048))
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif case == "more class names":
        _set_metadata(path, class_names=json.dumps(["alpha", "beta", "gamma", "delta"]))
    elif case == "fewer class names":
        _set_metadata(path, class_names=json.dumps(["alpha", "beta"]))
    elif case == "other input size":
        _set_metadata(path, img_size="16", resize_size="18")
    with pytest.raises(FgcliError) as error:
        open_runner(path, device="cpu")
    assert str(path) in error.value.message and message in error.value.message
    assert "fgcli export" in error.value.hint


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_and_eval_refuse_an_onnx_listing_more_classes_than_it_outputs(tmp_path, tiny_dataset, command):
    from fake_tensorrt import write_classifier_onnx

    path = _set_metadata(write_classifier_onnx(tmp_path / "model.onnx"),
                         class_names=json.dumps(["x", "alpha", "beta", "gamma"]))
    args = {"predict": ["predict", str(path), str(tiny_dataset / "test"), "--out", str(tmp_path / "p.csv")],
            "eval": ["eval", str(path), "--data", str(tiny_dataset)]}[command]
    result = cli.invoke(app, [*args, "--device", "cpu"])
    assert isinstance(result.exception, FgcliError) and "lists 4 class names" in result.exception.message
    assert not (tmp_path / "p.csv").exists()


def test_report_on_an_export_folder_with_a_damaged_model_is_a_clear_error(tmp_path, tiny_dataset):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.onnx").write_bytes(os.urandom(1024))
    result = cli.invoke(app, ["report", str(export), "--data", str(tiny_dataset), "--out", str(tmp_path / "report"),
                              "--formats", "onnx-fp32", "--iterations", "1", "--warmup", "0", "--device", "cpu"])
    assert isinstance(result.exception, FgcliError), result.output
    assert str(export / "model.onnx") in result.exception.message


def test_random_bytes_as_an_engine_and_a_sidecar_that_misdescribes_it_are_refused(monkeypatch, tmp_path):
    from fake_tensorrt import install_fakes, write_classifier_onnx

    from fgcli.export.tensorrt import build_engine
    from fgcli.runtime import open_runner
    from fgcli.runtime.tensorrt_runner import sidecar_path

    install_fakes(monkeypatch, "10.3.0")
    engine = build_engine(write_classifier_onnx(tmp_path / "model.onnx")).engine_path
    sidecar = json.loads(sidecar_path(engine).read_text())
    sidecar["fgcli"]["preprocess"]["img_size"] = 16
    sidecar["fgcli"]["preprocess"]["resize_size"] = 18
    sidecar_path(engine).write_text(json.dumps(sidecar))
    with pytest.raises(FgcliError, match=r"takes images of \(3, 8, 8\), but its sidecar's preprocessing gives"):
        open_runner(engine, device="cuda")
    engine.write_bytes(os.urandom(4096))
    with pytest.raises(FgcliError, match="TensorRT could not load .*corrupt or foreign plan"):
        open_runner(engine, device="cuda")
    sidecar_path(engine).unlink()
    with pytest.raises(FgcliError, match="engine.json is missing"):
        open_runner(engine, device="cuda")


# ------------------------------------------------------------------------------------------------------ writes
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    from fgcli.utils import STALE_TMP_SECONDS, write_text_atomic

    (tmp_path / "last.pt").write_text("old")
    dead = tmp_path / f".last.pt.{_dead_pid()}.abcd1234.tmp"
    alive = tmp_path / f".best.pt.{os.getppid()}.abcd1234.tmp"  # a running writer (the pytest parent)
    unversioned_old = tmp_path / ".last.pt.k2j4h5g6.tmp"  # an earlier fgcli's name: no pid
    unversioned_new = tmp_path / ".last.pt.q9w8e7r6.tmp"
    strangers = tmp_path / ".notes.txt.abcdefgh.tmp"  # no notes.txt beside it: not an atomic write of ours
    for path in (dead, alive, unversioned_old, unversioned_new, strangers):
        path.write_bytes(b"x" * 1000)
    long_ago = time.time() - STALE_TMP_SECONDS - 60
    for path in (unversioned_old, strangers):
        os.utime(path, (long_ago, long_ago))
    write_text_atomic(tmp_path / "metrics.jsonl", "{}\n")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([alive.name, unversioned_new.name, strangers.name, "last.pt", "metrics.jsonl"])


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A folder writes fail in with EACCES or EROFS (as root, permission bits do not stop writes: a ro mount)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    (folder / "last.pt").write_text("old")
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("running as root and cannot mount a read-only folder")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_read_only_output_folder_is_a_clear_error_naming_it(read_only_dir):
    from fgcli.utils import write_json_atomic

    with pytest.raises(FgcliError) as error:
        write_json_atomic(read_only_dir / "last.pt", {"new": True})
    assert f"the folder {read_only_dir} is not writable" in error.value.message and "--out" in error.value.hint
    assert (read_only_dir / "last.pt").read_text() == "old"


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs (needs root and mount); the test is skipped elsewhere."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_a_clear_error_keeping_the_old_files(full_disk):
    import torch

    from fgcli.training.checkpoint import save_checkpoint
    from fgcli.utils import write_text_atomic

    (full_disk / "last.pt").write_text("old checkpoint")
    (full_disk / "report.md").write_text("old report")
    with pytest.raises(FgcliError, match=f"cannot write {full_disk / 'last.pt'}: torch.save failed with .* MB free"):
        save_checkpoint(full_disk / "last.pt", {"model": torch.zeros(1 << 20)})
    with pytest.raises(FgcliError, match=f"no space left in {full_disk}"):
        write_text_atomic(full_disk / "report.md", "x" * (2 << 20))
    assert (full_disk / "last.pt").read_text() == "old checkpoint"
    assert (full_disk / "report.md").read_text() == "old report"
    assert sorted(p.name for p in full_disk.iterdir()) == ["last.pt", "report.md"]


@pytest.mark.slow
def test_training_onto_a_full_disk_stops_with_a_clear_error(full_disk, tmp_path):
    from conftest import write_tiny_folder_dataset

    data = write_tiny_folder_dataset(tmp_path / "data", per_split={"train": 3, "test": 1})
    proc = run_fgcli("train", "--data", data, "--out", full_disk / "run", "--img-size", "32",
                     "--resize-size", "36", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot write {full_disk / 'run'}" in one_line(proc.stderr)
    assert not [p.name for p in (full_disk / "run").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_kill_9_during_training_and_checkpoint_writes_never_leaves_a_partial_checkpoint(tmp_path):
    """Kill the trainer with SIGKILL three times: while last.pt's temporary file is being written, in the middle
    of an epoch, and in a write again. Each time last.pt must load (the old or the new file, never a partial one);
    the next run resumes, removes the dead writer's temporaries, and the last one runs to the end."""
    import shutil

    from fgcli.training.checkpoint import load_checkpoint

    exe = Path(sys.executable).with_name("fgcli")
    if not exe.is_file():
        pytest.skip(f"no fgcli console script beside {sys.executable}")
    from conftest import write_tiny_folder_dataset

    data = write_tiny_folder_dataset(tmp_path / "data", per_split={"train": 3, "test": 1})
    run, epochs = tmp_path / "run", 4
    args = [str(exe), "train", "--data", str(data), "--out", str(run), "--img-size", "32", "--resize-size", "36",
            "--epochs", str(epochs), "--batch-size", "4", "--workers", "0", "--device", "cpu", "--lr", "0.05",
            "--warmup-epochs", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed_at = []
    for moment, delay in (("writing last.pt", 0.0), ("mid-epoch", 0.15), ("writing last.pt", 0.0)):
        if run.exists() and not (run / "last.pt").exists():
            shutil.rmtree(run)  # killed before its first checkpoint: nothing to resume
        resume = ["--resume"] if (run / "last.pt").exists() else []
        before = (run / "last.pt").stat().st_mtime_ns if resume else 0
        proc = subprocess.Popen([*args, *resume], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if moment == "writing last.pt" and any(run.glob(".last.pt.*.tmp")):
                break
            if moment == "mid-epoch" and (run / "last.pt").exists() and (run / "last.pt").stat().st_mtime_ns > before:
                time.sleep(delay)
                break
            time.sleep(0.003)
        assert proc.poll() is None, f"the run ended before it could be killed {moment}"
        proc.kill()
        proc.wait()
        killed_at.append(moment)
        if (run / "last.pt").exists():
            load_checkpoint(run / "last.pt")  # raises if partial
    assert (run / "last.pt").exists()
    final = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert load_checkpoint(run / "last.pt")["epoch"] == epochs
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------- absurd library-side values
def test_an_image_size_below_the_backbone_stride_is_refused(tiny_dataset, tmp_path):
    from conftest import tiny_train_config

    from fgcli.training.train import train

    for size in (16, 0, -32):
        with pytest.raises(FgcliError, match=f"--img-size {size} is smaller than the 32 px"):
            train(tiny_train_config(tiny_dataset, tmp_path / "run", img_size=size))


def test_exporting_below_the_backbone_stride_is_refused(tiny_checkpoint):
    from fgcli.training.checkpoint import load_checkpoint
    from fgcli.export.onnx import export_preprocess

    with pytest.raises(FgcliError, match="--img-size 16 is smaller than the 32 px"):
        export_preprocess(load_checkpoint(tiny_checkpoint), 16)
    assert export_preprocess(load_checkpoint(tiny_checkpoint), 64).resize_size == 72


def test_a_calibration_size_larger_than_the_split_uses_all_and_says_so(tiny_dataset):
    from fgcli.calibration.dataset import CalibrationWarning, build_calibration_set

    with pytest.warns(CalibrationWarning, match="has only 24 images, fewer than the 1000 asked for: using all"):
        calibration = build_calibration_set(tiny_dataset, PreprocessConfig(32, 36), size=1000)
    assert len(calibration) == 24
