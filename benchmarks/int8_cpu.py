"""FP32 vs INT8 on this CPU with ONNX Runtime: every method, ResNet-50 at 448, one run, ratios printed.

    python benchmarks/int8_cpu.py [--methods baseline tasn] [--img-size 448] [--out runs/bench-int8]

For each method: export the eval graph (random weights: latency does not depend on them), calibrate
on the synthetic dataset, quantize with ONNX Runtime (static, unsigned activations, signed per-channel
weights, after quant_pre_process) and with modelopt (Q/DQ, meant for TensorRT), then time the three
models interleaved round by round: median latency at batch 1 and throughput at batch 8. Writes a
table to stdout and `<out>/int8_cpu.json`. Target: ORT INT8 >= 1.8x faster than ORT FP32 at batch 1.

``--float-counts 13 39``: what keeping K convs float costs, the price of measured mixed precision
(``--target-agreement``; the deployment check's choices kept 3-39 nodes float). Random weights cannot say which
nodes a trained model needs, so for each K it times the two extremes: the K convs with the most multiply-adds
kept float (the slowest such model) and the K with the fewest (the fastest), both ORT INT8 with the same
calibration. A speed-up that holds for the costly choice holds for any choice of K convs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fgcli.calibration.dataset import build_calibration_set
from fgcli.calibration.modelopt_ptq import quantize_modelopt
from fgcli.calibration.ort_int8 import quantize_ort
from fgcli.data.preprocess import PreprocessConfig
from fgcli.data.synth import generate_synthetic
from fgcli.export.onnx import export_onnx
from fgcli.formats import ONNX_INT8_MODELOPT, ONNX_INT8_ORT, file_of
from fgcli.models import create_model, list_models
from fgcli.utils import write_json_atomic

def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_interleaved(sessions: dict, batch: int, size: int, rounds: int, iters: int) -> dict[str, float]:
    """Median seconds per call for each session, taking turns so machine noise hits all alike."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    for s in sessions.values():
        s.run(None, {"images": x})  # warm-up
    samples = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            for _ in range(iters):
                s.run(None, {"images": x})
            samples[name].append((time.perf_counter() - start) / iters)
    return {name: statistics.median(v) for name, v in samples.items()}


def checkpoint_for(method: str, num_classes: int, preprocess: PreprocessConfig) -> dict:
    torch.manual_seed(0)
    model = create_model(method, num_classes, backbone="resnet50").eval()
    return {"method": method, "backbone": "resnet50", "num_classes": num_classes,
            "class_names": [f"class_{i}" for i in range(num_classes)], "model_kwargs": {},
            "preprocess": preprocess.to_dict(), "model": model.state_dict()}


def conv_costs(onnx_path: Path) -> dict[str, int]:
    """Multiply-adds per image of every Conv of an ONNX model (shapes from ONNX shape inference)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output]}
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    costs = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in weights and node.output[0] in shapes:
            out_h, out_w = shapes[node.output[0]][-2:]
            costs[node.name] = int(np.prod(weights[node.input[1]])) * out_h * out_w
    return costs


def float_variants(fp32: Path, calib, folder: Path, quantized: list[str], counts: list[int]) -> dict[str, Path]:
    """ORT INT8 models with the K costliest / cheapest quantized convs kept float, for each K in ``counts``."""
    costs = conv_costs(fp32)
    ranked = sorted((name for name in quantized if name in costs), key=costs.get, reverse=True)
    paths = {}
    for k in counts:
        for kind, nodes in (("costly", ranked[:k]), ("cheap", ranked[::-1][:k])):
            name = f"ort-int8-float{k}-{kind}"
            paths[name] = quantize_ort(fp32, calib, folder / f"model.{name}.onnx", extra_float_nodes=nodes,
                                       calibration_cache=folder / "ort-calibration.json").output_path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list_models())
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--calib-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-int8"))
    parser.add_argument("--float-counts", nargs="*", type=int, default=[],
                        help="also time ORT INT8 with K convs kept float (the costliest and the cheapest K)")
    parser.add_argument("--no-modelopt", action="store_true", help="skip the modelopt Q/DQ model")
    args = parser.parse_args()

    preprocess = PreprocessConfig(args.img_size, args.img_size * 512 // 448)
    data = args.out / "data"
    if not (data / "images.txt").exists():
        generate_synthetic(data, num_classes=10, per_class=20, seed=0)
    calib = build_calibration_set(data, preprocess, size=args.calib_size)
    results = {}
    print(TABLE_HEADER)
    for method in args.methods:
        folder = args.out / method
        fp32 = export_onnx(checkpoint_for(method, 10, preprocess), folder).path
        ort_int8 = quantize_ort(fp32, calib, folder / file_of(ONNX_INT8_ORT),
                                calibration_cache=folder / "ort-calibration.json")
        paths = {"fp32": fp32, "ort-int8": ort_int8.output_path}
        if not args.no_modelopt:
            paths["modelopt-int8"] = quantize_modelopt(fp32, calib, folder / file_of(ONNX_INT8_MODELOPT)).output_path
        paths.update(float_variants(fp32, calib, folder, ort_int8.quantized_nodes, args.float_counts))
        sessions = {name: session(path) for name, path in paths.items()}
        b1 = time_interleaved(sessions, 1, args.img_size, args.rounds, iters=5)
        b8 = time_interleaved(sessions, 8, args.img_size, max(2, args.rounds // 2), iters=1)
        results[method] = {
            name: {"latency_ms_b1": b1[name] * 1000, "throughput_b8": 8 / b8[name],
                   "speedup_b1": b1["fp32"] / b1[name], "speedup_b8": b8["fp32"] / b8[name]}
            for name in paths
        }
        print_row(method, results[method])
        for name in paths:
            if name.startswith("ort-int8-float"):
                r = results[method][name]
                print(f"|   {method} {name} | {r['latency_ms_b1']:.0f} ms | {r['speedup_b1']:.2f}x FP32 at b1 | "
                      f"{r['speedup_b8']:.2f}x at b8 |", flush=True)
    write_json_atomic(args.out / "int8_cpu.json", {
        "img_size": args.img_size, "backbone": "resnet50", "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "results": results})
    print(f"wrote {args.out / 'int8_cpu.json'}")


TABLE_HEADER = (
    "| method | FP32 ms (b1) | ORT INT8 ms | x | modelopt Q/DQ ms | x | FP32 img/s (b8) | ORT INT8 img/s | x "
    "| modelopt img/s | x |\n" + "|---" * 11 + "|"
)


def print_row(method: str, r: dict) -> None:
    missing = {"latency_ms_b1": float("nan"), "speedup_b1": float("nan"), "throughput_b8": float("nan"),
               "speedup_b8": float("nan")}
    f, o, m = r["fp32"], r["ort-int8"], r.get("modelopt-int8", missing)
    print(f"| {method} | {f['latency_ms_b1']:.0f} | {o['latency_ms_b1']:.0f} | {o['speedup_b1']:.2f} | "
          f"{m['latency_ms_b1']:.0f} | {m['speedup_b1']:.2f} | {f['throughput_b8']:.1f} | {o['throughput_b8']:.1f} | "
          f"{o['speedup_b8']:.2f} | {m['throughput_b8']:.1f} | {m['speedup_b8']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
