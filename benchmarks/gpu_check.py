"""What CPU machines cannot check, in one command on one CUDA machine (about 8 minutes on one H200).

    python benchmarks/gpu_check.py [--out runs/gpu-check] [--json FILE] [--budget-s 480] [--steps 300]
    python benchmarks/gpu_check.py --dry-run      # print the plan, check every import and command line, run nothing
    python benchmarks/gpu_check.py --rehearse     # the whole plan at a tiny size on CPU (slow on 2 cores)

On the lent GPU machine (its image has torch, timm, onnx; not onnxslim or nvidia-modelopt): on the development
machine first ``bash ../shared/gpu/fetch_wheels.sh`` (writes ``.whl/``, about 25 MB, ignored by git), then one
device command that carries ``.whl``:

    python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu-site .whl/*.whl \\
      && export PYTHONPATH=$PWD:$PWD/.gpu-site && python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json

Steps, most important first (``--only`` picks groups; ``plan_steps`` is the list, extend it there). A step that fails
is recorded with its error and the run goes on; the JSON is rewritten after every step, so a run cut short by a
time limit still returns what it did; a step that would not fit in what is left of ``--budget-s`` (its
``estimate_s``) is recorded as skipped.
1. ``train/<method>``: every method, 4 epochs (~``--steps`` optimizer steps) at ``--img-size`` on the synthetic
   dataset with the default settings (``--amp`` auto: bf16 where the GPU has it), through fgcli's Trainer.
2. ``pipeline``: baseline training steps/s through the Trainer (decode, augment, loader, loop) against a plain
   loop over the same model and precision on a batch already on the device (target >= 0.9), and the host
   synchronisations the Trainer's epoch made (``torch.cuda.set_sync_debug_mode``).
3. ``train-fp16/<method>``: every method again with ``--amp fp16`` (GradScaler), the precision that diverged.
4. ``report``: ``fgcli report RUN --device cuda`` on the trained baseline: torch FP32 / FP16 / BF16 (eager, and
   BF16 compiled, as a CUDA graph, and both), ONNX FP32 and ORT INT8 (on the CPU when onnxruntime has no CUDA
   provider), TensorRT when present; per variant where it ran, p50 at batch 1, images/s at the largest batch and
   the fraction of the GPU's BF16 rate, and whether FP16 / BF16 are at least as fast as FP32 (issue 23).
5. ``graphs``: BF16 at batch 1, eager against ``torch.compile`` and against one CUDA graph replay.
6. ``bench``: ``fgcli bench RUN/best.pt --device cuda``: images/s against batch size 1..256 for the torch
   variants, the knee, the best batch and its fraction of the limit (FLOPs from the report's model.onnx).
7. ``eval``: baseline inference images/s in FP32 / FP16 / BF16, eager, at batch 1, 32 and 128.
8. ``qat``: two QAT epochs (``fgcli train --qat``: modelopt fake INT8) of GCAM-CSA against two plain epochs from
   the same weights; the second epochs are compared, the first QAT epoch (which builds modelopt's CUDA
   extension once per machine) is reported beside them.
9. ``ddp``: the baseline for one epoch through ``torchrun --nproc_per_node=<GPUs present>`` with NCCL (gloo on
   CPU), i.e. ``fgcli train`` as users launch it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from fgcli.data.synth import generate_synthetic
from fgcli.training.config import TrainConfig
from fgcli.training.train import Trainer
from fgcli.formats import (
    ONNX_FP32, ONNX_INT8_ORT, TORCH_BF16, TORCH_BF16_COMPILED, TORCH_BF16_COMPILED_GRAPH, TORCH_BF16_GRAPH, TORCH_FP16,
    TORCH_FP32, file_of,
)
from fgcli.models import create_model, list_models
from fgcli.utils import write_json_atomic

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EPOCHS = 4


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
    report_formats: str = ",".join(["torch", TORCH_BF16_COMPILED, TORCH_BF16_GRAPH, TORCH_BF16_COMPILED_GRAPH,
                                     ONNX_FP32, ONNX_INT8_ORT, "trt"])  # torch, trt: --formats groups
    classes: int = 10


def full_plan(steps: int, img_size: int) -> Plan:
    return Plan(device="cuda", img_size=img_size, resize_size=img_size * 8 // 7, steps=steps, batch_size=16,
                backbone=None, eval_batches=(1, 32, 128), eval_iterations=30, compile=True)


def rehearsal_plan() -> Plan:
    """Every step, tiny: 32 px, ResNet-18, a few steps on CPU, no compile (minutes of compiling on 2 cores)."""
    return Plan(device="cpu", img_size=32, resize_size=36, steps=4, batch_size=4, backbone="resnet18",
                eval_batches=(1, 2), eval_iterations=2, compile=False, report_formats=f"{TORCH_FP32},{ONNX_FP32}",
                classes=3)


def per_class_for(plan: Plan) -> int:
    """Images per class so one epoch is ~plan.steps / 4 steps (4 epochs in all), 70 % of them for training."""
    train_images = max(2 * plan.batch_size, plan.steps * plan.batch_size // EPOCHS)
    return max(4, round(train_images / 0.7 / plan.classes))


def train_config(plan: Plan, method: str, data: Path, out: Path, epochs: int, amp: str = "auto") -> TrainConfig:
    return TrainConfig(method=method, data=str(data), out=str(out), backbone=plan.backbone, img_size=plan.img_size,
                       resize_size=plan.resize_size, epochs=epochs, batch_size=plan.batch_size, device=plan.device,
                       workers=min(8, os.cpu_count() or 1) if plan.device == "cuda" else 0, amp=amp, seed=0,
                       overwrite=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_train(plan: Plan, data: Path, out: Path, method: str, amp: str = "auto") -> dict:
    """``method`` for 4 epochs through fgcli's Trainer (the defaults: channels_last on CUDA, ``--amp``)."""
    trainer = Trainer(train_config(plan, method, data, out, epochs=EPOCHS, amp=amp))
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    steps = trainer.steps_per_epoch * result.epochs_run
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"precision": trainer.precision, "steps": steps, "seconds": round(seconds, 2),
            "images_per_s": round(steps * plan.batch_size / seconds, 1),
            "train_images_per_s_last_epoch": round(last["images_per_s"], 1),
            "train_loss_last_epoch": round(last["train_loss"], 4), "best_top1": result.best_top1}


def step_qat(plan: Plan, data: Path, out: Path, method: str = "gcam-csa") -> dict:
    """Two QAT epochs (fgcli train --qat: modelopt's fake INT8 quantizers) of ``method`` against two plain epochs
    of the same run from the same weights. The second epochs are compared: the first QAT epoch also builds
    modelopt's CUDA extension (once per machine), reported as ``qat_first_epoch_s``."""
    from fgcli.training.config import resolve_config

    source = out / method / "best.pt"
    if not source.is_file():  # the train step leaves it; alone, train one epoch first
        Trainer(train_config(plan, method, data, out / method, epochs=1)).fit()
    times = {}
    for kind, qat in (("plain", False), ("qat", True)):
        cfg = resolve_config({**train_config(plan, method, data, out / f"{method}-{kind}-epoch", epochs=2).to_dict(),
                              "weights": str(source), "qat": qat or None, "overwrite": True})
        Trainer(cfg).fit()
        lines = (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()
        times[kind] = [json.loads(line)["epoch_time_s"] for line in lines]
    return {"method": method, "img_size": plan.img_size, "plain_epoch_s": round(times["plain"][-1], 2),
            "qat_epoch_s": round(times["qat"][-1], 2), "qat_over_plain": round(times["qat"][-1] / times["plain"][-1], 2),
            "qat_first_epoch_s": round(times["qat"][0], 2),
            "extension_build_s_estimate": round(times["qat"][0] - times["qat"][-1], 1)}


def ddp_processes(plan: Plan) -> int:
    return max(1, torch.cuda.device_count()) if plan.device == "cuda" else 2


def ddp_train_arguments(plan: Plan, data: Path, out: Path) -> list[str]:
    """``fgcli train`` arguments of the DDP step (also parsed, not run, by --dry-run)."""
    arguments = ["train", "--method", "baseline", "--data", str(data), "--out", str(out / "ddp"),
                 "--img-size", str(plan.img_size), "--resize-size", str(plan.resize_size), "--epochs", "1",
                 "--batch-size", str(plan.batch_size), "--device", plan.device,
                 "--workers", "4" if plan.device == "cuda" else "0", "--overwrite"]
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


def count_syncs(device: str, work: Callable[[], object]) -> int | None:
    """How many host synchronisations ``work`` made on CUDA (None on the CPU, where there are none to count)."""
    if not device.startswith("cuda"):
        work()
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def step_pipeline(plan: Plan, data: Path, out: Path) -> dict:
    """fgcli's training steps/s against a plain loop on device-resident tensors, same model and precision."""
    trainer = Trainer(train_config(plan, "baseline", data, out / "pipeline", epochs=3))
    trainer.train_one_epoch(0)  # warm-up: cuDNN autotuning, loader workers
    epoch = {}
    syncs = count_syncs(plan.device, lambda: epoch.update(trainer.train_one_epoch(1)))
    start = time.perf_counter()
    trainer.train_one_epoch(2)
    steps = trainer.steps_per_epoch
    fgcli_rate = steps / (time.perf_counter() - start)

    model, device = trainer.model, trainer.device
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=trainer.scaler.is_enabled())
    images = torch.randn(plan.batch_size, 3, plan.img_size, plan.img_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    labels = torch.randint(0, plan.classes, (plan.batch_size,), device=device)
    dtype = trainer.autocast_dtype

    def plain_step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
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
    plain_rate = steps / (time.perf_counter() - start)
    return {"precision": trainer.precision, "steps": steps, "fgcli_images_per_s": round(fgcli_rate * plan.batch_size, 1),
            "plain_images_per_s": round(plain_rate * plan.batch_size, 1),
            "ratio_fgcli_to_plain": round(fgcli_rate / plain_rate, 3), "target": 0.9,
            "host_syncs_in_one_epoch": syncs}


def images_per_s(plan: Plan, runnable: Callable, x: torch.Tensor) -> float:
    with torch.inference_mode():
        for _ in range(3):
            runnable(x)
        sync(plan.device)
        start = time.perf_counter()
        for _ in range(plan.eval_iterations):
            runnable(x)
        sync(plan.device)
    return round(plan.eval_iterations * len(x) / (time.perf_counter() - start), 1)


def eval_model(plan: Plan, dtype: torch.dtype):
    model = create_model("baseline", plan.classes, backbone=plan.backbone).eval().to(plan.device, dtype)
    return model.to(memory_format=torch.channels_last)


def eval_input(plan: Plan, batch: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(batch, 3, plan.img_size, plan.img_size, device=plan.device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last)


def step_eval(plan: Plan, data: Path, out: Path) -> dict:
    """Eager inference images/s per dtype and batch size."""
    results = {}
    for name, dtype in DTYPES.items():
        model = eval_model(plan, dtype)
        for batch in plan.eval_batches:
            results[f"{name}/eager/b{batch}"] = images_per_s(plan, model, eval_input(plan, batch, dtype))
    return results


def cuda_graph(model: torch.nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model(x)`` captured once as a CUDA graph; the returned function replays it (on ``x``'s buffer)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = model(x)

    def replay(_: torch.Tensor) -> torch.Tensor:
        graph.replay()
        return out

    return replay


def step_graphs(plan: Plan, data: Path, out: Path) -> dict:
    """BF16 inference at batch 1, where launching kernels costs more than running them: eager, ``torch.compile``
    (static shapes; its compile time apart) and one CUDA graph replay."""
    dtype = torch.bfloat16
    model = eval_model(plan, dtype)
    x = eval_input(plan, plan.eval_batches[0], dtype)
    batch = f"b{len(x)}"
    results = {f"bf16/eager/{batch}": images_per_s(plan, model, x)}
    if plan.compile:
        compiled = torch.compile(model, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        sync(plan.device)
        results["bf16/compile/compile_s"] = round(time.perf_counter() - start, 1)
        results[f"bf16/compile/{batch}"] = images_per_s(plan, compiled, x)
    else:
        results["compile"] = "skipped (rehearsal)"
    if plan.device == "cuda":
        results[f"bf16/cuda-graph/{batch}"] = images_per_s(plan, cuda_graph(model, x), x)
    else:
        results["cuda-graph"] = "skipped (CPU)"
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
    if not (out / "baseline" / "best.pt").is_file():
        raise RuntimeError("no trained baseline: the train/baseline step failed or was skipped")
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
    if TORCH_FP32 in rows:  # issue 23: half precision at least as fast as FP32, at batch 1 and the largest batch
        fp32 = rows[TORCH_FP32]
        figures["half_not_slower"] = {
            name: {"b1": rows[name]["latency_ms"]["p50"] <= fp32["latency_ms"]["p50"],
                   f"b{largest}": rows[name]["throughput_ips"][largest] >= fp32["throughput_ips"][largest]}
            for name in (TORCH_FP16, TORCH_BF16) if name in rows}
    return figures


def bench_arguments(plan: Plan, out: Path) -> list[str]:
    """``fgcli bench`` arguments of the bench step: the torch variants of the trained baseline, batch 1..256."""
    formats = (",".join([TORCH_FP32, TORCH_FP16, TORCH_BF16, TORCH_BF16_COMPILED, TORCH_BF16_GRAPH,
                         TORCH_BF16_COMPILED_GRAPH]) if plan.device == "cuda" else TORCH_FP32)
    return ["bench", str(out / "baseline" / "best.pt"), "--device", plan.device, "--formats", formats,
            "--max-batch", "256" if plan.device == "cuda" else str(plan.eval_batches[-1]),
            "--iterations", "64" if plan.device == "cuda" else "2", "--out", str(out / "bench"),
            "--onnx", str(out / "report" / "export" / file_of(ONNX_FP32))]


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


@dataclass(frozen=True)
class Step:
    """One entry of the plan: ``name`` in the JSON, ``group`` for ``--only``, ``run(plan, data, out)`` returns
    its figures; it is skipped when less than ``estimate_s`` (seconds on one H200) of the budget is left."""

    name: str
    group: str
    run: Callable[[Plan, Path, Path], dict]
    estimate_s: float


def plan_steps(out: Path) -> list[Step]:
    """Every step in the order it runs: the most important first."""
    methods = list_models()
    steps = [Step(f"train/{m}", "train", partial(_in_folder, step_train, out / m, method=m), 30) for m in methods]
    steps.append(Step("pipeline", "pipeline", step_pipeline, 30))
    steps += [Step(f"train-fp16/{m}", "train-fp16", partial(_in_folder, step_train, out / "fp16" / m, method=m,
                                                             amp="fp16"), 30) for m in methods]
    # issue 23's report (half precision against FP32, INT8 rows under --device cuda) before the extras
    steps += [Step("report", "report", step_report, 150), Step("graphs", "graphs", step_graphs, 75),
              Step("bench", "bench", step_bench, 60), Step("eval", "eval", step_eval, 20),
              Step("qat", "qat", step_qat, 90), Step("ddp", "ddp", step_ddp, 30)]
    return steps


def _in_folder(step: Callable[..., dict], folder: Path, plan: Plan, data: Path, out: Path, **options) -> dict:
    """A step that trains into its own run folder."""
    return step(plan, data, folder, **options)


#: the ``--only`` groups in the order they run
GROUPS = tuple(dict.fromkeys(step.group for step in plan_steps(Path("."))))


def environment(plan: Plan) -> dict:
    info = {"torch": torch.__version__, "device": plan.device}
    if plan.device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                    cuda=torch.version.cuda, capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    bf16=torch.cuda.is_bf16_supported())
    return info


def method_status(steps: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Per method: ok, skipped or the first line of the error, for each training group."""
    status: dict[str, dict[str, str]] = {}
    for name, figures in steps.items():
        if "/" in name and name.split("/")[0].startswith("train"):
            group, method = name.split("/", 1)
            text = figures["status"] if figures["status"] == "ok" else f"{figures['status']}: {figures['error']}"
            status.setdefault(method, {})[group] = text.splitlines()[0][:300]
    return status


def run_step(step: Step, plan: Plan, data: Path, out: Path) -> dict:
    """The step's figures with ``status`` ok, or ``status`` failed with its error: a failure never stops the run."""
    start = time.perf_counter()
    try:
        figures = {"status": "ok", **step.run(plan, data, out)}
    except Exception as exc:  # noqa: BLE001 - every failure is a finding to record, not a reason to stop
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        figures = {"status": "failed", "error": f"{type(exc).__name__}: {message}",
                   "traceback": traceback.format_exc()[-3000:]}
    figures["step_seconds"] = round(time.perf_counter() - start, 1)
    return figures


def run(plan: Plan, out: Path, groups: tuple[str, ...], budget_s: float, json_path: Path) -> dict:
    """Synthetic data, then each step in order within the budget; writes the record after every step."""
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: this check needs one (use --dry-run to rehearse it on CPU)")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not data.is_dir():
        generate_synthetic(data, num_classes=plan.classes, per_class=per_class_for(plan), seed=0)
    record = {"plan": asdict(plan), "budget_s": budget_s, "environment": environment(plan), "steps": {}}
    for step in plan_steps(out):
        if step.group not in groups:
            continue
        left = budget_s - (time.perf_counter() - started)
        if left < step.estimate_s:
            record["steps"][step.name] = {"status": "skipped", "error": f"{left:.0f} s of --budget-s left, "
                                                                        f"the step takes ~{step.estimate_s:.0f} s"}
        else:
            print(f"[{step.name}] ...", flush=True)
            record["steps"][step.name] = run_step(step, plan, data, out)
            print(f"[{step.name}] {record['steps'][step.name]['status']}", flush=True)
        record["methods"] = method_status(record["steps"])
        record["seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(json_path, record)
    return record


def dry_run(plan: Plan, out: Path, groups: tuple[str, ...]) -> dict:
    """Everything but the work: imports, the method registry, and both fgcli command lines parsed by the CLI."""
    import click
    import typer.main

    from fgcli.cli import app

    importlib.import_module("torch.distributed.run")
    cli = typer.main.get_command(app)
    parent = click.Context(cli)
    data = out / "data"
    checked = {}
    for group, arguments in (("ddp", ddp_train_arguments(plan, data, out)),
                             ("report", report_arguments(plan, data, out)), ("bench", bench_arguments(plan, out))):
        if group in groups:
            command = cli.get_command(parent, arguments[0])
            command.make_context(arguments[0], list(arguments[1:]), parent=parent)  # raises on a wrong option
            checked[group] = "fgcli " + " ".join(arguments)
    return {"steps": [s.name for s in plan_steps(out) if s.group in groups], "methods": list_models(),
            "ddp_processes": ddp_processes(plan), "commands": checked, "backends": deploy_backends()}


def table(record: dict) -> str:
    """One line per figure, ``step  name  value`` (tracebacks stay in the JSON), then each method's status."""
    lines = [f"{'step':22} {'figure':40} value"]
    for step, figures in record["steps"].items():
        for name, value in figures.items():
            if name == "traceback":
                continue
            for key, item in (value.items() if isinstance(value, dict) else [("", value)]):
                lines.append(f"{step:22} {(name + ('/' + key if key else ''))[:40]:40} {item}")
    for method, groups in record.get("methods", {}).items():
        lines.append(f"{method:22} " + "; ".join(f"{group} {status}" for group, status in groups.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="data and run folders")
    parser.add_argument("--json", type=Path, default=None, help="the record (default <out>/gpu_check.json)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per method over 4 epochs (default 300)")
    parser.add_argument("--img-size", type=int, default=448, help="crop size, divisible by 32 (default 448)")
    parser.add_argument("--budget-s", type=float, default=480, help="seconds for the whole run; steps that would not "
                        "fit are skipped, most important first (default 480)")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS), help="run these step groups only")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check imports and commands only")
    parser.add_argument("--rehearse", action="store_true", help="the whole plan at a tiny size on CPU")
    args = parser.parse_args(argv)
    if args.img_size % 32 or args.steps < 4:
        parser.error("--img-size must be divisible by 32 and --steps at least 4")
    if ("report" in args.only and "train" not in args.only and not args.dry_run
            and not (args.out / "baseline" / "best.pt").is_file()):
        parser.error("the report step needs the train step's baseline (add train to --only)")
    plan = rehearsal_plan() if args.rehearse else full_plan(args.steps, args.img_size)
    groups = tuple(g for g in GROUPS if g in args.only)
    print("plan:", ", ".join(groups), json.dumps(asdict(plan)), flush=True)
    if args.dry_run:
        print(json.dumps(dry_run(plan, args.out, groups), indent=1))
        return 0
    json_path = args.json or args.out / "gpu_check.json"
    record = run(plan, args.out, groups, args.budget_s, json_path)
    print(table(record))
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
