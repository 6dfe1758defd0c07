"""What CPU machines cannot check, in one command on one CUDA machine (< 10 minutes on one data-centre GPU).

    python benchmarks/gpu_check.py [--out runs/gpu-check] [--steps 300] [--img-size 448]
    python benchmarks/gpu_check.py --dry-run      # print the plan, check every import and command line, run nothing
    python benchmarks/gpu_check.py --rehearse     # the whole plan at a tiny size on CPU (slow on 2 cores)

Steps (each one's figures go into ``<out>/gpu_check.json``; a table is printed at the end):
1. ``train``: every method, ~``--steps`` optimizer steps at ``--img-size`` on the synthetic dataset with AMP
   and a channels_last model, through fgcli's own Trainer; images/s and final top-1.
   ``qat``: one GCAM-CSA epoch with ``fgcli train --qat`` (modelopt fake INT8) against one plain epoch from
   the same weights: seconds per epoch at ``--img-size`` and their ratio.
2. ``ddp``: the baseline for one epoch through ``torchrun --nproc_per_node=<GPUs present>`` with NCCL (gloo on
   CPU), i.e. ``fgcli train`` as users launch it.
3. ``pipeline``: baseline ResNet-50 training images/s through fgcli's Trainer (decode, augment, loader)
   against a plain PyTorch loop over the same model on tensors already on the device; the ratio is the
   data pipeline's overhead (1.0: none).
4. ``eval``: baseline ResNet-50 inference images/s in torch FP32 / FP16 / BF16, eager and ``torch.compile``,
   at batch 1, 32 and 128.
5. ``report``: ``fgcli report RUN --device cuda`` on the trained baseline: torch FP32 / FP16 / BF16 (eager, and
   BF16 compiled, as a CUDA graph, and both), ONNX FP32 and ORT INT8 (on the CPU when onnxruntime has no CUDA
   provider), TensorRT when present; per variant where it ran, p50 at batch 1, images/s at the largest batch and
   the fraction of the GPU's BF16 rate, and whether FP16 / BF16 are at least as fast as FP32 (issue 23).
   ``bench``: ``fgcli bench RUN/best.pt --device cuda``: images/s against batch size 1..256 for the torch
   variants, the knee, the best batch and its fraction of the limit (FLOPs from the report's model.onnx).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fgcli.data.synth import generate_synthetic
from fgcli.engine.config import TrainConfig
from fgcli.engine.train import Trainer
from fgcli.models import create_model, list_models
from fgcli.utils import write_json_atomic

STEPS = ("train", "qat", "ddp", "pipeline", "eval", "report", "bench")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Plan:
    device: str
    img_size: int
    resize_size: int
    steps: int
    batch_size: int
    backbone: str | None  # None: each method's paper default (ResNet-50)
    eval_batches: tuple[int, ...]
    eval_iterations: int
    compile: bool
    report_formats: str = ("torch,torch-bf16-compiled,torch-bf16-graph,torch-bf16-compiled-graph,onnx-fp32,onnx-int8-ort,"
                           "trt")
    classes: int = 10


def full_plan(steps: int, img_size: int) -> Plan:
    return Plan(device="cuda", img_size=img_size, resize_size=img_size * 8 // 7, steps=steps, batch_size=16,
                backbone=None, eval_batches=(1, 32, 128), eval_iterations=30, compile=True)


def rehearsal_plan() -> Plan:
    """Every step, tiny: 32 px, ResNet-18, a few steps on CPU, no compile (minutes of compiling on 2 cores)."""
    return Plan(device="cpu", img_size=32, resize_size=36, steps=4, batch_size=4, backbone="resnet18",
                eval_batches=(1, 2), eval_iterations=2, compile=False, report_formats="torch-fp32,onnx-fp32",
                classes=3)


def per_class_for(plan: Plan) -> int:
    """Images per class so one epoch is ~plan.steps / 4 steps (4 epochs in all), 70 % of them for training."""
    train_images = max(2 * plan.batch_size, plan.steps * plan.batch_size // 4)
    return max(4, round(train_images / 0.7 / plan.classes))


def train_config(plan: Plan, method: str, data: Path, out: Path, epochs: int) -> TrainConfig:
    return TrainConfig(method=method, data=str(data), out=str(out), backbone=plan.backbone, img_size=plan.img_size,
                       resize_size=plan.resize_size, epochs=epochs, batch_size=plan.batch_size, device=plan.device,
                       workers=min(8, os.cpu_count() or 1) if plan.device == "cuda" else 0, amp=True, seed=0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_train(plan: Plan, data: Path, out: Path) -> dict:
    """Every method through fgcli's Trainer with AMP, its model in channels_last."""
    results = {}
    for method in list_models():
        trainer = Trainer(train_config(plan, method, data, out / method, epochs=4))
        trainer.model.to(memory_format=torch.channels_last)
        start = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - start
        steps = trainer.steps_per_epoch * result.epochs_run
        results[method] = {"steps": steps, "seconds": round(seconds, 2), "best_top1": result.best_top1,
                           "images_per_s": round(steps * plan.batch_size / seconds, 1)}
    return results


def step_qat(plan: Plan, data: Path, out: Path, method: str = "gcam-csa") -> dict:
    """One QAT epoch (fgcli train --qat: modelopt's fake INT8 quantizers, AMP) of ``method`` against one plain
    epoch of the same run from the same weights: seconds per epoch and their ratio."""
    from fgcli.engine.config import resolve_config

    source = out / method / "best.pt"
    if not source.is_file():  # the train step leaves it; alone, train one epoch first
        Trainer(train_config(plan, method, data, out / method, epochs=1)).fit()
    times = {}
    for kind, qat in (("plain", False), ("qat", True)):
        cfg = resolve_config({**train_config(plan, method, data, out / f"{method}-{kind}-epoch", epochs=1).to_dict(),
                              "weights": str(source), "qat": qat or None, "overwrite": True})
        Trainer(cfg).fit()
        metrics = json.loads((Path(cfg.out) / "metrics.jsonl").read_text().splitlines()[-1])
        times[kind] = metrics["epoch_time_s"]
    return {"method": method, "img_size": plan.img_size, "plain_epoch_s": round(times["plain"], 2),
            "qat_epoch_s": round(times["qat"], 2), "qat_over_plain": round(times["qat"] / times["plain"], 2)}


def ddp_processes(plan: Plan) -> int:
    return max(1, torch.cuda.device_count()) if plan.device == "cuda" else 2


def ddp_train_arguments(plan: Plan, data: Path, out: Path) -> list[str]:
    """``fgcli train`` arguments of the DDP step (also parsed, not run, by --dry-run)."""
    arguments = ["train", "--method", "baseline", "--data", str(data), "--out", str(out / "ddp"),
                 "--img-size", str(plan.img_size), "--resize-size", str(plan.resize_size), "--epochs", "1",
                 "--batch-size", str(plan.batch_size), "--device", plan.device,
                 "--workers", "4" if plan.device == "cuda" else "0"]
    return arguments + (["--backbone", plan.backbone] if plan.backbone else [])


def report_arguments(plan: Plan, data: Path, out: Path) -> list[str]:
    """``fgcli report`` arguments of the report step."""
    return ["report", str(out / "baseline" / "best.pt"), "--data", str(data), "--out", str(out / "report"),
            "--device", plan.device, "--iterations", str(plan.eval_iterations),
            "--batch-sizes", ",".join(map(str, plan.eval_batches)), "--calib-size", "64", "--cam-images", "0",
            "--formats", plan.report_formats, "--warmup", "3"]


def step_ddp(plan: Plan, data: Path, out: Path) -> dict:
    """``fgcli train`` under torchrun on every GPU present (2 CPU processes with gloo in a rehearsal)."""
    processes = ddp_processes(plan)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "fgcli.cli", *ddp_train_arguments(plan, data, out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {"processes": processes, "backend": "nccl" if plan.device == "cuda" else "gloo",
            "seconds": round(seconds, 2), "best_pt": (out / "ddp" / "best.pt").is_file()}


def step_pipeline(plan: Plan, data: Path, out: Path) -> dict:
    """fgcli's training images/s against a plain loop on device-resident tensors of the same shapes."""
    trainer = Trainer(train_config(plan, "baseline", data, out / "pipeline", epochs=1))
    trainer.model.to(memory_format=torch.channels_last)
    trainer.train_one_epoch(0)  # warm-up: cuDNN autotuning, loader workers
    fgcli_ips = trainer.train_one_epoch(1)["images_per_s"]

    model, device = trainer.model, trainer.device
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    images = torch.randn(plan.batch_size, 3, plan.img_size, plan.img_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, plan.classes, (plan.batch_size,), device=device)
    steps = trainer.steps_per_epoch

    def plain_step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            total = sum(model.loss(model(images), labels).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    model.train()
    plain_step()
    sync(plan.device)
    start = time.perf_counter()
    for _ in range(steps):
        plain_step()
    sync(plan.device)
    plain_ips = steps * plan.batch_size / (time.perf_counter() - start)
    return {"fgcli_images_per_s": round(fgcli_ips, 1), "plain_images_per_s": round(plain_ips, 1),
            "ratio_fgcli_to_plain": round(fgcli_ips / plain_ips, 3), "steps": steps}


def step_eval(plan: Plan, data: Path, out: Path) -> dict:
    """Inference images/s per dtype, eager and compiled, per batch size."""
    results = {}
    for name, dtype in DTYPES.items():
        model = create_model("baseline", plan.classes, backbone=plan.backbone).eval().to(plan.device, dtype)
        model = model.to(memory_format=torch.channels_last)
        modes = {"eager": model, **({"compile": torch.compile(model)} if plan.compile else {})}
        for mode, runnable in modes.items():
            for batch in plan.eval_batches:
                x = torch.randn(batch, 3, plan.img_size, plan.img_size, device=plan.device, dtype=dtype)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    for _ in range(3):
                        runnable(x)
                    sync(plan.device)
                    start = time.perf_counter()
                    for _ in range(plan.eval_iterations):
                        runnable(x)
                    sync(plan.device)
                seconds = time.perf_counter() - start
                results[f"{name}/{mode}/b{batch}"] = round(plan.eval_iterations * batch / seconds, 1)
    if not plan.compile:
        results["compile"] = "skipped (rehearsal)"
    return results


def deploy_backends() -> dict[str, str]:
    """Which GPU deployment runtimes the report can add on this machine."""
    present = {"tensorrt": importlib.util.find_spec("tensorrt") is not None}
    try:
        import onnxruntime

        present["onnxruntime-gpu"] = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        present["onnxruntime-gpu"] = False
    absent = {"tensorrt": "absent: its variants are not in the report",
              "onnxruntime-gpu": "absent: the onnx-* variants run on the CPU"}
    return {name: "present" if found else absent[name] for name, found in present.items()}


def step_report(plan: Plan, data: Path, out: Path) -> dict:
    """``fgcli report`` on the trained baseline with the device under test."""
    command = [sys.executable, "-m", "fgcli.cli", *report_arguments(plan, data, out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fgcli report failed ({done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads((out / "report" / "report.json").read_text())
    largest = str(plan.eval_batches[-1])
    rows = {row["name"]: row for row in report["variants"] if row["available"]}
    figures = {"backends": deploy_backends(), "limit": report["limit"], "notes": report["notes"], "variants": {
        row["name"]: ({"device": row["device"], "provider": row["provider"], "top1": row["top1"],
                       "agreement": row["agreement"], "p50_ms": row["latency_ms"]["p50"],
                       f"ips_b{largest}": row["throughput_ips"][largest], "limit_fraction": row["limit_fraction"]}
                      if row["available"] else {"unavailable": row["reason"]}) for row in report["variants"]}}
    if "torch-fp32" in rows:  # issue 23: half precision at least as fast as FP32, at batch 1 and the largest batch
        fp32 = rows["torch-fp32"]
        figures["half_not_slower"] = {
            name: {"b1": rows[name]["latency_ms"]["p50"] <= fp32["latency_ms"]["p50"],
                   f"b{largest}": rows[name]["throughput_ips"][largest] >= fp32["throughput_ips"][largest]}
            for name in ("torch-fp16", "torch-bf16") if name in rows}
    return figures


def bench_arguments(plan: Plan, out: Path) -> list[str]:
    """``fgcli bench`` arguments of the bench step: the torch variants of the trained baseline, batch 1..256."""
    formats = ("torch-fp32,torch-fp16,torch-bf16,torch-bf16-compiled,torch-bf16-graph,torch-bf16-compiled-graph"
               if plan.device == "cuda" else "torch-fp32")
    return ["bench", str(out / "baseline" / "best.pt"), "--device", plan.device, "--formats", formats,
            "--max-batch", "256" if plan.device == "cuda" else str(plan.eval_batches[-1]),
            "--iterations", "64" if plan.device == "cuda" else "2", "--out", str(out / "bench"),
            "--onnx", str(out / "report" / "export" / "model.onnx")]


def step_bench(plan: Plan, data: Path, out: Path) -> dict:
    """``fgcli bench`` on the trained baseline: per variant the best batch, its images/s and fraction of the limit
    (FLOPs of the report step's model.onnx when it ran), the knee, batch-1 ms and where the sweep stopped."""
    if not (out / "baseline" / "best.pt").is_file():
        raise RuntimeError("the bench step needs the train step's baseline (add train to --only)")
    command = [sys.executable, "-m", "fgcli.cli", *bench_arguments(plan, out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fgcli bench failed ({done.returncode}):\n{done.stderr[-4000:]}")
    record = json.loads((out / "bench" / "bench.json").read_text())
    return {"limit": record["limit"], "not_run": record["not_run"], "variants": {
        v["name"]: {"best_batch": v["best_batch"], "best_ips": v["best_ips"], "limit_fraction": v["limit_fraction"],
                    "knee_batch": v["knee_batch"], "b1_ms": v["call_ms"].get("1"), "stopped": v["stopped"]}
        for v in record["variants"]}}


STEP_FUNCTIONS = {"train": step_train, "qat": step_qat, "ddp": step_ddp, "pipeline": step_pipeline, "eval": step_eval,
                  "report": step_report, "bench": step_bench}


def environment(plan: Plan) -> dict:
    info = {"torch": torch.__version__, "device": plan.device}
    if plan.device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                    cuda=torch.version.cuda, capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    return info


def run(plan: Plan, out: Path, steps: tuple[str, ...]) -> dict:
    """Synthetic data, then each step in order; writes and returns the whole record."""
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: this check needs one (use --dry-run to rehearse it on CPU)")
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not data.is_dir():
        generate_synthetic(data, num_classes=plan.classes, per_class=per_class_for(plan), seed=0)
    record = {"plan": asdict(plan), "environment": environment(plan), "steps": {}}
    for name in steps:
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        record["steps"][name] = STEP_FUNCTIONS[name](plan, data, out)
        record["steps"][name]["step_seconds"] = round(time.perf_counter() - start, 1)
        write_json_atomic(out / "gpu_check.json", record)
    return record


def dry_run(plan: Plan, out: Path, steps: tuple[str, ...]) -> dict:
    """Everything but the work: imports, the method registry, and both fgcli command lines parsed by the CLI."""
    import click
    import typer.main

    from fgcli.cli import app

    importlib.import_module("torch.distributed.run")
    cli = typer.main.get_command(app)
    parent = click.Context(cli)
    data = out / "data"
    checked = {}
    for step, arguments in (("ddp", ddp_train_arguments(plan, data, out)), ("report", report_arguments(plan, data, out)),
                            ("bench", bench_arguments(plan, out))):
        if step in steps:
            command = cli.get_command(parent, arguments[0])
            command.make_context(arguments[0], list(arguments[1:]), parent=parent)  # raises on a wrong option
            checked[step] = "fgcli " + " ".join(arguments)
    return {"steps": list(steps), "methods": list_models(), "ddp_processes": ddp_processes(plan),
            "commands": checked, "backends": deploy_backends()}


def table(record: dict) -> str:
    """One line per figure, ``step  name  value``."""
    lines = [f"{'step':10} {'figure':34} value"]
    for step, figures in record["steps"].items():
        for name, value in figures.items():
            for key, item in (value.items() if isinstance(value, dict) else [("", value)]):
                lines.append(f"{step:10} {(name + ('/' + key if key else ''))[:34]:34} {item}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per method (default 300)")
    parser.add_argument("--img-size", type=int, default=448, help="crop size, divisible by 32 (default 448)")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS), help="run these steps only")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check imports and commands only")
    parser.add_argument("--rehearse", action="store_true", help="the whole plan at a tiny size on CPU")
    args = parser.parse_args(argv)
    if args.img_size % 32 or args.steps < 4:
        parser.error("--img-size must be divisible by 32 and --steps at least 4")
    if ("report" in args.only and "train" not in args.only and not args.dry_run
            and not (args.out / "baseline" / "best.pt").is_file()):
        parser.error("the report step needs the train step's baseline (add train to --only)")
    plan = rehearsal_plan() if args.rehearse else full_plan(args.steps, args.img_size)
    steps = tuple(s for s in STEPS if s in args.only)
    print("plan:", ", ".join(steps), json.dumps(asdict(plan)), flush=True)
    if args.dry_run:
        print(json.dumps(dry_run(plan, args.out, steps), indent=1))
        return 0
    record = run(plan, args.out, steps)
    print(table(record))
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
