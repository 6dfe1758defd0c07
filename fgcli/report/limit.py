"""The report's "fraction of the limit": how close each GPU variant comes to the device's arithmetic rate.

fraction = images/s at the largest batch x FLOPs per image / the device's rate. The FLOPs are counted once from
the exported FP32 graph (``fgcli.export.flops``), the same for every variant, so a variant that skips work (INT8
does the same multiply-accumulates) is not credited for it; the rate is a BF16 matrix product measured on the
device in the same run (``fgcli.runtime.peak``) or a datasheet figure (``--peak-tflops``). 1.0 would mean every
tensor core busy on useful products all the time; a model that reaches 0.3 leaves little to a faster runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fgcli.errors import FgcliError
from fgcli.export.flops import count_flops
from fgcli.formats import ONNX_FP32, file_of
from fgcli.report.variants import installed
from fgcli.runtime.peak import MATMUL_SIZE, limit_fraction, measure_matmul_tflops

#: the graph the FLOPs are counted on, in the export folder
COUNTED_MODEL = file_of(ONNX_FP32)


@dataclass
class Limit:
    """``summary``: report.json's ``limit`` (null when no variant ran on a GPU); ``fractions``: by variant."""

    summary: dict[str, Any] | None
    fractions: dict[str, float] = field(default_factory=dict)


def is_gpu_placement(device: str) -> bool:
    return device.startswith("cuda")


def device_limit(placements: dict[str, tuple], timings: dict, export_dir: Path, batch: int,
                 peak_tflops: float | None, step: Callable[[str], None]) -> Limit:
    """The fraction of the limit of every variant whose ``placements`` device (name -> (device, ...)) is a GPU,
    at ``batch`` images per call; a missing ingredient is said in the summary's ``note``, never guessed."""
    gpu_variants = [name for name, (device, *_) in placements.items() if is_gpu_placement(device)]
    if not gpu_variants:
        return Limit(None)
    summary = limit_summary(export_dir / COUNTED_MODEL, placements[gpu_variants[0]][0], peak_tflops, step)
    summary["batch"] = batch
    if summary["note"]:
        return Limit(summary)
    fractions = {name: limit_fraction(timings[name].throughput_ips[str(batch)], summary["flops_per_image"],
                                      summary["peak_tflops"]) for name in gpu_variants}
    return Limit(summary, fractions)


def limit_summary(model: Path, device: str, peak_tflops: float | None, step: Callable[[str], None]) -> dict[str, Any]:
    """FLOPs per image counted on ``model`` and the rate of ``device`` (``peak_tflops``, else measured there):
    ``{flops_per_image, counted_from, peak_tflops, peak_source, images_per_s_bound, note}``; ``note`` says which
    ingredient is missing (the others are then null)."""
    summary: dict[str, Any] = {"flops_per_image": None, "counted_from": None, "peak_tflops": peak_tflops,
                               "peak_source": "--peak-tflops" if peak_tflops else None, "images_per_s_bound": None,
                               "note": None}
    if not model.is_file():
        summary["note"] = f"no {model} to count the FLOPs on (add onnx-fp32 to --formats, or export the model)"
        return summary
    if not installed("onnx"):
        summary["note"] = "counting FLOPs needs the onnx package (pip install fgcli[onnx])"
        return summary
    if peak_tflops is None and not installed("torch"):
        summary["note"] = "measuring the GPU's rate needs PyTorch here: pass --peak-tflops from the GPU's datasheet"
        return summary
    flops = count_flops(model).flops
    if peak_tflops is None:
        step(f"measuring {device}'s BF16 matrix rate (the limit)")
        try:
            peak_tflops = measure_matmul_tflops(device)
        except FgcliError as exc:  # e.g. a CPU-only PyTorch beside TensorRT on a Jetson
            summary["note"] = f"PyTorch could not measure the GPU's rate ({exc.message}): pass --peak-tflops"
            return summary
        summary["peak_source"] = f"measured in this run: BF16 {MATMUL_SIZE}x{MATMUL_SIZE} matrix product on {device}"
    summary.update(flops_per_image=flops, counted_from=model.name, peak_tflops=peak_tflops,
                   images_per_s_bound=peak_tflops * 1e12 / flops)
    return summary
