"""Every registered method through the whole deployment path on the synthetic dataset (marked ``deploy``).

Run with ``python -m pytest -q -m deploy`` (CI does; about 10 minutes on 2 cores). A baseline is trained once
with the small recipe; every other method starts from its backbone (``--weights best.pt``) and fine-tunes a few
epochs, as users start from ImageNet weights. ``build_report`` then exports it (ONNX checked against PyTorch),
quantizes it with modelopt (Q/DQ) and ONNX Runtime, evaluates every variant on the test split and times them.
INT8 must stay within 2 top-1 points of FP32 and agree with it on at least 95 % of the test images; ONNX Runtime
INT8 with measured mixed precision (``target_agreement=0.99`` and ``max_drop`` 0.5 points: calibrated with the
method whose full INT8 is closest to FP32, ``auto_calib``, then the nodes INT8 hurts most kept float until both
hold) must never end further from FP32 than plain INT8, and where the loop reports the
target met, the report's own evaluation must see >= 99 % agreement and <= 0.5 points lost; whether it was met is
printed with the figures (GCAM-CSA missed it with minmax ranges, with every measured node float but one; percentile
ranges, which ``auto_calib`` finds, met it). The synthetic set has no val split, so its target is measured on the test
split itself: this checks that the loop reaches the target and what it costs (float nodes, speed), not that the
choice carries over to unseen images (on 256 of the 360 images, the baseline's reached 99.2 % there and 98.9 % on
all 360).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import DEPLOY_FIGURES
from fgcli.models import list_models

pytestmark = [pytest.mark.deploy,
              pytest.mark.filterwarnings("ignore::fgcli.calibration.dataset.CalibrationWarning")]  # 240 < 300

# 240 train and 360 test images: a large test split keeps the INT8 figures from hinging on one or two images
CLASSES, PER_CLASS, TEST_FRACTION = 6, 100, 0.6
TEST_IMAGES = round(CLASSES * PER_CLASS * TEST_FRACTION)
IMG_SIZE, RESIZE = 96, 110
BASELINE_EPOCHS, FINETUNE_EPOCHS = 15, 5
INT8_VARIANTS = ("onnx-int8-modelopt", "onnx-int8-ort")
MAX_TOP1_DROP, MIN_AGREEMENT = 0.02, 0.95
#: measured mixed precision, ONNX Runtime only: modelopt calibrates every candidate model in a child (minutes)
AUTO_VARIANT, TARGET_AGREEMENT, MAX_AUTO_DROP = "onnx-int8-ort-auto", 0.99, 0.005


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from fgcli.data.synth import generate_synthetic

    data = tmp_path_factory.mktemp("deploy") / "data"
    generate_synthetic(data, num_classes=CLASSES, per_class=PER_CLASS, seed=0, test_fraction=TEST_FRACTION)
    return data


def _train(method: str, data: Path, out: Path, epochs: int, weights: Path | None = None) -> Path:
    from fgcli.training.config import resolve_config
    from fgcli.training.train import train

    train(resolve_config({"method": method, "data": str(data), "out": str(out), "recipe": "small", "epochs": epochs,
                          "img_size": IMG_SIZE, "resize_size": RESIZE, "workers": 0, "device": "cpu", "seed": 0,
                          "weights": str(weights) if weights else None}))
    return out / "best.pt"


@pytest.fixture(scope="module")
def baseline_checkpoint(synthetic) -> Path:
    return _train("baseline", synthetic, synthetic.parent / "baseline", BASELINE_EPOCHS)


@pytest.mark.parametrize("method", list_models())
def test_method_exports_quantizes_and_reports_within_int8_budget(method, synthetic, baseline_checkpoint):
    from fgcli.report import VARIANT_NAMES, build_report, write_report

    checkpoint = baseline_checkpoint if method == "baseline" else _train(
        method, synthetic, synthetic.parent / method, FINETUNE_EPOCHS, weights=baseline_checkpoint)
    out = checkpoint.parent / "report"
    formats = [name for name in VARIANT_NAMES if name != "onnx-int8-modelopt-auto"]
    report = build_report(checkpoint, synthetic, out, batch_sizes=[1, 8], iterations=10, warmup=2, calib_size=240,
                          formats=formats, target_agreement=TARGET_AGREEMENT, val_size=TEST_IMAGES,
                          max_drop=100 * MAX_AUTO_DROP, auto_calib=True)
    files = write_report(report, out)
    assert {Path(p).name for p in files.values()} == {"report.md", "report.json", "report.png"}
    assert json.loads((out / "report.json").read_text())["variants"] == report["variants"]

    rows = {row["name"]: row for row in report["variants"]}
    assert report["reference"] == "torch-fp32" and rows["onnx-fp32"]["agreement"] == 1.0
    for name in ("torch-fp32", "onnx-fp32", *INT8_VARIANTS, AUTO_VARIANT):
        row = rows[name]
        assert row["available"], f"{name}: {row['reason']}"
        assert all(math.isfinite(v) for v in (row["top1"], row["top5"], *row["latency_ms"].values(),
                                              *row["throughput_ips"].values()))
    DEPLOY_FIGURES.append({"method": method, **{
        name: {"top1": rows[name]["top1"], "agreement": rows[name]["agreement"],
               "p50_ms": rows[name]["latency_ms"]["p50"], "float_nodes": rows[name]["float_nodes"]}
        for name in ("torch-fp32", "onnx-fp32", *INT8_VARIANTS, AUTO_VARIANT)}})
    for name in INT8_VARIANTS:
        row = rows[name]
        assert row["delta_top1"] >= -MAX_TOP1_DROP, f"{method} {name}: top-1 fell {-row['delta_top1']:.1%}"
        assert row["agreement"] >= MIN_AGREEMENT, f"{method} {name}: agreement {row['agreement']:.1%}"
    auto, plain = rows[AUTO_VARIANT], rows["onnx-int8-ort"]
    assert auto["float_nodes"] >= plain["float_nodes"], "the measured choice adds to the model's own"
    assert auto["agreement"] >= plain["agreement"], f"{method} {AUTO_VARIANT}: further from FP32 than plain INT8"
    export_record = json.loads((out / "export" / "export.json").read_text())["artifacts"][AUTO_VARIANT]
    choice = export_record["auto_precision"]
    DEPLOY_FIGURES[-1][AUTO_VARIANT]["target_met"] = choice["met"]
    DEPLOY_FIGURES[-1][AUTO_VARIANT]["calib_method"] = export_record["calib_method"]
    if choice["met"]:  # measured on the test split itself: the report's own evaluation must see the same
        assert auto["agreement"] >= TARGET_AGREEMENT, f"{method} {AUTO_VARIANT}: agreement {auto['agreement']:.1%}"
        assert auto["delta_top1"] >= -MAX_AUTO_DROP, f"{method} {AUTO_VARIANT}: top-1 fell {-auto['delta_top1']:.1%}"


#: QAT (fgcli train --qat) against post-training INT8: GCAM-CSA, the method whose measured mixed precision missed
#: its target, and MobileNetV3, whose depthwise / hard-swish / SE convs plain PTQ hurts most (baseline from scratch)
QAT_CASES = (("gcam-csa", None), ("baseline", "mobilenetv3_large_100"))
QAT_EPOCHS = 3
QAT_VARIANTS = ("torch-fp32", "onnx-fp32", *INT8_VARIANTS, "onnx-int8-qat")


@pytest.mark.parametrize("method, backbone", QAT_CASES)
def test_qat_exports_and_reports_beside_post_training_int8(method, backbone, synthetic, baseline_checkpoint):
    from fgcli.training.config import resolve_config
    from fgcli.training.train import train
    from fgcli.report import build_report

    run = synthetic.parent / (method if backbone is None else f"{method}-{backbone}")
    checkpoint = run / "best.pt"
    if not checkpoint.is_file():  # GCAM-CSA's run is left by the test above when it ran first
        train(resolve_config({"method": method, "data": str(synthetic), "out": str(run), "recipe": "small",
                              "img_size": IMG_SIZE, "resize_size": RESIZE, "workers": 0, "device": "cpu", "seed": 0,
                              "epochs": BASELINE_EPOCHS if backbone else FINETUNE_EPOCHS, "backbone": backbone,
                              "weights": None if backbone else str(baseline_checkpoint)}))
    qat_run = run.parent / f"{run.name}-qat"
    train(resolve_config({"qat": True, "weights": str(checkpoint), "data": str(synthetic), "out": str(qat_run),
                          "epochs": QAT_EPOCHS, "workers": 0, "device": "cpu", "seed": 0}))
    report = build_report(checkpoint, synthetic, run / "report-qat", qat=qat_run / "best.pt", formats=QAT_VARIANTS,
                          batch_sizes=[1], iterations=10, warmup=2, calib_size=240, cam_images=0)
    rows = {row["name"]: row for row in report["variants"]}
    for name in QAT_VARIANTS:
        assert rows[name]["available"], f"{name}: {rows[name]['reason']}"
        assert math.isfinite(rows[name]["top1"]) and math.isfinite(rows[name]["latency_ms"]["p50"])
    DEPLOY_FIGURES.append({"method": f"{method} ({backbone or 'resnet18'}) with QAT", **{
        name: {"top1": rows[name]["top1"], "agreement": rows[name]["agreement"],
               "p50_ms": rows[name]["latency_ms"]["p50"]} for name in QAT_VARIANTS}})
    qat = rows["onnx-int8-qat"]
    assert qat["delta_top1"] >= -MAX_TOP1_DROP, f"{method} QAT: top-1 fell {-qat['delta_top1']:.1%}"
