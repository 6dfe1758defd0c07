"""Quantization-aware training (fgcli train --qat): config from the source run, checkpoints, resume, DDP,
export to Q/DQ ONNX, evaluation and the report's onnx-int8-qat variant, and the errors around them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_train_config
from fgcli.training.checkpoint import load_checkpoint, model_from_checkpoint
from fgcli.training.config import resolve_config
from fgcli.training.train import train
from fgcli.errors import FgcliError

pytest.importorskip("modelopt.torch.quantization")


def _qat_config(source: Path, data: Path, out: Path, **overrides):
    return resolve_config({"qat": True, "weights": str(source), "data": str(data), "out": str(out), "workers": 0,
                           "device": "cpu", "seed": 0, **overrides})


@pytest.fixture(scope="module")
def qat_run(tiny_checkpoint, tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qat_run")
    train(_qat_config(tiny_checkpoint, tiny_dataset, out, epochs=1))
    return out / "best.pt"


def _enabled_weight_quantizers(model) -> list[str]:
    return [name for name, module in model.named_modules()
            if getattr(getattr(module, "weight_quantizer", None), "is_enabled", False)]


def test_qat_config_takes_the_source_run_and_a_short_low_rate_schedule(tiny_checkpoint, tiny_dataset, tmp_path):
    source = load_checkpoint(tiny_checkpoint)["train_config"]
    cfg = _qat_config(tiny_checkpoint, tiny_dataset, tmp_path / "q")
    assert (cfg.method, cfg.backbone, cfg.img_size, cfg.resize_size) == ("baseline", "resnet18", 32, 36)
    assert cfg.lr == pytest.approx(0.01 * source["lr"]) and cfg.epochs == 1  # a tenth of 2 epochs, at least 1
    assert (cfg.warmup_epochs, cfg.backbone_lr_scale, cfg.batch_size) == (0, 1.0, source["batch_size"])
    explicit = _qat_config(tiny_checkpoint, tiny_dataset, tmp_path / "q", epochs=3, lr=0.001)
    assert (explicit.epochs, explicit.lr) == (3, 0.001)


def test_qat_run_writes_a_checkpoint_that_rebuilds_its_quantizers(qat_run, tiny_checkpoint, tiny_dataset):
    ckpt = load_checkpoint(qat_run)  # weights_only=True
    assert ckpt["qat"]["quant_config"] == "INT8_DEFAULT_CFG" and ckpt["qat"]["source"] == str(tiny_checkpoint)
    assert ckpt["qat"]["calibration_images"] == 24  # the tiny train split, all of it (below --qat-calib-size)
    assert any(key.endswith("input_quantizer._amax") for key in ckpt["model"])
    model = model_from_checkpoint(ckpt)
    assert len(_enabled_weight_quantizers(model)) == 21  # ResNet-18: 20 convs and the classifier
    fp32 = model_from_checkpoint(load_checkpoint(tiny_checkpoint))
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(images), fp32(images))  # fake INT8 and fine-tuned: not the FP32 model


def test_qat_resume_ends_where_an_uninterrupted_run_ends(tiny_checkpoint, tiny_dataset, tmp_path):
    def stop_in_second_epoch(event, payload):
        if event == "epoch_start" and payload["epoch"] == 1:
            raise KeyboardInterrupt

    train(_qat_config(tiny_checkpoint, tiny_dataset, tmp_path / "straight", epochs=2))
    assert train(_qat_config(tiny_checkpoint, tiny_dataset, tmp_path / "resumed", epochs=2),
                 hook=stop_in_second_epoch).interrupted
    train(_qat_config(tiny_checkpoint, tiny_dataset, tmp_path / "resumed", epochs=2, resume=True))
    straight, resumed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "resumed"))
    assert resumed["epoch"] == 2 and resumed["qat"]["calibration_images"] == 24
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_qat_export_writes_qdq_onnx_with_int8_weights_that_runs(qat_run, tiny_dataset, tmp_path):
    import onnx

    from fgcli.training.evaluate import evaluate_runner
    from fgcli.data import load_split
    from fgcli.export.pipeline import ExportOptions, export_all
    from fgcli.runtime import open_runner

    summary = export_all(qat_run, ExportOptions(out_dir=tmp_path, check_data=str(tiny_dataset)))
    path = Path(summary.artifacts["onnx-int8-qat"]["path"])
    assert path.name == "model.qat.onnx" and not (tmp_path / "model.onnx").exists()
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["fgcli.precision"] == "int8" and meta["fgcli.quantization"] == "qat"
    int8_weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == 20  # every conv's weights stored as INT8, not float + QuantizeLinear
    check = summary.artifacts["onnx-int8-qat"]
    assert check["metric"] == "rms" and check["rms_diff"] <= check["tolerance"]
    split = load_split(tiny_dataset, "test")
    with open_runner(path, device="cpu") as onnx_runner:
        result = evaluate_runner(onnx_runner, split, batch_size=8)
    assert result.count == len(split.samples) and 0.0 <= result.top1 <= 1.0


@pytest.mark.parametrize("options, flag", [({"int8": True, "calib_data": "x"}, "--int8"), ({"fp16": True}, "--fp16")])
def test_qat_export_refuses_to_quantize_again(qat_run, tmp_path, options, flag):
    from fgcli.export.pipeline import ExportOptions, export_all

    with pytest.raises(FgcliError, match=f"is a QAT run.*{flag}"):
        export_all(qat_run, ExportOptions(out_dir=tmp_path, **options))


@pytest.mark.filterwarnings("ignore::fgcli.calibration.dataset.CalibrationWarning")  # 24 images
def test_report_puts_qat_beside_post_training_int8(qat_run, tiny_checkpoint, tiny_dataset, tmp_path):
    from fgcli.report import build_report

    options = dict(formats="torch-fp32,onnx-int8-ort,onnx-int8-qat", batch_sizes=[1], iterations=2, warmup=0,
                   calib_size=24, cam_images=0)
    report = build_report(tiny_checkpoint, tiny_dataset, tmp_path / "r", qat=qat_run, **options)
    rows = {row["name"]: row for row in report["variants"]}
    assert rows["onnx-int8-qat"]["available"] and rows["onnx-int8-qat"]["path"].endswith("model.qat.onnx")
    assert report["reference"] == "torch-fp32" and report["source"]["qat_checkpoint"] == str(qat_run)
    # the QAT checkpoint as the source: reported against the FP32 run it came from, reusing the same files
    again = build_report(qat_run, tiny_dataset, tmp_path / "r", **options)
    assert again["source"]["path"] == str(tiny_checkpoint)
    assert any("is a QAT run" in note for note in again["notes"])
    assert {r["name"]: r["top1"] for r in again["variants"]} == {r["name"]: r["top1"] for r in report["variants"]}
    without = build_report(tiny_checkpoint, tiny_dataset, tmp_path / "r", **options)
    assert "onnx-int8-qat" not in {row["name"] for row in without["variants"]}


def test_report_refuses_a_qat_option_that_is_not_a_qat_run(tiny_checkpoint, tiny_dataset, tmp_path):
    from fgcli.report import build_report

    with pytest.raises(FgcliError, match="is not a QAT run"):
        build_report(tiny_checkpoint, tiny_dataset, tmp_path / "r", qat=tiny_checkpoint)


def test_qat_bad_inputs_get_clear_errors(tiny_checkpoint, qat_run, tiny_dataset, tmp_path):
    with pytest.raises(FgcliError, match="--qat fine-tunes a trained run"):
        resolve_config({"qat": True, "data": str(tiny_dataset), "out": str(tmp_path / "a")})
    with pytest.raises(FgcliError, match="already a QAT run"):
        _qat_config(qat_run, tiny_dataset, tmp_path / "b")
    with pytest.raises(FgcliError, match="not an fgcli checkpoint|cannot read"):
        weights = tmp_path / "plain.pt"
        torch.save({"conv.weight": torch.zeros(1)}, weights)
        _qat_config(weights, tiny_dataset, tmp_path / "c")
    with pytest.raises(FgcliError, match="is a baseline run.*--method tdsa"):
        train(_qat_config(tiny_checkpoint, tiny_dataset, tmp_path / "d", method="tdsa"))
    train(tiny_train_config(tiny_dataset, tmp_path / "plain", epochs=1))
    with pytest.raises(FgcliError, match="is not a QAT run"):
        train(_qat_config(tiny_checkpoint, tiny_dataset, tmp_path / "plain", epochs=2, resume=True))


def test_tasn_keeps_its_attention_net_unquantized():
    from fgcli.training.qat import insert_quantizers
    from fgcli.models import create_model

    model = create_model("tasn", 3, backbone="resnet18", attention_backbone="resnet18").eval()
    insert_quantizers(model, lambda: [torch.rand(2, 3, 64, 64)], "cpu")
    quantized = _enabled_weight_quantizers(model)
    assert quantized and all(name.startswith("backbone.") for name in quantized)


def test_int8_weight_storage_matches_quantize_linear():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from fgcli.export.onnx import store_int8_weights

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    scale = (np.abs(weight).reshape(4, -1).max(1) / 127).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0),
         helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=0),
         helper.make_node("Conv", ["x", "wd"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(scale, "s"),
         numpy_helper.from_array(np.zeros(4, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    before = run(model)
    folded = store_int8_weights(onnx.load_from_string(model.SerializeToString()))
    assert [n.op_type for n in folded.graph.node] == ["DequantizeLinear", "Conv"]
    assert {i.name for i in folded.graph.initializer} == {"wq", "s", "z"}
    np.testing.assert_array_equal(run(folded), before)


@pytest.mark.slow
def test_qat_ddp_two_processes_on_gloo(tiny_checkpoint, tiny_dataset, tmp_path):
    out = tmp_path / "ddp-qat"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "fgcli", "train", "--qat", "--weights", str(tiny_checkpoint), "--data", str(tiny_dataset),
           "--out", str(out), "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["qat"]["calibration_images"] == 24
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
