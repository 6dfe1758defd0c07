"""Issue 21: every bad input and interrupted run gets a clear, honest answer: user text printed as text (never
as rich markup), SIGTERM kept like Ctrl-C, hints that agree, messages instead of tracebacks, a line instead of
silence. Each test covers one case of docs/architecture.md's table "What bad input gets"."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from layouts import write_cub
from PIL import Image

from test_hostile_inputs import read_only_dir  # noqa: F401 (a fixture)

from fgcli.errors import FgcliError

#: class names that are rich markup: a closing tag with nothing to close, a style, an unknown tag
MARKUP_CLASSES = ("[/]", "[bold]", "[juvenile]")


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str]:
    """The console-script entry point in process: (exit status, stdout and stderr)."""
    from fgcli.cli import main

    monkeypatch.setattr(sys, "argv", ["fgcli", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out + captured.err


def train_args(data: Path, out: Path, *extra) -> list:
    return ["train", "--data", data, "--out", out, "--backbone", "resnet18", "--img-size", "32", "--resize-size",
            "36", "--batch-size", "4", "--workers", "0", "--device", "cpu", *extra]


# --------------------------------------------------------------------------- markup in user text
@pytest.fixture(scope="module")
def markup_dataset(tmp_path_factory) -> Path:
    """A CUB dataset whose class names (classes.txt) are rich markup, in a folder named like markup too."""
    root = write_cub(tmp_path_factory.mktemp("markup") / "[bold]data", classes=("001.a", "002.b", "003.c"), per_class=4)
    (root / "CUB_200_2011" / "classes.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(MARKUP_CLASSES, 1)))
    return root


@pytest.fixture(scope="module")
def markup_onnx(markup_dataset, tmp_path_factory) -> Path:
    """An ONNX model (no torch needed) whose fgcli metadata lists the markup class names."""
    import onnx
    from fake_tensorrt import write_classifier_onnx
    from fake_tensorrt.onnx_models import FGCLI_METADATA
    from onnx import helper

    path = write_classifier_onnx(tmp_path_factory.mktemp("markup_onnx") / "[juvenile]model.onnx", size=32)
    model = onnx.load(str(path))
    helper.set_model_props(model, {**FGCLI_METADATA, "fgcli.img_size": "32", "fgcli.resize_size": "36",
                                   "fgcli.class_names": json.dumps(MARKUP_CLASSES)})
    onnx.save(model, str(path))
    return path


def test_styled_escapes_every_value_and_keeps_the_template_style():
    from fgcli.console import styled

    text = styled("[yellow]note:[/] {} and {}", "[/]", "C:\\runs\\")
    assert text.plain == "note: [/] and C:\\runs\\"
    assert [span.style for span in text.spans] == ["yellow"]  # the values carry no style of their own


@pytest.mark.parametrize("command", ["data-check", "eval", "predict", "calib"])
def test_markup_in_class_names_and_paths_is_printed_as_text(command, markup_dataset, markup_onnx, tmp_path,
                                                            monkeypatch, capsys):
    """Before: eval crashed with rich's MarkupError after the whole evaluation; `[bold]` vanished from paths."""
    images = tmp_path / "[bold]photos"
    shutil.copytree(markup_dataset / "CUB_200_2011" / "images" / "001.a", images)
    (images / "[juvenile].jpg").write_bytes(b"")  # unreadable: its path is printed
    args = {"data-check": ["data", "check", markup_dataset],
            "eval": ["eval", markup_onnx, "--data", markup_dataset],
            "predict": ["predict", markup_onnx, images, "--out", tmp_path / "[/]p.csv"],
            "calib": ["calib", markup_onnx, "--data", markup_dataset, "--size", "3", "--out", tmp_path / "[bold]c.npz"],
            }[command]
    code, output = run_cli(args, monkeypatch, capsys)
    assert code == 0 and "MarkupError" not in output, output[-3000:]
    expected = {"data-check": [*MARKUP_CLASSES, "[bold]data"], "eval": [*MARKUP_CLASSES, "[juvenile]model.onnx"],
                "predict": ["[juvenile].jpg", "[bold]photos", "[/]p.csv"], "calib": ["[bold]c.npz"]}[command]
    for text in expected:
        assert text in output, (text, output[-3000:])


@pytest.fixture(scope="module")
def markup_run(markup_dataset, tmp_path_factory) -> Path:
    """A one-epoch run on the markup classes, written into a folder named like markup."""
    from conftest import tiny_train_config

    from fgcli.training.train import train

    out = tmp_path_factory.mktemp("markup_run") / "[juvenile]run"
    train(tiny_train_config(markup_dataset, out, epochs=1, batch_size=4))
    return out


def test_training_and_eval_of_a_checkpoint_print_markup_as_text(markup_dataset, markup_run, monkeypatch, capsys):
    code, output = run_cli(train_args(markup_dataset, markup_run.parent / "[/]again", "--epochs", "1"),
                           monkeypatch, capsys)
    assert code == 0 and "[/]again/best.pt" in output, output[-3000:]
    code, output = run_cli(["eval", markup_run / "best.pt", "--data", markup_dataset], monkeypatch, capsys)
    assert code == 0 and all(name in output for name in MARKUP_CLASSES), output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["export", "cam", "report"])
def test_export_cam_and_report_print_markup_as_text(command, markup_dataset, markup_run, tmp_path, monkeypatch,
                                                    capsys):
    image = next((markup_dataset / "CUB_200_2011" / "images" / "001.a").iterdir())
    args = {"export": ["export", markup_run / "best.pt", "--out", tmp_path / "[bold]export"],
            "cam": ["cam", markup_run / "best.pt", image, "--out", tmp_path / "[bold]cam", "--top-k", "5"],
            "report": ["report", markup_run / "best.pt", "--data", markup_dataset, "--out", tmp_path / "[bold]report",
                       "--formats", "torch-fp32,onnx-fp32", "--iterations", "2", "--warmup", "0", "--cam-images", "0",
                       "--batch-sizes", "1,2"]}[command]
    code, output = run_cli(args, monkeypatch, capsys)
    assert code == 0 and "MarkupError" not in output, output[-3000:]
    assert f"[bold]{command}" in output, output[-3000:]  # the output folder, named like markup


# --------------------------------------------------------------------------- SIGTERM
@pytest.fixture
def unhandled_sigterms():
    """SIGTERMs that reach this process's own handler: code that does not handle SIGTERM would otherwise end
    the whole test session."""
    heard = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: heard.append(signum))
    yield heard
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_training_keeps_the_partial_epoch_and_exits_143(tiny_dataset, tmp_path, monkeypatch, capsys,
                                                                       unhandled_sigterms):
    """A real SIGTERM, sent to this process during the first training step (as docker stop or Slurm do)."""
    import torch

    import fgcli.cli as cli

    show = cli._TrainDisplay.__call__

    def terminated_at_the_first_step(self, event, payload):
        show(self, event, payload)
        if event == "step":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli._TrainDisplay, "__call__", terminated_at_the_first_step)
    code, output = run_cli(train_args(tiny_dataset, tmp_path / "run", "--epochs", "2"), monkeypatch, capsys)
    assert code == 143 and not unhandled_sigterms, output[-3000:]
    state = torch.load(tmp_path / "run" / "interrupted.pt", weights_only=True)
    assert state["metrics"] == {"interrupted_in_epoch": 1} and state["epoch"] == 0
    assert f"SIGTERM: weights so far in {tmp_path / 'run' / 'interrupted.pt'}" in output
    assert "no epoch finished: the same command starts a new run there" in output
    assert not (tmp_path / "run" / ".fgcli.lock").exists()


def test_sigterm_during_predict_writes_the_rows_done_and_exits_143(tmp_path, monkeypatch, capsys, unhandled_sigterms):
    from fake_tensorrt import write_classifier_onnx

    import fgcli.training.predict as predict

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(folder / f"{i}.png")
    batches = predict.iter_predictions

    def terminated_after_the_first_batch(*args, **kwargs):
        for number, batch in enumerate(batches(*args, **kwargs)):
            if number == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # noted, raised between batches
            yield batch

    monkeypatch.setattr(predict, "iter_predictions", terminated_after_the_first_batch)
    out = tmp_path / "p.csv"
    code, output = run_cli(["predict", write_classifier_onnx(tmp_path / "model.onnx"), folder, "--out", out,
                            "--batch-size", "2"], monkeypatch, capsys)
    assert code == 143 and not unhandled_sigterms, output[-3000:]
    assert f"SIGTERM after 4 of 6 images; their rows are in {out}" in output
    assert len(out.read_text().splitlines()) == 1 + 4


# --------------------------------------------------------------------------- hints that agree
def test_a_run_stopped_in_its_first_epoch_is_started_again_by_the_same_command(tiny_dataset, tmp_path, monkeypatch,
                                                                             capsys):
    """Before: the same command was refused (use --resume or --overwrite) and --resume said there is no last.pt."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "interrupted.pt").write_bytes(b"partial first epoch")
    code, output = run_cli(train_args(tiny_dataset, run, "--epochs", "1", "--resume"), monkeypatch, capsys)
    assert code == 2 and "no epoch of a run in" in output and "drop --resume: a new run starts there" in output
    code, output = run_cli(train_args(tiny_dataset, run, "--epochs", "1"), monkeypatch, capsys)
    assert code == 0, output[-3000:]
    assert f"{run} holds a run stopped in its first epoch (config.json, interrupted.pt)" in output
    assert (run / "last.pt").is_file() and not (run / "interrupted.pt").exists()
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


def test_a_folder_with_a_finished_epoch_is_still_refused(tmp_path):
    from fgcli.training.run_folder import check_run_folder

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(FgcliError, match="already holds a training run"):
        check_run_folder(tmp_path, resume=False, overwrite=False)


# --------------------------------------------------------------------------- messages instead of tracebacks
def test_an_engine_sidecar_that_is_not_a_json_object_is_a_clear_error(tmp_path):
    from fgcli.runtime.tensorrt_runner import read_sidecar

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "model.engine.json").write_text("[1, 2]")
    with pytest.raises(FgcliError, match="holds a JSON list, where fgcli writes an object"):
        read_sidecar(engine)
    (tmp_path / "model.engine.json").write_text(json.dumps(
        {"tensorrt_version": "10.3", "gpu": "H200", "precision": "fp16", "onnx": {}, "fgcli": {}}))
    with pytest.raises(FgcliError, match="gpu should each be a JSON object"):
        read_sidecar(engine)


@pytest.mark.parametrize("case", ["train-out-file", "predict-out-folder", "calib-out-folder", "predict-out-under-file",
                                  "resume-config-list"])
def test_output_paths_that_cannot_be_written_are_named_before_the_work(case, tiny_dataset, tmp_path, monkeypatch,
                                                                       capsys):
    from fake_tensorrt import write_classifier_onnx

    model = write_classifier_onnx(tmp_path / "model.onnx")
    a_file, a_folder = tmp_path / "taken", tmp_path / "folder"
    a_file.write_text("someone's file")
    a_folder.mkdir()
    (a_folder / "config.json").write_text("[1]")
    args, message = {
        "train-out-file": (train_args(tiny_dataset, a_file), f"cannot write {a_file}: {a_file} is a file, not a folder"),
        "predict-out-folder": (["predict", model, tiny_dataset / "test", "--out", a_folder],
                               f"cannot write {a_folder}: it is a folder"),
        "calib-out-folder": (["calib", model, "--data", tiny_dataset, "--out", a_folder],
                             f"cannot write {a_folder}: it is a folder"),
        "predict-out-under-file": (["predict", model, tiny_dataset / "test", "--out", a_file / "p.csv"],
                                   f"{a_file} is a file, not a folder"),
        "resume-config-list": (train_args(tiny_dataset, a_folder, "--resume"),
                               f"cannot read {a_folder / 'config.json'}: it holds a JSON list"),
    }[case]
    code, output = run_cli(args, monkeypatch, capsys)
    assert code == 2 and message in output and "Traceback" not in output, output[-3000:]
    assert "predicting" not in output and "preprocessing" not in output  # refused before the work
    assert a_file.read_text() == "someone's file" and not [p for p in tmp_path.rglob("*.tmp")]


@pytest.mark.parametrize("command", ["train-new-folder", "train-existing-folder", "data-synth", "predict"])
def test_a_read_only_output_folder_is_a_clear_error_before_the_work(command, read_only_dir, tiny_dataset, tmp_path,
                                                                    monkeypatch, capsys):
    """Before: a bare OSError (train at its lock, data synth), or predict's error after every image."""
    from fake_tensorrt import write_classifier_onnx

    args = {"train-new-folder": train_args(tiny_dataset, read_only_dir / "run" / "deeper"),
            "train-existing-folder": train_args(tiny_dataset, read_only_dir),
            "data-synth": ["data", "synth", read_only_dir / "synth", "--classes", "2", "--per-class", "2"],
            "predict": ["predict", write_classifier_onnx(tmp_path / "model.onnx"), tiny_dataset / "test", "--out",
                        read_only_dir / "p.csv"]}[command]
    code, output = run_cli(args, monkeypatch, capsys)
    assert code == 2 and f"the folder {read_only_dir} is not writable" in output, output[-3000:]
    assert "predicting" not in output and "Traceback" not in output


@pytest.mark.parametrize("change, message", [
    ({"fgcli.mean": json.dumps("x")}, "are not numbers (could not convert string to float: 'x')"),  # a traceback
    ({"fgcli.img_size": "-8"}, "are invalid: crop size -8 must be positive"),  # its hint named --resize-size
])
def test_stored_preprocessing_that_makes_no_sense_names_the_model(change, message, tmp_path, monkeypatch, capsys):
    import onnx
    from fake_tensorrt import write_classifier_onnx
    from fake_tensorrt.onnx_models import FGCLI_METADATA
    from onnx import helper

    model = write_classifier_onnx(tmp_path / "model.onnx")
    proto = onnx.load(str(model))
    helper.set_model_props(proto, {**FGCLI_METADATA, **change})
    onnx.save(proto, str(model))
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    code, output = run_cli(["predict", model, tmp_path / "a.png", "--out", tmp_path / "p.csv"], monkeypatch, capsys)
    assert code == 2 and f"{model}: stored preprocessing settings" in output and message in output, output[-3000:]
    assert "re-export it" in output and "--resize-size" not in output


def test_a_checkpoint_whose_class_names_are_one_string_is_refused(tiny_checkpoint, tmp_path):
    """Before: "abc" was taken as the three classes a, b and c."""
    import torch

    from fgcli.training.checkpoint import load_checkpoint

    state = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**state, "class_names": "abc"}, tmp_path / "best.pt")
    with pytest.raises(FgcliError, match="class_names is str 'abc', not a list of names"):
        load_checkpoint(tmp_path / "best.pt")


# --------------------------------------------------------------------------- a line instead of silence
def test_resume_keeps_the_run_settings_and_names_each_option_it_changes(tmp_path):
    from fgcli.training.config import TrainConfig, resolve_config

    run = tmp_path / "run"
    run.mkdir()
    started = TrainConfig(data="d", out=str(run), img_size=64, resize_size=72, lr=0.02, epochs=3, workers=4)
    (run / "config.json").write_text(json.dumps(started.to_dict()))
    notes = []
    cfg = resolve_config({"data": "d", "out": str(run), "resume": True, "lr": 0.005, "workers": 0,
                          "img_size": None}, note=notes.append)
    assert (cfg.img_size, cfg.resize_size, cfg.epochs, cfg.lr, cfg.workers) == (64, 72, 3, 0.005, 0)
    assert notes == [f"--lr 0.005 differs from the 0.02 this run was started with ({run / 'config.json'}): the "
                     "resumed epochs use 0.005, and config.json now records it"]


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "metrics.jsonl").open("a").write("half a line\n"), "metrics.jsonl:3 is not an epoch record"),
    (lambda run: (run / "config.json").write_text(json.dumps(
        {**json.loads((run / "config.json").read_text()), "img_size": "big"})),
     "config.json says img_size is 'big', where fgcli writes a value of type int"),
])
def test_a_damaged_run_file_is_named_when_the_resume_starts(damage, message, tiny_checkpoint, tiny_dataset, tmp_path,
                                                            monkeypatch, capsys):
    """Before: a TypeError from the config, or a JSONDecodeError after a whole resumed epoch."""
    run = shutil.copytree(tiny_checkpoint.parent, tmp_path / "run")
    damage(run)
    code, output = run_cli(["train", "--data", tiny_dataset, "--out", run, "--resume", "--epochs", "3"],
                           monkeypatch, capsys)
    assert code == 2 and message in output and "epoch 3/3" not in output, output[-3000:]


def test_resuming_a_finished_run_says_it_is_finished(tiny_checkpoint, tiny_dataset, tmp_path, monkeypatch, capsys):
    run = shutil.copytree(tiny_checkpoint.parent, tmp_path / "run")
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val_top1"]
    code, output = run_cli(["train", "--data", tiny_dataset, "--out", run, "--resume"], monkeypatch, capsys)
    assert code == 0, output[-3000:]
    assert f"the run in {run} already finished its 2 epochs: nothing to train" in output
    assert f"last {last:.4f}" in output  # before: "last 0.0000", whatever the run reached


def test_predict_reads_every_image_pil_identifies_and_names_what_it_skips(tmp_path, monkeypatch, capsys):
    from fake_tensorrt import write_classifier_onnx

    from fgcli.training.predict import find_images

    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    image = Image.new("RGB", (20, 20), (200, 30, 30))
    image.save(folder / "a.png")
    image.save(folder / "b.jfif", "JPEG")
    image.save(folder / "c.avif")
    image.save(folder / "no_extension", "JPEG")
    image.save(elsewhere / "d.png")
    (folder / "e.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(100))  # PIL reads no HEIC without a plugin
    (folder / "notes.txt").write_text("not an image")
    (folder / "linked").symlink_to(elsewhere)
    (folder / "loop").symlink_to(folder)
    skipped = []
    found = find_images(folder, skipped)
    assert [Path(p).relative_to(folder).as_posix() for p in found] == [
        "a.png", "b.jfif", "c.avif", "linked/d.png", "no_extension"]
    assert skipped == [str(folder / "e.heic"), str(folder / "notes.txt")]
    code, output = run_cli(["predict", write_classifier_onnx(tmp_path / "model.onnx"), folder, "--out",
                            tmp_path / "p.csv"], monkeypatch, capsys)
    assert code == 0 and "5 images classified, 0 unreadable" in output, output[-3000:]
    assert f"skipped 2 files under {folder} that are not images PIL reads here: {folder / 'e.heic'}, " \
           f"{folder / 'notes.txt'}" in output


def test_a_folder_dataset_reads_what_pil_identifies_and_names_what_it_leaves_out(tmp_path):
    from fgcli.data import load_split

    for split in ("train", "test"):
        for name in ("x", "y"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (20, 20)).save(folder / "1.png")
            Image.new("RGB", (20, 20)).save(folder / "2.jfif", "JPEG")
    (tmp_path / "train" / "x" / "readme.txt").write_text("not an image")
    data = load_split(tmp_path, "train", "folder")
    assert sorted(Path(s.path).name for s in data.samples) == ["1.png", "1.png", "2.jfif", "2.jfif"]
    assert f"1 files that are not images PIL reads are left out: {tmp_path / 'train' / 'x' / 'readme.txt'}" in data.note


def test_a_decompression_bomb_header_is_a_line_of_ours_not_a_raw_warning(tmp_path):
    """PIL warns (and would decode) between 89.5 M and 179 M pixels; pytest resets warning filters in process,
    so this runs the console script."""
    from fake_tensorrt import write_classifier_onnx
    from test_hostile_inputs import png_declaring, run_fgcli

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_declaring(12_000, 10_000))
    Image.new("RGB", (20, 20)).save(folder / "fine.png")
    proc = run_fgcli("predict", write_classifier_onnx(tmp_path / "model.onnx"), folder, "--out", tmp_path / "p.csv",
                     "--device", "cpu")
    assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr
    assert "unreadable: cannot read image" in proc.stdout and "120,000,000 pixels" in proc.stdout


def test_a_killed_writers_temporary_is_removed_even_when_its_pid_came_back(tmp_path):
    """kill -9, then a resume that got the dead writer's pid (a restarted container): the temporary stayed."""
    from fgcli.training.run_folder import run_lock
    from fgcli.utils import write_text_atomic

    ours = tmp_path / f".last.pt.{os.getpid()}.abcd1234.tmp"
    ours.write_bytes(b"half a checkpoint")
    write_text_atomic(tmp_path / "metrics.jsonl", "{}\n")
    assert not ours.exists()
    alive = tmp_path / f".best.pt.{os.getppid()}.abcd1234.tmp"  # the pid runs: another process took it
    alive.write_bytes(b"half a checkpoint")
    notes = []
    with run_lock(tmp_path, notes.append):
        assert not alive.exists() and notes == [f"removed {alive.name}, left by a write that was killed"]
