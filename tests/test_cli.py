"""The command line through Typer's runner, and once as the installed console script."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fgcli.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "eval", "predict", "data", "demo", "models"):
        assert command in result.output


def test_models_lists_every_registered_method():
    from fgcli.models import list_models

    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert result.output.split() == list_models()


def test_eval_json_prints_top1_and_top5_fractions(tiny_checkpoint, tiny_dataset):
    result = runner.invoke(app, ["eval", str(tiny_checkpoint), "--data", str(tiny_dataset), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert 0.0 <= report["top1"] <= report["top5"] <= 1.0
    assert report["count"] == 12
    assert set(report["per_class_accuracy"]) == {"alpha", "beta", "gamma"}
    assert sum(map(sum, report["confusion_matrix"])) == 12


def test_predict_writes_one_row_per_image_and_reports_unreadable(tiny_checkpoint, tiny_dataset, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(tiny_dataset / "test", folder)
    (folder / "alpha" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(tiny_checkpoint), str(folder), "--out", str(out), "--topk", "2"])
    assert result.exit_code == 0, result.output
    assert "1 unreadable" in result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 13
    empty = [r for r in rows if r["path"].endswith("empty.jpg")][0]
    assert empty["error"] and not empty["class_1"]
    ok = [r for r in rows if not r["error"]]
    assert all(r["class_1"] in {"alpha", "beta", "gamma"} for r in ok)
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in ok)


def test_train_cli_writes_run_folder(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--method", "baseline", "--data", str(tiny_dataset), "--out", str(out),
        "--backbone", "resnet18", "--img-size", "32", "--resize-size", "36", "--epochs", "1",
        "--batch-size", "8", "--workers", "0", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert {"best.pt", "last.pt", "metrics.jsonl", "config.json"} <= {p.name for p in out.iterdir()}


def test_installed_console_script_reports_errors_without_traceback(tmp_path):
    exe = shutil.which("fgcli") or pytest.skip("fgcli console script not on PATH")
    proc = subprocess.run([exe, "eval", str(tmp_path / "missing.pt"), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "missing.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_module_entry_point_prints_version_of_commands():
    proc = subprocess.run([sys.executable, "-m", "fgcli", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--resume" in proc.stdout
