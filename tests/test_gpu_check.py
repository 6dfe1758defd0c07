"""benchmarks/gpu_check.py on CPU: its --dry-run checks every import and command line, and the eval step
runs at the rehearsal size, so the GPU check cannot rot between GPU sessions."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
from fgcli.errors import FgcliError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


def test_dry_run_lists_the_plan_and_parses_both_fgcli_command_lines(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    plan_line, checked = printed.split("\n", 1)
    assert plan_line.startswith("plan: train, pipeline, train-fp16, report, graphs, bench, eval, qat, ddp {")
    assert json.loads(plan_line[plan_line.index("{"):])["img_size"] == 448
    checked = json.loads(checked)
    assert checked["methods"] == gpu_check.list_models() and len(checked["methods"]) == 6
    methods = checked["methods"]
    assert checked["steps"] == [*(f"train/{m}" for m in methods), "pipeline", *(f"train-fp16/{m}" for m in methods),
                                "report", "graphs", "bench", "eval", "qat", "ddp"]
    assert checked["commands"]["report"].startswith(f"fgcli report {tmp_path / 'baseline' / 'best.pt'}")
    assert "--device cuda" in checked["commands"]["ddp"] and set(checked["backends"]) == {"tensorrt", "onnxruntime-gpu"}
    assert checked["commands"]["bench"].startswith(f"fgcli bench {tmp_path / 'baseline' / 'best.pt'} --device cuda")
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_a_command_line_the_cli_rejects_fails_the_dry_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "report_arguments", lambda plan, data, out: ["report", "x", "--no-such-flag"])
    with pytest.raises(Exception, match="no-such-flag"):
        gpu_check.main(["--dry-run", "--out", str(tmp_path)])


def test_arguments_are_validated():
    with pytest.raises(SystemExit):
        gpu_check.main(["--img-size", "450", "--dry-run"])


@pytest.mark.slow  # ~30 s: float16 convolutions are slow on CPU
def test_eval_step_measures_every_dtype_and_batch_at_the_rehearsal_size(tmp_path):
    plan = gpu_check.rehearsal_plan()
    figures = gpu_check.step_eval(plan, tmp_path / "data", tmp_path)
    assert set(figures) == {f"{d}/eager/b{b}" for d in ("fp32", "fp16", "bf16") for b in plan.eval_batches}
    assert all(v > 0 for v in figures.values())
    table = gpu_check.table({"steps": {"eval": figures}})
    assert table.splitlines()[0].split() == ["step", "figure", "value"] and "fp16/eager/b2" in table


def test_a_failing_step_is_recorded_and_the_run_goes_on_within_the_budget(tmp_path, monkeypatch):
    json_path = tmp_path / "record.json"
    seen_on_disk = []

    def diverges(plan, data, out):
        raise FgcliError("training diverged at epoch 2, step 7 with --amp fp16: loss is nan (ce=nan)")

    def reads_the_record(plan, data, out):
        seen_on_disk.append(json.loads(json_path.read_text())["steps"])  # written after the step before
        return {"images_per_s": 1.0}

    monkeypatch.setattr(gpu_check, "plan_steps", lambda out: [
        gpu_check.Step("train/clan", "train", diverges, 0), gpu_check.Step("train/tasn", "train", reads_the_record, 0),
        gpu_check.Step("report", "report", reads_the_record, 10_000)])
    monkeypatch.setattr(gpu_check, "generate_synthetic", lambda *a, **k: None)
    record = gpu_check.run(gpu_check.rehearsal_plan(), tmp_path, ("train", "report"), budget_s=600, json_path=json_path)
    failed = record["steps"]["train/clan"]
    assert failed["status"] == "failed" and failed["error"].startswith("FgcliError: training diverged at epoch 2")
    assert "Traceback" in failed["traceback"] and seen_on_disk[0]["train/clan"]["status"] == "failed"
    assert record["steps"]["train/tasn"]["status"] == "ok" and record["steps"]["train/tasn"]["images_per_s"] == 1.0
    assert record["steps"]["report"]["status"] == "skipped" and "--budget-s" in record["steps"]["report"]["error"]
    assert record["methods"] == {"clan": {"train": "failed: FgcliError: training diverged at epoch 2, step 7 with "
                                                   "--amp fp16: loss is nan (ce=nan)"}, "tasn": {"train": "ok"}}
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(record))
    printed = gpu_check.table(record)
    assert "traceback" not in printed and printed.splitlines()[-1].split() == ["tasn", "train", "ok"]


@pytest.mark.slow  # ~20 s: a ResNet-18 at 32 px, 4 epochs, twice
def test_train_and_pipeline_steps_at_the_rehearsal_size(tmp_path):
    from fgcli.data.synth import generate_synthetic

    plan = gpu_check.rehearsal_plan()
    generate_synthetic(tmp_path / "data", num_classes=plan.classes, per_class=gpu_check.per_class_for(plan), seed=0)
    trained = gpu_check.step_train(plan, tmp_path / "data", tmp_path / "run", method="baseline", amp="bf16")
    assert trained["precision"] == "bf16" and trained["steps"] >= 4 and trained["images_per_s"] > 0
    assert (tmp_path / "run" / "best.pt").is_file()
    pipeline = gpu_check.step_pipeline(plan, tmp_path / "data", tmp_path)
    assert pipeline["precision"] == "off" and pipeline["ratio_fgcli_to_plain"] > 0
    assert pipeline["host_syncs_in_one_epoch"] is None  # counted on CUDA only


def test_graphs_step_times_batch_1_eager_and_says_what_a_cpu_rehearsal_leaves_out(tmp_path):
    figures = gpu_check.step_graphs(gpu_check.rehearsal_plan(), tmp_path / "data", tmp_path)
    assert figures["bf16/eager/b1"] > 0
    assert figures["compile"] == "skipped (rehearsal)" and figures["cuda-graph"] == "skipped (CPU)"


def test_synthetic_split_gives_about_the_requested_steps():
    plan = gpu_check.full_plan(steps=300, img_size=448)
    train_images = gpu_check.per_class_for(plan) * plan.classes * 0.7
    assert 4 * train_images / plan.batch_size == pytest.approx(300, rel=0.1)


@pytest.mark.slow
def test_qat_step_times_a_qat_epoch_against_a_plain_one_at_the_rehearsal_size(tmp_path):
    pytest.importorskip("modelopt.torch.quantization")
    from fgcli.data.synth import generate_synthetic

    plan = gpu_check.rehearsal_plan()
    generate_synthetic(tmp_path / "data", num_classes=plan.classes, per_class=gpu_check.per_class_for(plan), seed=0)
    figures = gpu_check.step_qat(plan, tmp_path / "data", tmp_path)
    assert figures["plain_epoch_s"] > 0 and figures["qat_epoch_s"] > 0 and figures["qat_over_plain"] > 0
    from fgcli.training.checkpoint import load_checkpoint

    assert "qat" in load_checkpoint(tmp_path / "gcam-csa-qat-epoch" / "best.pt")
