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
    report = json.loads(result.stdout)
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
    from conftest import fgcli_env, fgcli_script

    proc = subprocess.run([fgcli_script(), "eval", str(tmp_path / "missing.pt"), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=fgcli_env())
    assert proc.returncode == 2
    assert "missing.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_module_entry_point_prints_version_of_commands():
    proc = subprocess.run([sys.executable, "-m", "fgcli", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--resume" in proc.stdout


def test_predict_and_eval_onnx_run_with_torch_blocked(tiny_onnx, tiny_dataset, tmp_path):
    from conftest import BLOCK_TORCH

    out = tmp_path / "pred.csv"
    script = BLOCK_TORCH + (
        "from fgcli.cli import main\n"
        f"sys.argv = ['fgcli', 'predict', {str(tiny_onnx)!r}, {str(tiny_dataset / 'test')!r}, '--out', {str(out)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        f"sys.argv = ['fgcli', 'eval', {str(tiny_onnx)!r}, '--data', {str(tiny_dataset)!r}, '--json']\n"
        "main()\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and all(r["class_1"] in {"alpha", "beta", "gamma"} for r in rows)
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["runner"] == "onnxruntime:CPUExecutionProvider" and 0 <= report["top1"] <= 1


def test_onnx_eval_matches_checkpoint_eval(tiny_checkpoint, tiny_onnx, tiny_dataset):
    results = [json.loads(runner.invoke(app, ["eval", str(m), "--data", str(tiny_dataset), "--json"]).stdout)
               for m in (tiny_checkpoint, tiny_onnx)]
    assert results[0]["top1"] == results[1]["top1"]
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]


def test_export_trt_without_tensorrt_writes_onnx_first_then_says_what_to_run(tiny_checkpoint, tiny_dataset,
                                                                               tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, as on this machine
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--out", str(out), "--data", str(tiny_dataset),
                                 "--trt", "--batch", "1,2,4"])
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception) and "tensorrt" in str(result.exception)
    assert "fgcli build model.onnx --batch 1,2,4" in str(result.exception)
    assert (out / "model.onnx").is_file() and (out / "export.json").is_file()


def test_export_int8_writes_both_int8_models_and_reports_quantized_nodes(tiny_checkpoint, tiny_dataset, tmp_path):
    pytest.importorskip("modelopt.onnx.quantization")
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--out", str(out), "--int8", "--int8-backend", "both",
                                 "--calib-data", str(tiny_dataset), "--calib-size", "24"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "export.json").read_text())
    assert set(summary["artifacts"]) == {"onnx-fp32", "calibration", "onnx-int8-modelopt", "onnx-int8-ort"}
    assert summary["artifacts"]["calibration"]["images"] == 24
    for key in ("onnx-int8-modelopt", "onnx-int8-ort"):
        assert summary["artifacts"][key]["quantized_counts"].get("Conv", 0) >= 10
    assert any("few" in note for note in summary["notes"])  # 24 < 300 calibration images
    for name in ("model.int8.onnx", "model.ort-int8.onnx"):
        evaluation = runner.invoke(app, ["eval", str(out / name), "--data", str(tiny_dataset), "--json"])
        assert evaluation.exit_code == 0 and 0 <= json.loads(evaluation.stdout)["top1"] <= 1


def test_train_without_torch_names_the_extra_to_install(tiny_dataset, tmp_path):
    from conftest import BLOCK_TORCH

    script = BLOCK_TORCH + (
        "from fgcli.cli import main\n"
        f"sys.argv = ['fgcli', 'train', '--data', {str(tiny_dataset)!r}, '--out', {str(tmp_path / 'run')!r}]\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "fgcli[torch]" in proc.stderr and "Traceback" not in proc.stderr


def test_help_shows_the_extras_to_install_whole():
    """rich reads "[quant]" as markup and drops it unless escaped: the install hints must survive --help."""
    train_help = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output
    assert all(f"fgcli[{extra}]" in train_help for extra in ("timm", "tensorboard", "quant"))
    assert "fgcli[rtx]" in runner.invoke(app, ["build", "--help"], env={"COLUMNS": "400"}).output
