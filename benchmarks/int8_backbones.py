"""How much plain INT8 PTQ costs on an efficient backbone versus a ResNet: the deployment check, per backbone.

    python benchmarks/int8_backbones.py [--backbones resnet18 mobilenetv3_large_100] [--method baseline]

Same setting as tests/test_deploy_methods.py: the synthetic dataset (6 classes x 100 images, 60 % test), the
`small` recipe from scratch at 96 px for 15 epochs, then ``build_report`` (ONNX checked against PyTorch,
modelopt Q/DQ and ONNX Runtime INT8, 240 calibration images, every variant evaluated on the 360 test images).
Prints top-1 and agreement with torch-fp32 per variant and backbone, and each backbone's INT8 top-1 drop next
to the first backbone's; writes ``<out>/int8_backbones.json``. Depthwise convs, hard-swish and
squeeze-excitation (MobileNetV3, EfficientNet) have wider per-channel ranges than a ResNet's convs, so the
drop is expected to be larger there.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from fgcli.data.synth import generate_synthetic
from fgcli.training.config import resolve_config
from fgcli.training.train import train
from fgcli.formats import ONNX_FP32, ONNX_INT8_MODELOPT, ONNX_INT8_ORT, TORCH_FP32
from fgcli.report import build_report
from fgcli.utils import write_json_atomic

VARIANTS = (TORCH_FP32, ONNX_FP32, ONNX_INT8_MODELOPT, ONNX_INT8_ORT)


def measure(method: str, backbone: str, data: Path, out: Path, epochs: int) -> dict[str, dict[str, float]]:
    run = out / backbone.replace("/", "_")
    train(resolve_config({"method": method, "data": str(data), "out": str(run), "recipe": "small", "epochs": epochs,
                          "backbone": backbone, "img_size": 96, "resize_size": 110, "workers": 0, "device": "cpu",
                          "seed": 0}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 240 calibration images: below the 300 the warning asks for
        report = build_report(run / "best.pt", data, run / "report", batch_sizes=[1], iterations=10, warmup=2,
                              calib_size=240)
    rows = {row["name"]: row for row in report["variants"]}
    return {name: {"top1": rows[name]["top1"], "agreement": rows[name]["agreement"],
                   "p50_ms": rows[name]["latency_ms"]["p50"]} for name in VARIANTS if rows[name]["available"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "mobilenetv3_large_100"])
    parser.add_argument("--method", default="baseline")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-int8-backbones"))
    args = parser.parse_args()
    data = args.out / "data"
    if not data.is_dir():
        generate_synthetic(data, num_classes=6, per_class=100, seed=0, test_fraction=0.6)
    results = {backbone: measure(args.method, backbone, data, args.out, args.epochs) for backbone in args.backbones}
    print(f"{args.method}, synthetic 6 classes, 96 px, {args.epochs} epochs from scratch; top-1 / agreement with "
          "torch-fp32 / p50 ms (ONNX Runtime CPU, batch 1)")
    print(f"{'backbone':24s}" + "".join(f"{v:>28s}" for v in VARIANTS) + f"{'INT8 drop (modelopt, ort)':>30s}")
    for backbone, rows in results.items():
        cells = "".join(f"{rows[v]['top1']:>10.3f} /{rows[v]['agreement']:6.3f} /{rows[v]['p50_ms']:6.1f}"
                        if v in rows else f"{'-':>28s}" for v in VARIANTS)
        fp32 = rows[ONNX_FP32]["top1"]
        drops = ", ".join(f"{fp32 - rows[v]['top1']:+.3f}" for v in VARIANTS[2:] if v in rows)
        print(f"{backbone:24s}{cells}{drops:>30s}")
    write_json_atomic(args.out / "int8_backbones.json", {"method": args.method, "epochs": args.epochs,
                                                         "results": results})


if __name__ == "__main__":
    main()
