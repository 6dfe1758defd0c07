"""`fgcli report`: every variant evaluated and timed in one run; files, columns, finite numbers, reasons, reuse.

One report on the tiny checkpoint (32 px, 2 timed calls) is shared by the tests that only read it; the tests
that need another export (stale checkpoint, modelopt missing, fake TensorRT) export the FP32 model only.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fgcli.data.preprocess import PreprocessConfig
from fgcli.training.evaluate import EvalResult
from fgcli.errors import FgcliError
from fgcli.report import SCHEMA, VARIANT_NAMES, ReportHooks, build_report, write_report
from fgcli.report.core import agreement, worst_classes
from fgcli.report.variants import AUTO_VARIANTS, ON_REQUEST, QAT_VARIANT
from fgcli.runtime.base import Runner
from fgcli.runtime.timing import time_interleaved, timed_calls
from fgcli.runtime.doctor import LABELS

FAST = {"batch_sizes": (1, 2), "iterations": 2, "warmup": 1, "calib_size": 24}
CLASSES = ["alpha", "beta", "gamma"]


def strict_json(path: Path):
    """Parse JSON refusing NaN / Infinity, which json.dumps writes by default."""
    def refuse(constant):
        raise AssertionError(f"{path} holds the non-finite number {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def numbers_in(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from numbers_in(item)
    else:
        for item in value:
            yield from numbers_in(item)


def run_main(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """The console-script entry point in process: exit code, stdout, stderr (whitespace collapsed)."""
    from fgcli.cli import main

    monkeypatch.setattr(sys, "argv", ["fgcli", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, " ".join(captured.err.split())  # rich wraps at 80 columns


@pytest.fixture(scope="module")
def full_report(tiny_checkpoint, tiny_dataset, tmp_path_factory):
    """Every format on the tiny checkpoint, TensorRT made absent (it is not installed in CI either)."""
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", None)
        report = build_report(tiny_checkpoint, tiny_dataset, out, **FAST)
    write_report(report, out)
    return report, out


def variant(report: dict, name: str) -> dict:
    return next(v for v in report["variants"] if v["name"] == name)


def evaluation(predictions: list[int], per_class: list[float]) -> EvalResult:
    return EvalResult(model="m", runner="r", split="test", class_names=CLASSES, top1=0.5, top5=1.0,
                      count=len(predictions), per_class=per_class, confusion=[], predictions=predictions)


# --------------------------------------------------------------------------- the report itself
def test_report_writes_the_three_files_with_every_column_and_only_finite_numbers(full_report):
    report, out = full_report
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.json", "report.png", "export"}
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = strict_json(out / "report.json")
    assert saved["schema"] == SCHEMA and saved["reference"] == "torch-fp32"
    assert [v["name"] for v in saved["variants"]] == [n for n in VARIANT_NAMES
                                                      if n not in (*AUTO_VARIANTS, QAT_VARIANT, *ON_REQUEST)]
    assert list(saved["environment"]) == list(LABELS)
    assert saved["model"] == {"method": "baseline", "backbone": "resnet18", "classes": 3, "img_size": 32}
    assert saved["dataset"]["images"] == 12 and saved["batch_sizes"] == [1, 2]
    assert all(math.isfinite(x) for x in numbers_in(saved))
    ran = [v for v in saved["variants"] if v["available"]]
    assert {v["name"] for v in ran} >= {"torch-fp32", "onnx-fp32", "onnx-int8-ort"}
    for v in ran:
        assert v["reason"] is None and 0 <= v["top1"] <= v["top5"] <= 1 and 0 <= v["agreement"] <= 1
        assert 0 < v["latency_ms"]["p50"] <= v["latency_ms"]["p90"] <= v["latency_ms"]["p99"]
        assert set(v["throughput_ips"]) == {"1", "2"} and min(v["throughput_ips"].values()) > 0
        assert v["file_mb"] > 0 and v["runner"] and v["device"] == "cpu" and v["timed"]
        assert v["limit_fraction"] is None  # a CPU has no BF16 tensor-core rate to measure against
    assert variant(saved, "torch-fp32")["provider"] == "PyTorch eager"
    assert variant(saved, "onnx-fp32")["provider"] == variant(saved, "onnx-int8-ort")["provider"] == "CPUExecutionProvider"
    assert saved["limit"] is None
    assert variant(saved, "onnx-fp32")["build_seconds"] > 0
    assert variant(saved, "onnx-int8-ort")["calib_seconds"] > 0

    header = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| variant"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["variant", "runner", "device", "provider", "file MB", "top-1 %", "top-5 %", "Δ top-1 pp", "agreement %", "p50 ms",
                       "p90 ms", "p99 ms", "speed-up p50", "img/s b1", "img/s b2", "build s", "calib s", "float nodes"]
    assert "![top-1 against latency" in (out / "report.md").read_text()


def test_report_draws_where_the_reference_and_the_int8_variants_look(full_report):
    from PIL import Image

    report, out = full_report
    attention = report["attention"]
    int8 = [v["name"] for v in report["variants"] if v["available"] and v["precision"] == "int8"]
    assert attention["variants"] == ["torch-fp32", *int8] and len(attention["images"]) == 4
    assert len({Path(p).parent.name for p in attention["images"]}) == 3  # spread over the classes
    with Image.open(out / attention["png"]) as grid:
        assert grid.width > grid.height / 4 * 2 and grid.height > 4 * 50  # 4 rows of at least 2 panels
    assert f"]({attention['png']})" in (out / "report.md").read_text()


def test_reference_agrees_with_itself_and_onnx_matches_torch(full_report):
    report, _ = full_report
    reference = variant(report, "torch-fp32")
    assert (reference["agreement"], reference["delta_top1"], reference["speedup_p50"]) == (1.0, 0.0, 1.0)
    assert reference["worst_classes"] == []
    assert all(value == pytest.approx(1.0) for value in reference["throughput_speedup"].values())
    onnx = variant(report, "onnx-fp32")  # exported with a parity check against PyTorch
    assert onnx["agreement"] == 1.0 and onnx["delta_top1"] == 0.0


def test_modelopt_int8_is_measured_when_modelopt_is_installed(full_report):
    pytest.importorskip("modelopt")
    report, _ = full_report
    int8 = variant(report, "onnx-int8-modelopt")
    assert int8["available"] and int8["precision"] == "int8" and int8["calib_seconds"] > 0
    assert Path(int8["path"]).name == "model.int8.onnx"


def test_variants_that_cannot_run_here_are_listed_with_their_reason(full_report):
    report, out = full_report
    for name in ("trt-fp32", "trt-fp16", "trt-int8"):
        row = variant(report, name)
        assert not row["available"] and row["reason"].startswith("TensorRT is not installed")
        assert row["top1"] is None and row["latency_ms"] is None
    assert "needs a CUDA GPU" in variant(report, "torch-fp16")["reason"]
    markdown = (out / "report.md").read_text()
    not_run = markdown[markdown.index("## Not run on this machine"):]
    assert "| trt-int8 | TensorRT is not installed" in not_run and "| torch-bf16 | needs a CUDA GPU" in not_run


def test_a_variant_compared_with_itself_agrees_fully_and_lost_classes_are_ranked():
    reference = evaluation([0, 1, 2, 1], [1.0, 1.0, 1.0])
    assert agreement(reference, reference) == 1.0 and worst_classes(reference, reference) == []
    lowered = evaluation([0, 0, 2, 0], [1.0, 0.0, float("nan")])
    assert agreement(lowered, reference) == 0.5
    assert worst_classes(lowered, reference) == [{"class": "beta", "reference": 1.0, "variant": 0.0, "drop": 1.0}]
    with pytest.raises(FgcliError, match="cannot be compared"):
        agreement(evaluation([0, 1], [1.0, 1.0, 1.0]), reference)


def test_timing_interleaves_the_runners_and_makes_the_announced_number_of_calls():
    calls = []

    class Recorder(Runner):
        def __init__(self, name):
            super().__init__(name=name, class_names=CLASSES, preprocess=PreprocessConfig(8, 8), precision="fp32")

        def run(self, images):
            calls.append((self.name, len(images)))
            return np.zeros((len(images), 3), dtype=np.float32)

    images = np.zeros((4, 3, 8, 8), dtype=np.float32)
    timings = time_interleaved({"a": Recorder("a"), "b": Recorder("b")}, images, [1, 4], iterations=4, warmup=1)
    assert len(calls) == timed_calls(2, [1, 4], iterations=4, warmup=1) == 2 * (2 + 4 + 3)
    timed_batch1 = [name for name, size in calls[2:10]]
    assert timed_batch1 == ["a", "b", "b", "a", "a", "b", "b", "a"]  # each round starts with the next runner
    assert set(timings) == {"a", "b"} and set(timings["a"].throughput_ips) == {"1", "4"}


# --------------------------------------------------------------------------- inputs: export folder, stale files
def test_export_folder_report_runs_without_torch(full_report, tiny_dataset, tmp_path):
    from conftest import BLOCK_TORCH

    _, out = full_report
    script = BLOCK_TORCH + (
        "from fgcli.cli import main\n"
        f"sys.argv = ['fgcli', 'report', {str(out / 'export')!r}, '--data', {str(tiny_dataset)!r}, '--out', "
        f"{str(tmp_path)!r}, '--batch-sizes', '1,2', '--iterations', '2', '--warmup', '1']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = strict_json(tmp_path / "report.json")
    assert report["reference"] == "onnx-fp32" and report["source"]["kind"] == "export"
    for name in ("torch-fp32", "torch-fp16", "torch-bf16"):
        assert variant(report, name)["reason"] == "PyTorch is not installed (pip install fgcli[torch])"
    assert variant(report, "onnx-int8-ort")["available"] and variant(report, "onnx-fp32")["agreement"] == 1.0
    assert "onnx-int8-ort" in proc.stdout and (tmp_path / "report.png").is_file()
    assert (tmp_path / "report_cam.png").is_file() and report["attention"]["variants"][0] == "onnx-fp32"


def test_export_of_another_checkpoint_is_replaced_and_a_current_one_reused(tiny_checkpoint, tiny_dataset, tmp_path):
    import torch

    from fgcli.training.checkpoint import save_checkpoint

    steps = []
    options = {**FAST, "formats": "onnx-fp32", "hooks": ReportHooks(step=steps.append)}
    first = build_report(tiny_checkpoint, tiny_dataset, tmp_path, **options)
    model_bytes = (tmp_path / "export" / "model.onnx").read_bytes()
    assert first["notes"] == [] and any(step == "exporting ONNX" for step in steps)

    steps.clear()
    build_report(tiny_checkpoint, tiny_dataset, tmp_path, **options)
    assert any(step.startswith("reusing the ONNX files") for step in steps)
    assert "exporting ONNX" not in steps

    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    last_bias = [key for key in ckpt["model"] if key.endswith("bias")][-1]  # the classifier's
    ckpt["model"][last_bias] = ckpt["model"][last_bias] + 0.01
    other = save_checkpoint(tmp_path / "other.pt", ckpt)
    steps.clear()
    third = build_report(other, tiny_dataset, tmp_path, **options)
    assert "exporting ONNX" in steps
    assert "another checkpoint" in third["notes"][0] and "model.onnx" in third["notes"][0]
    assert (tmp_path / "export" / "model.onnx").read_bytes() != model_bytes
    assert json.loads((tmp_path / "export" / "source.json").read_text())["checkpoint"] == str(other.resolve())


def test_missing_modelopt_is_a_reason_and_the_ort_int8_model_is_still_made(tiny_checkpoint, tiny_dataset, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt", None)
    report = build_report(tiny_checkpoint, tiny_dataset, tmp_path,
                          **{**FAST, "formats": "onnx-fp32,onnx-int8-modelopt,onnx-int8-ort"})
    modelopt = variant(report, "onnx-int8-modelopt")
    assert modelopt["reason"] == "nvidia-modelopt is not installed (pip install fgcli[quant])"
    assert variant(report, "onnx-int8-ort")["available"] and variant(report, "onnx-int8-ort")["precision"] == "int8"
    assert not (tmp_path / "export" / "model.int8.onnx").exists()


def test_tensorrt_engines_are_built_once_and_measured_with_the_fake_tensorrt(full_report, tiny_dataset, tmp_path,
                                                                              monkeypatch):
    from fake_tensorrt import install_fakes

    _, out = full_report
    export = shutil.copytree(out / "export", tmp_path / "export")
    install_fakes(monkeypatch, "10.3.0")
    steps = []
    options = {**FAST, "formats": "onnx-fp32,trt", "hooks": ReportHooks(step=steps.append)}
    report = build_report(export, tiny_dataset, tmp_path / "report", **options)
    for name in ("trt-fp32", "trt-fp16", "trt-int8"):
        row = variant(report, name)
        assert row["available"] and row["runner"] == "tensorrt:cuda:0" and row["build_seconds"] is not None
        assert Path(row["path"]).name == f"model.{row['precision']}.engine"
    assert sum(step.startswith("building") for step in steps) == 3
    assert {variant(report, name)["device"] for name in ("trt-fp32", "trt-fp16", "trt-int8")} == {"cuda:0"}
    assert "could not measure the GPU's rate" in report["limit"]["note"]  # no CUDA PyTorch here: said, not guessed
    steps.clear()
    build_report(export, tiny_dataset, tmp_path / "report", **options)
    assert not any(step.startswith("building") for step in steps)  # same ONNX, TensorRT and GPU: reused


# --------------------------------------------------------------------------- CLI and --compare
def test_compare_puts_reports_of_two_machines_in_one_table_and_plot(full_report, tmp_path, monkeypatch, capsys):
    _, out = full_report
    report = json.loads((out / "report.json").read_text())
    report["environment"].update(jetson_model="NVIDIA Jetson AGX Orin Developer Kit")
    (tmp_path / "orin.json").write_text(json.dumps(report))
    code, stdout, _ = run_main(["report", "--compare", out / "report.json", tmp_path / "orin.json", "--out",
                                tmp_path / "cmp"], monkeypatch, capsys)
    assert code == 0 and "compare.md" in stdout
    comparison = strict_json(tmp_path / "cmp" / "compare.json")
    ran = sum(v["available"] for v in report["variants"])
    labels = [r["label"] for r in comparison["reports"]]
    assert labels[1] == "NVIDIA Jetson AGX Orin Developer Kit / baseline" and labels[0].endswith(" / baseline")
    assert len(comparison["rows"]) == 2 * ran and len(comparison["not_run"]) == 2 * (len(report["variants"]) - ran)
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| report | variant | top-1 % |" in markdown and (tmp_path / "cmp" / "compare.png").is_file()


def test_compare_refuses_a_report_of_another_schema_version(full_report, tmp_path, monkeypatch, capsys):
    _, out = full_report
    future = {**json.loads((out / "report.json").read_text()), "schema": "fgcli.report/99"}
    (tmp_path / "future.json").write_text(json.dumps(future))
    code, _, stderr = run_main(["report", "--compare", out / "report.json", tmp_path / "future.json"],
                               monkeypatch, capsys)
    assert code == 2 and "future.json has schema 'fgcli.report/99'" in stderr and "regenerate" in stderr


@pytest.mark.parametrize("args, message", [
    (["report", "run/best.pt"], "--data is missing"),
    (["report", "a.pt", "b.pt", "--data", "d"], "takes one checkpoint or export folder, got 2"),
    (["report", "--compare", "a.json"], "two or more report.json files"),
])
def test_cli_usage_errors_exit_2_with_the_fix(args, message, monkeypatch, capsys):
    code, _, stderr = run_main(args, monkeypatch, capsys)
    assert code == 2 and message in stderr and "hint:" in stderr


@pytest.mark.parametrize("option, message", [
    (["--formats", "onnx-int4"], "unknown report format 'onnx-int4'"),
    (["--formats", "onnx-int8-ort"], "no FP32 reference"),
    (["--batch-sizes", "1,x"], "is not a list of positive integers"),
])
def test_bad_report_options_exit_2(option, message, tiny_checkpoint, tiny_dataset, tmp_path, monkeypatch, capsys):
    code, _, stderr = run_main(["report", tiny_checkpoint, "--data", tiny_dataset, "--out", tmp_path, *option],
                               monkeypatch, capsys)
    assert code == 2 and message in stderr
    assert not (tmp_path / "export").exists()  # refused before exporting anything

