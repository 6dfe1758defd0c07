"""``build_report``: every variant of one model evaluated and timed on the same split in one run.

The report is a JSON-ready dict (schema ``fgcli.report/1``, see ``docs/architecture.md``) so the CLI, the
markdown / PNG writers and ``--compare`` all read the same thing. Numbers are finite or null, never NaN.
"""

from __future__ import annotations

import os
import platform
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import numpy as np

import fgcli
from fgcli.data import load_split
from fgcli.training.batches import iter_image_batches
from fgcli.training.evaluate import evaluate_runner
from fgcli.training.qat import is_qat_checkpoint
from fgcli.errors import FgcliError
from fgcli.formats import ONNX_FILES, ONNXRUNTIME, TENSORRT, TORCH
from fgcli.report.artifacts import attach_onnx_artifact, export_for_report, prepare_engines, read_export_record
from fgcli.report.cam import draw_variant_grid
from fgcli.report.limit import device_limit
from fgcli.report.options import ReportOptions
from fgcli.report.plots import plot_report
from fgcli.report.render import render_markdown
from fgcli.report.variants import (
    AUTO_VARIANTS, NOTE_ORT_ON_CPU, QAT_VARIANT, REFERENCE_CANDIDATES, Variant, onnxruntime_device, parse_formats,
    plan_variants,
)
from fgcli.runtime import open_runner
from fgcli.runtime.comparator import top1_agreement
from fgcli.runtime.doctor import collect_environment
from fgcli.runtime.timing import throughput_rounds, time_interleaved, timed_calls
from fgcli.runtime.torch_runner import TorchRunner
from fgcli.utils import optional_import, write_json_atomic, write_text_atomic

SCHEMA = "fgcli.report/1"
#: classes listed per variant under "the classes that lost most"
WORST_CLASSES = 5
ATTENTION_PNG = "report_cam.png"


def _ignore(*args) -> None:
    """The default hook: nobody is watching."""


@contextmanager
def _no_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield _ignore


@dataclass
class ReportHooks:
    """How ``build_report`` shows what it does; the CLI draws these with rich.

    ``step(message)``: one line per export / build step. ``task(description, total)``: a context manager
    yielding ``advance(n)``, for progress bars. ``planned(variants)``: the variant list once it is known which
    can run here and which cannot (with the reason).
    """

    step: Callable[[str], None] = _ignore
    task: Callable[[str, int], ContextManager[Callable[[int], None]]] = _no_progress
    planned: Callable[[list[Variant]], None] = _ignore


def build_report(source: str | Path, data: str | Path, out_dir: str | Path, *, hooks: ReportHooks | None = None,
                 **options: Any) -> dict[str, Any]:
    """Evaluate and time every variant of a model on ``split`` of ``data``; returns the report dict.

    ``source``: a .pt checkpoint (the ONNX / INT8 / TensorRT files missing from ``out_dir/export`` are made
    there; files made from another checkpoint are replaced) or an export folder (its files are measured,
    torch is not needed, TensorRT engines are built beside the ONNX when TensorRT is here).
    ``options`` are the fields of ``ReportOptions`` (report/options.py, where their defaults are):
    ``formats``: "all" / None, or variant names and groups (torch, onnx, trt), see ``VARIANT_NAMES``.
    ``batch_sizes``: throughput is measured at each; the largest is also the evaluation batch and the
    TensorRT profile's maximum. ``iterations`` timed single-image calls per variant (after ``warmup``),
    interleaved across variants. ``calib_size``: INT8 calibration images from the train split of ``data``.
    ``device``: auto, cpu, cuda or cuda:N. ``split`` / ``layout``: what is evaluated. ``cam_images``: test
    images drawn in ``out_dir/report_cam.png`` with the occlusion map of the reference and of every
    reduced-precision variant (and the reference's Grad-CAM when it is torch), so one sees whether quantization
    moved the attention; 0 for none.
    ``target_agreement``: also report INT8 with measured mixed precision (the ``-auto`` variants, see
    ``fgcli export --target-agreement``); without it they are reported only from an export folder holding them.
    ``val_size``: the val (else test) images the target is measured on; ``max_drop``: with a target, also keep
    top-1 at most this many points below FP32 there; ``auto_calib``: calibrate them with the method whose full
    INT8 is closest to FP32 (``fgcli export --auto-calib``).
    ``peak_tflops``: the GPU's rate for the "fraction of the limit" column (default: a BF16 matrix product
    measured on the device in this run; see ``fgcli.report.limit``).
    ``qat``: a QAT run's checkpoint (``fgcli train --qat --weights SOURCE``): adds ``onnx-int8-qat``, its Q/DQ
    ONNX, beside the PTQ variants of ``source``. A QAT checkpoint given as ``source`` is reported that way against
    the FP32 run it was fine-tuned from.
    Write the other files with ``write_report(report, out_dir)``.
    """
    hooks = hooks or ReportHooks()
    opts = ReportOptions(**options)
    source, data, out_dir = Path(source), Path(data), Path(out_dir)
    checkpoint, export_dir = _read_source(source, out_dir)
    source, checkpoint, qat, qat_note = _qat_sources(source, checkpoint, Path(opts.qat) if opts.qat else None)
    opts.validate()
    data_split = load_split(data, opts.split, opts.layout)
    if not data_split.samples:
        raise FgcliError(f"the {opts.split} split of {data} has no images", hint="pick another --split")
    variants = plan_variants(_variant_names(source, opts, qat), checkpoint=checkpoint is not None,
                             export_dir=export_dir, device=opts.device)
    notes = _prepare_files(source, checkpoint, export_dir, variants, data, opts, qat, hooks)
    notes = [qat_note, *notes] if qat_note else notes

    with ExitStack() as stack:
        runners = _open_runners(stack, variants, checkpoint, opts.device)
        hooks.planned(variants)
        reference = _reference(variants, runners)
        evaluations = _evaluate(runners, data_split, opts.batch_sizes[-1], hooks)
        timings = _time(runners, data_split, runners[reference].preprocess, opts, hooks)
        runner_names = {name: runner.name for name, runner in runners.items()}
        placements = {name: (*runner.placement, runner.timed_region) for name, runner in runners.items()}
        limit = device_limit(placements, timings, export_dir, opts.batch_sizes[-1], opts.peak_tflops, hooks.step)
        model = _model_info(checkpoint, runners[reference])
        attention = _attention_grid(runners, variants, reference, data_split, evaluations[reference], opts.cam_images,
                                    out_dir, hooks)

    ref_eval = evaluations[reference]
    ort_ran = any(v.backend == ONNXRUNTIME and v.name in placements for v in variants)
    if ort_ran and onnxruntime_device(opts.device) != opts.device:  # --device cuda, onnxruntime without CUDA
        notes.append(NOTE_ORT_ON_CPU.format(device=opts.device))
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fgcli_version": fgcli.__version__,
        "source": {"kind": "checkpoint" if checkpoint is not None else "export", "path": str(source),
                   "export_dir": str(export_dir), "qat_checkpoint": str(qat) if qat else None},
        "model": model,
        "dataset": {"root": str(data), "layout": data_split.layout, "split": opts.split, "images": ref_eval.count,
                    "unreadable": sorted(ref_eval.bad_images)},
        "reference": reference,
        "device": opts.device,
        "batch_sizes": opts.batch_sizes,
        "timing": {"warmup": opts.warmup, "iterations": opts.iterations, "interleaved": True,
                   "throughput_rounds": {str(b): opts.iterations if b == 1 else throughput_rounds(b, opts.iterations)
                                         for b in opts.batch_sizes}},
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count()},
        "environment": collect_environment(),
        "limit": limit.summary,
        "variants": [_variant_row(v, runner_names, evaluations, timings, reference, checkpoint, placements,
                                  limit.fractions) for v in variants],
        "attention": attention,
        "notes": notes,
    }


def _variant_names(source: Path, opts: ReportOptions, qat: Path | None) -> list[str]:
    """The variants asked for by ``--formats``; the -auto variants only with a target and the QAT one only with a
    QAT checkpoint, unless an export folder given as ``source`` holds their files."""
    names = parse_formats(opts.formats)
    if opts.target_agreement is None:
        names = [name for name in names if name not in AUTO_VARIANTS or _in_export_folder(source, name)]
    if qat is None:
        names = [name for name in names if name != QAT_VARIANT or _in_export_folder(source, name)]
    return names


def _open_runners(stack: ExitStack, variants: list[Variant], checkpoint: dict | None, device: str) -> dict:
    """name -> open Runner of every available variant (closed by ``stack``); a runner that does not open makes
    its variant unavailable, with the runtime's reason."""
    runners = {}
    for variant in variants:
        runner = _open(variant, checkpoint, device) if variant.available else None
        if runner is not None:
            runners[variant.name] = stack.enter_context(runner)
    return runners


def _evaluate(runners: dict, data_split, batch_size: int, hooks: ReportHooks) -> dict:
    """Every runner's evaluation of the same split."""
    evaluations = {}
    for name, runner in runners.items():
        with hooks.task(f"evaluating {name}", len(data_split.samples)) as advance:
            evaluations[name] = evaluate_runner(runner, data_split, batch_size=batch_size, progress=advance)
    return evaluations


def _time(runners: dict, data_split, preprocess, opts: ReportOptions, hooks: ReportHooks) -> dict:
    """Latency and throughput of every runner, interleaved on the same test images."""
    images = _timing_images(data_split, preprocess, opts.batch_sizes[-1])
    calls = timed_calls(len(runners), opts.batch_sizes, opts.iterations, opts.warmup)
    with hooks.task("timing, interleaved", calls) as advance:
        return time_interleaved(runners, images, opts.batch_sizes, opts.iterations, opts.warmup, progress=advance)


def _attention_grid(runners: dict, variants: list[Variant], reference: str, data_split, reference_eval,
                    count: int, out_dir: Path, hooks: ReportHooks) -> dict[str, Any] | None:
    """Occlusion maps of the reference next to every reduced-precision variant on ``count`` readable test
    images spread over the split (so over several classes)."""
    if count < 1:
        return None
    readable = [s.path for s in data_split.samples if s.path not in reference_eval.bad_images]
    images = [readable[round(i)] for i in np.linspace(0, len(readable) - 1, min(count, len(readable)))]
    shown = [reference] + [v.name for v in variants if v.name in runners and v.precision != "fp32"]
    with hooks.task("attention maps (occlusion)", len(images)) as advance:
        path = draw_variant_grid({name: runners[name] for name in shown}, images, out_dir / ATTENTION_PNG,
                                 progress=advance)
    return {"png": path.name, "method": "occlusion 7x7 (drop in the predicted class's probability)",
            "variants": shown, "images": images}


def _in_export_folder(source: Path, name: str) -> bool:
    return source.is_dir() and (source / ONNX_FILES[name]).is_file()


def _qat_sources(source: Path, checkpoint: dict | None, qat: Path | None
                 ) -> tuple[Path, dict | None, Path | None, str | None]:
    """(FP32 source, its loaded checkpoint, QAT checkpoint, note): a QAT checkpoint given as the source is measured
    against the run it was fine-tuned from, which its record names."""
    if qat is not None and not (qat.is_file() and qat.suffix == ".pt"):
        raise FgcliError(f"--qat {qat} is not a .pt checkpoint", hint="pass QAT_RUN/best.pt, written by fgcli train --qat")
    if checkpoint is None:
        if qat is not None:
            raise FgcliError("--qat needs the FP32 run's .pt checkpoint as the report's source (it exports both)",
                             hint=f"fgcli report FP32_RUN/best.pt --qat {qat} --data DATASET")
        return source, None, None, None
    from fgcli.training.checkpoint import load_checkpoint  # imports torch

    if qat is not None:
        qat_ckpt = load_checkpoint(qat)
        if not is_qat_checkpoint(qat_ckpt):
            raise FgcliError(f"--qat {qat} is not a QAT run (fgcli train --qat writes one)",
                             hint="pass the best.pt of a fgcli train --qat run")
        if is_qat_checkpoint(checkpoint):
            raise FgcliError(f"{source} is a QAT run too: the report's source is the FP32 reference",
                             hint=f"fgcli report {qat_ckpt['qat'].get('source', 'FP32_RUN/best.pt')} --qat {qat}")
        if list(qat_ckpt["class_names"]) != list(checkpoint["class_names"]):
            raise FgcliError(f"--qat {qat} classifies other classes than {source}",
                             hint="pass the QAT run fine-tuned from this checkpoint")
        return source, checkpoint, qat, None
    if not is_qat_checkpoint(checkpoint):
        return source, checkpoint, None, None
    reference = Path(checkpoint["qat"].get("source", ""))
    if not reference.is_file():
        raise FgcliError(f"{source} is a QAT run, and the FP32 run it was fine-tuned from ({reference}) is not there "
                         "to compare it with", hint=f"fgcli report FP32_RUN/best.pt --qat {source} --data DATASET")
    return (reference, load_checkpoint(reference), source,
            f"{source} is a QAT run: measured against the FP32 run it was fine-tuned from, {reference}")


def _read_source(source: Path, out_dir: Path) -> tuple[dict | None, Path]:
    """(the loaded checkpoint, OUT/export) for a .pt file; (None, the folder) for an export folder."""
    if source.is_file() and source.suffix == ".pt":
        optional_import("torch", "torch", "A report on a PyTorch checkpoint (it exports the ONNX models)")
        from fgcli.training.checkpoint import load_checkpoint  # imports torch

        return load_checkpoint(source), out_dir / "export"
    if source.is_dir():
        return None, source
    raise FgcliError(f"cannot report on {source}: it is neither a .pt checkpoint nor an export folder",
                     hint="pass RUN/best.pt (written by fgcli train) or a folder written by fgcli export")


def _prepare_files(source: Path, checkpoint: dict | None, export_dir: Path, variants: list[Variant], data: Path,
                   opts: ReportOptions, qat: Path | None, hooks: ReportHooks) -> list[str]:
    """Give every runnable variant its file: export from the checkpoint(s), or take the folder's; build engines."""
    notes = []
    if checkpoint is not None:
        notes = export_for_report(source, export_dir, variants, data, opts, hooks.step, qat_checkpoint=qat)
        for variant in variants:
            if variant.backend == TORCH and variant.available:
                variant.path = source
    else:
        artifacts = read_export_record(export_dir)
        for variant in variants:
            if variant.name in ONNX_FILES and variant.available:
                attach_onnx_artifact(variant, export_dir, artifacts)
    if any(v.backend == TENSORRT and v.available for v in variants):
        prepare_engines(export_dir, variants, opts.batch_sizes[-1], opts.device, hooks.step)
    return notes


def _open(variant: Variant, checkpoint: dict | None, device: str):
    """The variant's runner, or None after marking it unavailable with the runtime's own reason."""
    try:
        if variant.backend == TORCH:
            return TorchRunner(checkpoint, device=device, precision=variant.precision, mode=variant.torch_mode)
        # ORT threads that busy-wait after a call would slow the next variant of the interleaved timing
        runtime_device = onnxruntime_device(device) if variant.backend == ONNXRUNTIME else device
        return open_runner(variant.path, device=runtime_device, spin_wait=False)
    except FgcliError as exc:
        variant.refuse(f"{exc.message} ({exc.hint})" if exc.hint else exc.message)
        return None


def _reference(variants: list[Variant], runners: dict) -> str:
    """torch-fp32 when it runs, else onnx-fp32; the report is meaningless without one."""
    reference = next((name for name in REFERENCE_CANDIDATES if name in runners), None)
    if reference is None:
        reasons = "; ".join(f"{v.name}: {v.reason}" for v in variants if v.name in REFERENCE_CANDIDATES)
        raise FgcliError(f"no FP32 reference could run here ({reasons})",
                         hint="the report compares every variant with torch-fp32 or onnx-fp32; install what the "
                              "reason names, or use --device cpu")
    return reference


def _timing_images(data_split, preprocess, count: int) -> np.ndarray:
    """``count`` preprocessed test images (repeated when the split is smaller): what the timed calls run on."""
    paths = [s.path for s in data_split.samples]
    crops = [s.bottom_crop for s in data_split.samples]
    arrays = []
    for batch in iter_image_batches(paths, preprocess, count, bottom_crops=crops):
        arrays.append(batch.images)
        if sum(len(a) for a in arrays) >= count:
            break
    images = np.concatenate(arrays)
    return np.concatenate([images] * -(-count // len(images)))[:count]


def _model_info(checkpoint: dict | None, reference_runner) -> dict[str, Any]:
    meta = checkpoint if checkpoint is not None else getattr(reference_runner, "metadata", {})
    return {"method": meta.get("method"), "backbone": meta.get("backbone"),
            "classes": len(reference_runner.class_names), "img_size": reference_runner.preprocess.img_size}


def _variant_row(variant: Variant, runner_names: dict, evaluations: dict, timings: dict, reference: str,
                 checkpoint: dict | None, placements: dict, limit_fractions: dict) -> dict[str, Any]:
    """One entry of ``variants``: every column, null where it does not apply (not run, not recorded)."""
    device, provider, timed = placements.get(variant.name, (None, None, None))
    row: dict[str, Any] = {
        "name": variant.name, "backend": variant.backend, "precision": variant.precision,
        "runner": runner_names.get(variant.name), "device": device, "provider": provider, "timed": timed,
        "limit_fraction": limit_fractions.get(variant.name), "path": str(variant.path) if variant.path else None,
        "file_mb": _size_mb(variant, checkpoint), "available": variant.name in evaluations, "reason": variant.reason,
        "top1": None, "top5": None, "delta_top1": None, "agreement": None, "worst_classes": [],
        "latency_ms": None, "throughput_ips": None, "speedup_p50": None, "throughput_speedup": None,
        "build_seconds": variant.build_seconds, "calib_seconds": variant.calib_seconds,
        "float_nodes": variant.float_nodes,
    }
    if variant.name not in evaluations:
        return row
    result, ref = evaluations[variant.name], evaluations[reference]
    timing, ref_timing = timings[variant.name], timings[reference]
    row.update(
        top1=result.top1, top5=result.top5, delta_top1=result.top1 - ref.top1, agreement=agreement(result, ref),
        worst_classes=worst_classes(result, ref), latency_ms=timing.latency_ms, throughput_ips=timing.throughput_ips,
        speedup_p50=ref_timing.latency_ms["p50"] / timing.latency_ms["p50"],
        throughput_speedup={b: ips / ref_timing.throughput_ips[b] for b, ips in timing.throughput_ips.items()},
    )
    return row


def agreement(result, reference) -> float:
    """Fraction of images on which two evaluations of the same split predict the same class."""
    if len(result.predictions) != len(reference.predictions):
        raise FgcliError(f"{result.runner} read {len(result.predictions)} images and {reference.runner} "
                         f"{len(reference.predictions)}: the predictions cannot be compared")
    return top1_agreement(np.array(reference.class_names)[reference.predictions],
                          np.array(result.class_names)[result.predictions])


def worst_classes(result, reference, count: int = WORST_CLASSES) -> list[dict[str, Any]]:
    """The classes whose top-1 dropped most against ``reference`` (only drops; classes absent from the split,
    whose accuracy is NaN, are skipped)."""
    ours = dict(zip(result.class_names, result.per_class))
    drops = [{"class": name, "reference": ref_acc, "variant": ours[name], "drop": ref_acc - ours[name]}
             for name, ref_acc in zip(reference.class_names, reference.per_class)
             if np.isfinite(ref_acc) and np.isfinite(ours[name]) and ref_acc > ours[name]]
    return sorted(drops, key=lambda d: -d["drop"])[:count]


def _size_mb(variant: Variant, checkpoint: dict | None) -> float | None:
    """File size in MB (10^6 bytes); for torch variants the weights alone (best.pt also holds optimizer state), at
    2 bytes per float for the FP16 / BF16 models, as converted."""
    if variant.backend == TORCH:
        if checkpoint is None:
            return None
        half = variant.precision != "fp32"
        return sum(t.numel() * (2 if half and t.is_floating_point() else t.element_size())
                   for t in checkpoint["model"].values()) / 1e6
    if variant.path is None or not Path(variant.path).is_file():
        return None
    return Path(variant.path).stat().st_size / 1e6


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """report.json, report.md and report.png in ``out_dir``, each written atomically; returns their paths."""
    out_dir = Path(out_dir)
    return {"json": write_json_atomic(out_dir / "report.json", report),
            "md": write_text_atomic(out_dir / "report.md", render_markdown(report)),
            "png": plot_report(report, out_dir / "report.png")}
