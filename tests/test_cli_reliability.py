"""The installed console script as scripts, CI and log files see it: exit statuses, Ctrl-C, option ranges,
run folders that are never lost, and messages that stay whole in a log file."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fgcli_env, fgcli_script, import_blocker

#: the hint of fgcli build / export --trt is only given where TensorRT is missing (blocking it would also hide
#: it from torch, which probes for it)
TENSORRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None

#: a folder name like the CUB class that was cut in three in a log (issue 10), three levels deep: > 120 chars
DEEP = Path("Striped_Red_Wing_Cyan_Crest_Blue_Tail_Passerine_Species", "Another_Very_Long_Folder_Name_Of_Photos",
            "Striped_Red_Wing_Cyan_Crest_Blue_Tail_00001_originals")


def fgcli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run the installed console script; stdout and stderr are pipes (not terminals)."""
    return subprocess.run([fgcli_script(), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env or fgcli_env(), stdin=subprocess.DEVNULL)


def fgcli_to_log(log: Path, *args, env=None, timeout=300) -> tuple[int, list[str]]:
    """Run the console script with stdout and stderr sent to one file, as nohup or CI do; (code, lines)."""
    with log.open("w") as f:
        code = subprocess.run([fgcli_script(), *map(str, args)], stdout=f, stderr=f, stdin=subprocess.DEVNULL,
                              env=env or fgcli_env(), timeout=timeout).returncode
    return code, log.read_text().splitlines()


def dataset_with_an_empty_image(root: Path, tiny_dataset: Path) -> tuple[Path, Path]:
    shutil.copytree(tiny_dataset, root)
    empty = root / "train" / "alpha" / "empty.png"
    empty.write_bytes(b"")
    return root, empty


# --------------------------------------------------------------------------- exit statuses
@pytest.fixture(scope="module")
def bad_dataset(tiny_dataset, tmp_path_factory):
    return dataset_with_an_empty_image(tmp_path_factory.mktemp("bad") / "data", tiny_dataset)[0]


def _cases():
    """(args, expected exit status, text expected in the output); names in braces are filled in by the test."""
    slow = pytest.mark.slow  # each of these imports torch in a fresh process (about 4 s on 2 busy cores)
    return [
        pytest.param(["--help"], 0, "train", id="help"),
        pytest.param(["data", "synth", "{tmp}/synth", "--classes", "2", "--per-class", "4"], 0, "wrote 8 images",
                     id="data-synth"),
        pytest.param(["data", "check", "{data}"], 0, "0 errors", id="data-check-ok"),
        pytest.param(["data", "check", "{bad}"], 1, "1 errors", id="data-check-errors"),
        pytest.param(["data", "check", "{tmp}/none"], 2, "none", id="data-check-missing"),
        pytest.param(["predict", "{onnx}", "{data}/test", "--out", "{tmp}/p.csv"], 0, "12 images classified",
                     id="predict"),
        pytest.param(["predict", "{onnx}", "{data}/test", "--out", "{tmp}/p.csv", "--batch-size", "-1"], 2, "--batch-size", id="predict-usage"),
        pytest.param(["eval", "{onnx}", "--data", "{data}", "--json"], 0, '"top1"', id="eval"),
        pytest.param(["calib", "{onnx}", "--data", "{data}", "--size", "6", "--out", "{tmp}/c.npz"], 0, "6 images",
                     id="calib"),
        pytest.param(["build", "{onnx}"], 2, "tensorrt", id="build-without-tensorrt"),
        pytest.param(["report", "{onnx}"], 2, "--data is missing", id="report-usage"),
        pytest.param(["demo", "--epochs", "0"], 2, "--epochs", id="demo-usage"),
        pytest.param(["models"], 0, "baseline", id="models", marks=slow),
        pytest.param(["doctor", "--json"], 0, '"python"', id="doctor", marks=slow),
        pytest.param(["cam", "{ckpt}", "{bad}/train/alpha/empty.png", "{data}/test/beta/beta_0.png", "--out",
                      "{tmp}/cam", "--top-k", "4"], 1, "--top-k 4 is more than the 3 classes", id="cam-unreadable",
                     marks=slow),
        pytest.param(["export", "{ckpt}", "--out", "{tmp}/export", "--data", "{data}"], 0, "model.onnx",
                     id="export", marks=slow),
        pytest.param(["train", "--data", "{data}", "--out", "{run}"], 2, "--overwrite", id="train-into-a-run",
                     marks=slow),
    ]


@pytest.mark.parametrize("args, code, text", _cases())
def test_every_command_exits_with_the_status_of_its_outcome(args, code, text, tiny_dataset, tiny_checkpoint,
                                                            tiny_onnx, bad_dataset, tmp_path):
    fields = {"tmp": tmp_path, "data": tiny_dataset, "bad": bad_dataset, "onnx": tiny_onnx, "ckpt": tiny_checkpoint,
              "run": tiny_checkpoint.parent}
    if "build" in args and TENSORRT_INSTALLED:
        pytest.skip("TensorRT is installed here: fgcli build would build")
    proc = fgcli(*[arg.format(**fields) for arg in args])
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert text in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_data_check_json_is_valid_json_on_stdout_with_progress_on_stderr(bad_dataset):
    proc = fgcli("data", "check", bad_dataset, "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)  # nothing but the JSON on stdout
    assert any("empty.png" in error for error in report["errors"])
    assert "checking" in proc.stderr


# --------------------------------------------------------------------------- Ctrl-C
def _run_and_interrupt(args: list, ready: re.Pattern, log: Path, second_after: float | None = None,
                       timeout: float = 240, sig: int = signal.SIGINT, group: bool = False) -> tuple[int, str]:
    """Run the console script with stderr on a pseudo-terminal (so rich draws its live progress, as for a user
    at a terminal), send ``sig`` (Ctrl-C's SIGINT) once the output matches ``ready`` (and again ``second_after``
    s later), to its whole process group with ``group`` (as Slurm does), and return (exit status, everything
    printed, escape codes removed)."""
    master, slave = pty.openpty()
    import fcntl
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    with log.open("w") as stdout:
        proc = subprocess.Popen([fgcli_script(), *map(str, args)], stdout=stdout, stderr=slave,
                                stdin=subprocess.DEVNULL, env=fgcli_env(), start_new_session=group)
    send = (lambda: os.killpg(proc.pid, sig)) if group else (lambda: proc.send_signal(sig))
    os.close(slave)
    seen, sent, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([master], [], [], 0.05)
            if readable:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal: it ended
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
            if not sent and ready.search(_plain(seen)):
                send()
                if second_after is not None:
                    time.sleep(second_after)
                    send()
                sent = True
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert sent, f"never saw {ready.pattern!r}: {_plain(seen)[-2000:]!r}"
    return code, _plain(seen).decode(errors="replace") + log.read_text()


def _plain(data: bytes) -> bytes:
    return re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]|\r", b"", data)


@pytest.mark.slow
def test_ctrl_c_during_predict_exits_130_and_keeps_the_rows_done(tiny_onnx, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    image = _png(tmp_path / "one.png")
    for i in range(1500):
        shutil.copyfile(image, folder / f"img_{i:04d}.png")
    out = tmp_path / "pred.csv"
    code, output = _run_and_interrupt(["predict", tiny_onnx, folder, "--out", out, "--batch-size", "1"],
                                      re.compile(rb"predicting.*?\b([1-9]\d*)/1500"), tmp_path / "stdout.log")
    assert code == 130, output[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert 0 < len(rows) < 1500 and all(row["class_1"] for row in rows)
    assert f"after {len(rows)} of 1500 images" in output and str(out) in output


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(path)
    return path


@pytest.mark.slow
def test_double_ctrl_c_during_training_exits_130_with_interrupted_pt(tiny_dataset, tmp_path):
    import torch

    out = tmp_path / "run"
    code, output = _run_and_interrupt(
        ["train", "--data", tiny_dataset, "--out", out, "--backbone", "resnet18", "--img-size", "32",
         "--resize-size", "36", "--epochs", "500", "--batch-size", "8", "--workers", "0", "--device", "cpu"],
        re.compile(rb"epoch 2/500"), tmp_path / "stdout.log", second_after=0.02)
    assert code == 130, output[-3000:]
    state = torch.load(out / "interrupted.pt", weights_only=True)
    assert state["metrics"]["interrupted_in_epoch"] >= 2
    assert str(out / "interrupted.pt") in output and "--resume" in output
    assert not (out / ".fgcli.lock").exists()


@pytest.mark.slow
def test_sigterm_during_training_exits_143_with_interrupted_pt(tiny_dataset, tmp_path):
    """docker stop, Slurm preemption and timeout send SIGTERM (twice here: a second one during the save must
    not cut interrupted.pt short; to the process group, as Slurm does, so the DataLoader workers die too: their
    deaths made torch.save of interrupted.pt fail); the partial epoch is kept as Ctrl-C keeps it."""
    import torch

    out = tmp_path / "run"
    code, output = _run_and_interrupt(
        ["train", "--data", tiny_dataset, "--out", out, "--backbone", "resnet18", "--img-size", "32",
         "--resize-size", "36", "--epochs", "500", "--batch-size", "8", "--workers", "2", "--device", "cpu"],
        re.compile(rb"epoch 2/500"), tmp_path / "stdout.log", second_after=0.02, sig=signal.SIGTERM, group=True)
    assert code == 143, output[-3000:]
    state = torch.load(out / "interrupted.pt", weights_only=True)
    assert state["metrics"]["interrupted_in_epoch"] >= 2
    assert f"SIGTERM: weights so far in {out / 'interrupted.pt'}" in output and "--resume" in output
    assert not (out / ".fgcli.lock").exists()


# --------------------------------------------------------------------------- option ranges
def run_main(args: list, monkeypatch, capsys) -> tuple[int, str]:
    """The console-script entry point in process: (exit status, stderr)."""
    from fgcli.cli import main

    monkeypatch.setattr(sys, "argv", ["fgcli", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code or 0, capsys.readouterr().err


@pytest.mark.parametrize("args, option", [
    (["data", "synth", "x", "--classes", "1"], "--classes"),
    (["data", "synth", "x", "--per-class", "0"], "--per-class"),
    (["data", "synth", "x", "--test-fraction", "1.5"], "--test-fraction"),
    (["train", "--data", "d", "--epochs", "0"], "--epochs"),
    (["train", "--data", "d", "--batch-size", "0"], "--batch-size"),
    (["train", "--data", "d", "--img-size", "16"], "--img-size"),
    (["train", "--data", "d", "--img-size", "100000"], "--img-size"),
    (["train", "--data", "d", "--resize-size", "-5"], "--resize-size"),
    (["train", "--data", "d", "--lr", "-0.1"], "--lr"),
    (["train", "--data", "d", "--lr", "0"], "--lr"),
    (["train", "--data", "d", "--backbone-lr-scale", "-1"], "--backbone-lr-scale"),
    (["train", "--data", "d", "--weight-decay", "-1"], "--weight-decay"),
    (["train", "--data", "d", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["train", "--data", "d", "--workers", "-1"], "--workers"),
    (["train", "--data", "d", "--seed", "-1"], "--seed"),
    (["train", "--data", "d", "--resume", "--overwrite"], "--overwrite"),
    (["eval", "m.onnx", "--data", "d", "--batch-size", "0"], "--batch-size"),
    (["predict", "m.onnx", "d", "--batch-size", "-1"], "--batch-size"),
    (["predict", "m.onnx", "d", "--topk", "0"], "--topk"),
    (["export", "c.pt", "--img-size", "0"], "--img-size"),
    (["export", "c.pt", "--opset", "9"], "--opset"),
    (["export", "c.pt", "--calib-size", "0"], "--calib-size"),
    (["export", "c.pt", "--workspace", "0"], "--workspace"),
    (["export", "c.pt", "--dla-core", "-1"], "--dla-core"),
    (["build", "m.onnx", "--workspace", "-2"], "--workspace"),
    (["build", "m.onnx", "--dla-core", "-1"], "--dla-core"),
    (["calib", "m.onnx", "--data", "d", "--size", "0"], "--size"),
    (["calib", "m.onnx", "--data", "d", "--seed", "-1"], "--seed"),
    (["report", "c.pt", "--data", "d", "--iterations", "0"], "--iterations"),
    (["report", "c.pt", "--data", "d", "--warmup", "-1"], "--warmup"),
    (["report", "c.pt", "--data", "d", "--calib-size", "0"], "--calib-size"),
    (["report", "c.pt", "--data", "d", "--cam-images", "-1"], "--cam-images"),
    (["cam", "c.pt", "i.png", "--top-k", "0"], "--top-k"),
    (["cam", "c.pt", "i.png", "--limit", "0"], "--limit"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["demo", "--seed", "-1"], "--seed"),
])
def test_a_value_out_of_range_is_a_usage_error_naming_the_option(args, option, monkeypatch, capsys):
    code, stderr = run_main(args, monkeypatch, capsys)
    assert code == 2 and option in stderr, stderr


def test_topk_above_the_class_count_lists_every_class_with_a_note(tiny_onnx, tiny_dataset, tmp_path):
    out = tmp_path / "pred.csv"
    proc = fgcli("predict", tiny_onnx, tiny_dataset / "test", "--out", out, "--topk", "7")
    assert proc.returncode == 0, proc.stderr
    assert "--topk 7 is more than the 3 classes" in proc.stderr
    header = next(csv.reader(out.open()))
    assert header == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3", "error"]


# --------------------------------------------------------------------------- whole lines in a log file
def _one_line_with(lines: list[str], *parts: str) -> str:
    matches = [line for line in lines if all(part in line for part in parts)]
    assert matches, "\n".join(lines)
    return matches[0]


def test_data_errors_keep_their_long_paths_whole_in_a_log_file(tiny_onnx, tiny_dataset, tmp_path):
    data, empty = dataset_with_an_empty_image(tmp_path / DEEP / "data", tiny_dataset)
    assert len(str(empty)) > 120
    code, lines = fgcli_to_log(tmp_path / "check.log", "data", "check", data)
    assert code == 1
    _one_line_with(lines, "error:", str(empty), "the file is empty")

    code, lines = fgcli_to_log(tmp_path / "eval.log", "eval", tiny_onnx, "--data", data, "--split", "train")
    assert code == 0
    _one_line_with(lines, "unreadable:", str(empty), "the file is empty")

    nothing = tmp_path / DEEP / "no_photos_in_this_folder"
    nothing.mkdir()
    code, lines = fgcli_to_log(tmp_path / "predict.log", "predict", tiny_onnx, nothing)
    assert code == 2
    _one_line_with(lines, "error:", f"no images found under {nothing}")


def test_a_missing_package_error_stays_whole_in_a_log_file(tiny_onnx, tiny_dataset, tmp_path):
    model = tmp_path / DEEP / "model.onnx"
    model.parent.mkdir(parents=True)
    shutil.copyfile(tiny_onnx, model)
    env = fgcli_env(import_blocker(tmp_path, "onnxruntime"))
    code, lines = fgcli_to_log(tmp_path / "predict.log", "predict", model, tiny_dataset / "test", env=env)
    assert code == 2
    _one_line_with(lines, "error:", f"Running the ONNX model {model} needs the Python package 'onnxruntime'")
    _one_line_with(lines, "hint:", "pip install 'fgcli[onnx]'  (or: pip install onnxruntime)")


@pytest.mark.slow
@pytest.mark.skipif(TENSORRT_INSTALLED, reason="TensorRT is installed here: fgcli export --trt would build")
def test_the_export_trt_hint_stays_whole_in_a_log_file(tiny_checkpoint, tiny_dataset, tmp_path):
    out = tmp_path / DEEP / "export"
    code, lines = fgcli_to_log(tmp_path / "export.log", "export", tiny_checkpoint, "--out", out, "--data",
                               tiny_dataset, "--trt", "--batch", "1,2,4")
    assert code == 2
    _one_line_with(lines, "error:", f"the ONNX artifacts are in {out}, but building the engine needs TensorRT")
    _one_line_with(lines, "hint:", "copy model.onnx to the target (e.g. the Jetson) and run there: "
                                   "fgcli build model.onnx --batch 1,2,4")
    assert any(line == "building a TensorRT engine from model.onnx" for line in lines)  # steps, one per line


def test_progress_in_a_log_file_is_one_line_per_stage(tmp_path):
    code, lines = fgcli_to_log(tmp_path / "synth.log", "data", "synth", tmp_path / "synth", "--classes", "4",
                               "--per-class", "30")
    assert code == 0
    assert len(lines) == 2, lines  # the bar, drawn once when done, and the summary: not a redraw per image
    assert lines[0].startswith("generating") and "120/120" in lines[0]
    assert "\r" not in (tmp_path / "synth.log").read_text()


# --------------------------------------------------------------------------- run folders
def _tiny_run(tiny_dataset, out: Path, hook=None, **overrides):
    from conftest import tiny_train_config

    from fgcli.training.train import train

    return train(tiny_train_config(tiny_dataset, out, **{"epochs": 1, **overrides}), hook=hook)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_training_into_a_run_folder_is_refused_unless_resume_or_overwrite(tiny_dataset, tiny_checkpoint):
    from fgcli.errors import FgcliError

    out = tiny_checkpoint.parent
    before = _snapshot(out)
    with pytest.raises(FgcliError) as info:
        _tiny_run(tiny_dataset, out, seed=1)
    assert str(out) in info.value.message and "--resume" in info.value.hint and "--overwrite" in info.value.hint
    assert _snapshot(out) == before  # nothing touched, no lock left


def test_overwrite_replaces_the_old_run_only_when_the_new_one_has_an_epoch(tiny_dataset, tmp_path):
    from fgcli.training.checkpoint import load_checkpoint
    from fgcli.training.config import TrainConfig
    from fgcli.training.train import train
    from conftest import tiny_train_config

    out = tmp_path / "run"
    _tiny_run(tiny_dataset, out)
    before = _snapshot(out)

    def stop_in_the_first_epoch(event, payload):
        if event == "step":
            raise KeyboardInterrupt

    result = train(tiny_train_config(tiny_dataset, out, epochs=2, seed=1, overwrite=True), hook=stop_in_the_first_epoch)
    assert result.interrupted
    after = _snapshot(out)
    assert {name: after[name] for name in before} == before  # the old run is whole: config, metrics, last, best
    assert set(after) - set(before) == {"interrupted.pt"}

    train(tiny_train_config(tiny_dataset, out, epochs=1, seed=1, overwrite=True))
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())).seed == 1
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and metrics[0] + "\n" != before["metrics.jsonl"].decode()
    assert load_checkpoint(out / "last.pt")["train_config"]["seed"] == 1
    assert not (out / "interrupted.pt").exists()  # the stopped attempt's, removed with the old run


def test_a_live_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(tiny_dataset, tmp_path):
    from fgcli.errors import FgcliError

    out = tmp_path / "run"
    out.mkdir()
    lock = out / ".fgcli.lock"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as sleeper:
        lock.write_text(f"{sleeper.pid}\n")
        try:
            with pytest.raises(FgcliError) as info:
                _tiny_run(tiny_dataset, out)
        finally:
            sleeper.kill()
    assert f"pid {sleeper.pid}" in info.value.message and str(lock) in info.value.message
    assert lock.read_text() == f"{sleeper.pid}\n" and not (out / "config.json").exists()

    notes = []
    _tiny_run(tiny_dataset, out,
              hook=lambda event, payload: notes.append(payload["message"]) if event == "note" else None)
    assert notes == [f"took over the lock {lock} left by pid {sleeper.pid}, which no longer runs"]
    assert (out / "best.pt").is_file() and not lock.exists()


def test_report_into_a_folder_holding_fgcli_export_files_refuses_and_removes_nothing(tiny_checkpoint, tiny_onnx,
                                                                                      tiny_dataset, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(Path(tiny_onnx).parent, export)  # what fgcli export wrote into RUN/export
    before = _snapshot(export)
    proc = fgcli("report", tiny_checkpoint, "--data", tiny_dataset, "--out", tmp_path, "--formats", "onnx-fp32")
    assert proc.returncode == 2, proc.stderr
    assert f"{export} holds files no report made" in proc.stderr and "another --out" in proc.stderr
    assert _snapshot(export) == before


@pytest.mark.slow
def test_training_in_a_log_file_writes_one_line_per_epoch_and_exits_0(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    code, lines = fgcli_to_log(tmp_path / "train.log", "train", "--data", tiny_dataset, "--out", out, "--backbone",
                               "resnet18", "--img-size", "32", "--resize-size", "36", "--epochs", "2",
                               "--batch-size", "8", "--workers", "0", "--device", "cpu")
    assert code == 0, "\n".join(lines)
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1", "epoch 2"]
    assert len(lines) <= 2 + 5, lines  # layout, note, the bar drawn once, best top-1: no redraw per step
    assert not (out / ".fgcli.lock").exists()
