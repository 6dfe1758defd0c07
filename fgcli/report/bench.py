"""``fgcli bench MODEL``: throughput against batch size for each variant, up to the largest batch that fits.

Where does a bigger batch stop paying? The sweep doubles the batch (1, 2, 4, ... ``max_batch``), times every
variant round-robin at each size (as the report does, so load drift hits all alike), and marks the knee: the
smallest batch that reaches ``KNEE_SHARE`` of the variant's best images/s. A batch the device cannot hold ends
that variant's sweep with the reason; the others go on. Inputs are random images of the model's size (speed
does not depend on their content), staged on the device before the timed calls (``Runner.timed_region``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import fgcli
from fgcli.errors import FgcliError
from fgcli.formats import BY_NAME, TORCH
from fgcli.report.limit import COUNTED_MODEL, is_gpu_placement, limit_summary
from fgcli.report.options import BENCH_ITERATIONS, BENCH_WARMUP
from fgcli.report.plots import COLORS, _figure, _save
from fgcli.report.render import DASH, markdown_table, pct
from fgcli.report.variants import onnxruntime_device, parse_formats, plan_variants
from fgcli.runtime import RUNNER_SUFFIXES, open_runner
from fgcli.runtime.peak import limit_fraction
from fgcli.runtime.timing import throughput_rounds
from fgcli.runtime.torch_runner import TorchRunner
from fgcli.utils import write_json_atomic, write_text_atomic

BENCH_SCHEMA = "fgcli.bench/1"
#: the knee: the smallest batch reaching this share of the best throughput
KNEE_SHARE = 0.9
#: what a runtime says when a batch does not fit in device memory (PyTorch, ONNX Runtime, TensorRT)
OUT_OF_MEMORY = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation")


@dataclass
class Sweep:
    """One variant's sweep: images/s and median ms per call by batch, and why it stopped early (or None)."""

    name: str
    device: str
    provider: str
    timed: str
    throughput_ips: dict[int, float] = field(default_factory=dict)
    call_ms: dict[int, float] = field(default_factory=dict)
    stopped: str | None = None


def sweep_batches(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to ``max_batch``, which is always the last (also when it is no power of two)."""
    if max_batch < 1:
        raise FgcliError(f"--max-batch {max_batch} must be at least 1")
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch]
    return [*sizes, max_batch]


def knee(throughput_ips: dict[int, float], share: float = KNEE_SHARE) -> int | None:
    """The smallest batch whose images/s reach ``share`` of the best; None for an empty sweep."""
    if not throughput_ips:
        return None
    best = max(throughput_ips.values())
    return min(batch for batch, ips in throughput_ips.items() if ips >= share * best)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(text in str(exc).lower() for text in OUT_OF_MEMORY)


def run_sweep(runners: dict, batches: Sequence[int], iterations: int = BENCH_ITERATIONS,
              warmup: int = BENCH_WARMUP, progress: Callable[[int], None] | None = None,
              seed: int = 0) -> list[Sweep]:
    """Time every runner (name -> Runner) at each batch size, round robin; ``iterations`` images' worth of calls
    per batch (at least 3, ``throughput_rounds``) after ``warmup`` untimed ones (at least 1). A runner that runs
    out of memory stops there, with the reason."""
    progress = progress or (lambda n: None)
    sweeps = {name: Sweep(name, *runner.placement, runner.timed_region) for name, runner in runners.items()}
    first = next(iter(runners.values()))
    size = first.preprocess.img_size
    images = np.random.default_rng(seed).standard_normal((max(batches), 3, size, size), dtype=np.float32)
    for batch in batches:
        live = [name for name in runners if sweeps[name].stopped is None]
        staged, samples = {}, {name: [] for name in live}
        for name in live:
            try:
                staged[name] = runners[name].stage_input(images[:batch])
                for _ in range(max(1, warmup)):  # at least one: it shows whether the batch fits, untimed
                    runners[name].run_staged(staged[name])
            except Exception as exc:  # noqa: BLE001 - only running out of memory is an answer; the rest re-raises
                if not is_out_of_memory(exc):
                    raise
                sweeps[name].stopped = f"batch {batch} does not fit in {sweeps[name].device} memory"
                staged.pop(name, None)
        names = list(staged)
        rounds = throughput_rounds(batch, iterations)
        for round_index in range(rounds):
            start_at = round_index % max(len(names), 1)
            for name in names[start_at:] + names[:start_at]:
                start = time.perf_counter()
                runners[name].run_staged(staged[name])
                samples[name].append(time.perf_counter() - start)
            progress(1)
        for name in names:
            seconds = float(np.median(samples[name]))
            sweeps[name].call_ms[batch] = 1000 * seconds
            sweeps[name].throughput_ips[batch] = batch / seconds
        staged.clear()  # free the device copies before the next, larger batch
    return list(sweeps.values())


def bench_calls(batches: Sequence[int], iterations: int) -> int:
    """The length of ``run_sweep``'s progress bar (one step per round)."""
    return sum(throughput_rounds(batch, iterations) for batch in batches)


def open_bench_runners(source: Path, formats: str | None, device: str) -> tuple[dict, list[tuple[str, str]]]:
    """(name -> open Runner, [(name, reason)] of those that cannot run here) for a .pt checkpoint's torch variants
    in ``formats`` (default: the torch group), or the one model of a .onnx / .engine file."""
    suffix = source.suffix.lower()
    usage = "fgcli bench RUN/best.pt, or EXPORT_DIR/model.onnx, or a TensorRT .engine"
    if suffix not in RUNNER_SUFFIXES:
        raise FgcliError(f"cannot bench {source}: not a .pt, .onnx or .engine file", hint=usage)
    if not source.is_file():
        raise FgcliError(f"model file not found: {source}", hint=usage)
    if suffix != ".pt":
        if formats is not None:
            raise FgcliError("--formats picks the torch variants of a .pt checkpoint",
                             hint=f"fgcli bench {source} runs that one model; drop --formats")
        runtime_device = onnxruntime_device(device) if suffix == ".onnx" else device  # as in the report
        return {source.name: open_runner(source, device=runtime_device, spin_wait=False)}, []
    from fgcli.training.checkpoint import load_checkpoint  # imports torch

    names = parse_formats(formats or "torch", require_reference=False)
    others = [name for name in names if BY_NAME[name].runtime != TORCH]
    if others:
        raise FgcliError(f"fgcli bench runs a checkpoint's torch variants, not {', '.join(others)}",
                         hint="bench an exported model by its file: fgcli bench EXPORT_DIR/model.int8.onnx")
    checkpoint = load_checkpoint(source)
    runners, refused = {}, []
    for variant in plan_variants(names, checkpoint=True, export_dir=source.parent, device=device):
        if variant.available and variant.backend == TORCH:
            try:
                runners[variant.name] = TorchRunner(checkpoint, device=device, precision=variant.precision,
                                                    mode=variant.torch_mode)
                continue
            except FgcliError as exc:
                variant.refuse(exc.message)
        refused.append((variant.name, variant.reason))
    if not runners:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in refused)
        raise FgcliError(f"no variant of {source} can run here ({reasons})", hint="use --device cpu with torch-fp32")
    return runners, refused


def counted_model(source: Path, onnx: Path | None) -> Path:
    """The ONNX graph whose FLOPs the fraction of the limit uses: ``onnx``, else MODEL itself when it is ONNX, else
    the model.onnx that fgcli export (RUN/export) or fgcli report (RUN/report/export) wrote beside the checkpoint."""
    if onnx is not None:
        return onnx
    if source.suffix.lower() == ".onnx":
        return source
    candidates = [source.parent / "export" / COUNTED_MODEL, source.parent / "report" / "export" / COUNTED_MODEL]
    return next((path for path in candidates if path.is_file()), candidates[0])


def bench_limit(sweeps: list[Sweep], model: Path, peak_tflops: float | None,
                step: Callable[[str], None]) -> tuple[dict[str, Any] | None, dict[str, float]]:
    """(limit summary, fraction of the limit at each GPU variant's best batch); (None, {}) without a GPU variant."""
    gpu = [s for s in sweeps if is_gpu_placement(s.device) and s.throughput_ips]
    if not gpu:
        return None, {}
    summary = limit_summary(model, gpu[0].device, peak_tflops, step)
    if summary["note"]:
        return summary, {}
    return summary, {s.name: limit_fraction(max(s.throughput_ips.values()), summary["flops_per_image"],
                                            summary["peak_tflops"]) for s in gpu}


def bench_record(source: Path, device: str, sweeps: list[Sweep], refused: list[tuple[str, str]],
                 batches: Sequence[int], img_size: int, iterations: int,
                 limit: tuple[dict[str, Any] | None, dict[str, float]] = (None, {})) -> dict[str, Any]:
    """bench.json's content (schema ``fgcli.bench/1``): batch keys are strings, as in report.json; ``limit`` is
    ``bench_limit``'s answer."""
    summary, fractions = limit
    variants = []
    for sweep in sweeps:
        best = max(sweep.throughput_ips, key=sweep.throughput_ips.get) if sweep.throughput_ips else None
        variants.append({
            "name": sweep.name, "device": sweep.device, "provider": sweep.provider, "timed": sweep.timed,
            "throughput_ips": {str(b): v for b, v in sweep.throughput_ips.items()},
            "call_ms": {str(b): v for b, v in sweep.call_ms.items()},
            "knee_batch": knee(sweep.throughput_ips), "best_batch": best,
            "best_ips": sweep.throughput_ips[best] if best else None,
            "limit_fraction": fractions.get(sweep.name), "stopped": sweep.stopped})
    return {"schema": BENCH_SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fgcli_version": fgcli.__version__, "source": str(source), "device": device, "img_size": img_size,
            "batch_sizes": list(batches), "iterations": iterations, "knee_share": KNEE_SHARE, "limit": summary,
            "variants": variants, "not_run": [{"name": name, "reason": reason} for name, reason in refused]}


def bench_table(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per batch size, one images/s column per variant; ``*`` marks each variant's knee."""
    variants = record["variants"]
    headers = ["batch", *[f"{v['name']} img/s" for v in variants]]
    rows = []
    for batch in record["batch_sizes"]:
        cells = [str(batch)]
        for v in variants:
            ips = v["throughput_ips"].get(str(batch))
            cells.append(DASH if ips is None else f"{ips:.0f}" + (" *" if v["knee_batch"] == batch else ""))
        rows.append(cells)
    return headers, rows


def render_bench_markdown(record: dict[str, Any], png_name: str = "bench.png") -> str:
    lines = [f"# fgcli bench: `{record['source']}`", "",
             f"- {record['img_size']} px random images, device `{record['device']}`; images/s = batch / median "
             f"seconds per call; * marks the knee: the smallest batch reaching {100 * record['knee_share']:.0f} % "
             "of the variant's best.", ""]
    lines += [f"- {v['name']}: {v['device']}, {v['provider']}; {_best(v)}; timed: {v['timed']}"
              + (f"; stopped: {v['stopped']}" if v["stopped"] else "") for v in record["variants"]]
    limit = record["limit"]
    if limit:
        lines += ["", f"- limit: {limit['note']}" if limit["note"] else
                  f"- limit: {limit['flops_per_image'] / 1e9:.2f} GFLOP per image ({limit['counted_from']}) against "
                  f"{limit['peak_tflops']:.1f} TFLOP/s ({limit['peak_source']}): at most "
                  f"{limit['images_per_s_bound']:.0f} images/s"]
    lines += ["", markdown_table(*bench_table(record))]
    if record["not_run"]:
        lines += ["", "## Not run on this machine", "",
                  markdown_table(["variant", "reason"], [[n["name"], n["reason"]] for n in record["not_run"]])]
    lines += ["", f"![images/s against batch size]({png_name})", ""]
    return "\n".join(lines)


def _best(variant: dict[str, Any]) -> str:
    if variant["best_batch"] is None:
        return "no batch ran"
    limit = f" ({pct(variant['limit_fraction'])} % of the limit)" if variant["limit_fraction"] is not None else ""
    return f"best {variant['best_ips']:.0f} images/s at batch {variant['best_batch']}{limit}"


def plot_bench(record: dict[str, Any], out_path: str | Path) -> Path:
    """images/s against batch size (log 2 axis), one line per variant, its knee circled."""
    figure = _figure(figsize=(9, 5.5))
    ax = figure.subplots()
    for index, v in enumerate(record["variants"]):
        if not v["throughput_ips"]:
            continue
        color = COLORS[index % len(COLORS)]
        batches = [int(b) for b in v["throughput_ips"]]
        ax.plot(batches, list(v["throughput_ips"].values()), marker="o", color=color, label=v["name"])
        if v["knee_batch"] is not None:
            ax.scatter([v["knee_batch"]], [v["throughput_ips"][str(v["knee_batch"])]], s=220, facecolors="none",
                       edgecolors=color, linewidths=2, zorder=4)
    ax.set_xscale("log", base=2)
    ax.set_xticks(record["batch_sizes"], [str(b) for b in record["batch_sizes"]])  # 1, 2, 4, not 2^0, 2^1
    ax.set_ylim(bottom=0)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s (higher is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"throughput against batch size (circle: the knee, {100 * record['knee_share']:.0f} % of the best)")
    return _save(figure, out_path)


def write_bench(record: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """bench.json, bench.md and bench.png in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    return {"json": write_json_atomic(out_dir / "bench.json", record),
            "md": write_text_atomic(out_dir / "bench.md", render_bench_markdown(record)),
            "png": plot_bench(record, out_dir / "bench.png")}
