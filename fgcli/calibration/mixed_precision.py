"""Mixed precision by measurement: keep the most INT8-sensitive nodes float, one at a time, until a target is met.

``choose_float_nodes`` starts from full INT8 and keeps ranked nodes (most sensitive first, from
``sensitivity.measure_sensitivity``) in float until a target agreement with FP32 (and / or a maximum top-1 drop)
is met, timing each step on the CPU so that a speed floor (``min_speedup``) can refuse a node that costs too much.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fgcli.calibration import NothingQuantizedError, QuantResult
from fgcli.calibration.int8_builder import Int8Builder
from fgcli.errors import FgcliError
from fgcli.runtime.comparator import Comparison, compare_logits
from fgcli.runtime.onnx_runner import OnnxRunner, onnxruntime_logits
from fgcli.runtime.timing import time_interleaved


@dataclass
class PrecisionStep:
    """Full INT8 with ``float_nodes`` kept in float: its error and its CPU latency at batch 1. ``too_slow``: the
    step fell below the speed floor, so its last node was put back to INT8 and the next candidate tried."""

    float_nodes: list[str]
    error: Comparison
    latency_ms: float
    fp32_latency_ms: float
    too_slow: bool = False

    @property
    def speedup(self) -> float:
        return self.fp32_latency_ms / self.latency_ms


@dataclass
class PrecisionChoice:
    target_agreement: float | None
    max_drop: float | None  # top-1 points (fraction) the INT8 model may lose against FP32
    fp32_top1: float | None
    min_speedup: float | None = None  # CPU speed-up over FP32 at batch 1 no kept step may fall below
    steps: list[PrecisionStep] = field(default_factory=list)
    met: bool = False
    chosen_step: int = -1  # index into steps: the last one, or the closest to FP32 when the target was not met

    @property
    def chosen(self) -> PrecisionStep:
        return self.steps[self.chosen_step]

    def to_dict(self) -> dict:
        return {"target_agreement": self.target_agreement, "max_drop": self.max_drop, "fp32_top1": self.fp32_top1,
                "min_speedup": self.min_speedup, "met": self.met,
                "chosen_step": range(len(self.steps))[self.chosen_step],
                "float_nodes": self.chosen.float_nodes, "agreement": self.chosen.error.agreement,
                "steps": [{"float_nodes": len(s.float_nodes), "added": s.float_nodes[-1] if s.float_nodes else None,
                           **asdict(s.error), "latency_ms": s.latency_ms, "speedup": s.speedup,
                           "too_slow": s.too_slow} for s in self.steps]}


def check_targets(target_agreement: float | None, max_drop: float | None, min_speedup: float | None = None) -> None:
    """Refuse a target no model can meet or none at all."""
    if target_agreement is None and max_drop is None:
        raise FgcliError("automatic mixed precision needs a target", hint="pass --target-agreement and/or --max-drop")
    if target_agreement is not None and not 0.0 < target_agreement <= 1.0:
        raise FgcliError(f"--target-agreement {target_agreement} is not a fraction in (0, 1]",
                         hint="agreement is the fraction of images with FP32's top-1 class, e.g. 0.99")
    if max_drop is not None and not 0.0 <= max_drop <= 100.0:
        raise FgcliError(f"--max-drop {max_drop} is not a number of top-1 points in [0, 100]", hint="e.g. 0.5")
    if min_speedup is not None and not min_speedup > 0.0:
        raise FgcliError(f"--min-speedup {min_speedup} is not a positive ratio",
                         hint="the CPU speed-up over FP32 at batch 1 to keep, e.g. 1.8")


def target_met(error: Comparison, target_agreement: float | None, max_drop: float | None,
               fp32_top1: float | None) -> bool:
    """Whether ``error`` meets every target given (``max_drop`` in top-1 points)."""
    if target_agreement is not None and error.agreement < target_agreement:
        return False
    if max_drop is not None:
        if fp32_top1 is None or error.top1 is None:
            raise FgcliError("--max-drop needs labelled validation images", hint="use --target-agreement")
        return 100.0 * (fp32_top1 - error.top1) <= max_drop + 1e-9
    return True


def cpu_latencies(fp32_runner, int8_path: Path, images: np.ndarray, iterations: int) -> tuple[float, float]:
    """p50 batch-1 latency (ms) of the INT8 model at ``int8_path`` and of FP32, timed interleaved on ORT CPU."""
    with OnnxRunner(int8_path, device="cpu", spin_wait=False) as runner:
        timings = time_interleaved({"fp32": fp32_runner, "int8": runner}, images, [1], iterations, warmup=2)
    return timings["int8"].latency_ms["p50"], timings["fp32"].latency_ms["p50"]


def choose_float_nodes(builder: Int8Builder, ranked: list[str] | Callable[[], list[str]], out_path: str | Path,
                       images: np.ndarray,
                       labels: np.ndarray | None = None, target_agreement: float | None = None,
                       max_drop: float | None = None, timing_iterations: int = 20,
                       step_done: Callable[[PrecisionStep], None] | None = None,
                       min_speedup: float | None = None) -> tuple[PrecisionChoice, QuantResult]:
    """Keep ``ranked`` nodes (most sensitive first) in float one at a time from full INT8 until the target is met.

    Stops at the first step that meets it. ``min_speedup``: a node whose step takes the CPU speed-up over FP32
    below it goes back to INT8 (that step is marked ``too_slow``) and the next node is tried, so the choice
    trades accuracy only for speed it can afford. When no step meets the target (``met`` False: every ranked
    node tried, or the next step would leave nothing quantized), the kept step closest to FP32 is chosen
    (highest agreement, then top-1), not the last one. ``ranked`` may be a function, called only when full INT8
    misses the target (the measurement is the expensive part). The model of the chosen step is written to
    ``out_path``. ``step_done`` sees each step as it is measured.
    """
    check_targets(target_agreement, max_drop, min_speedup)
    reference = onnxruntime_logits(builder.onnx_path, images)
    fp32_top1 = None if labels is None else float(np.mean(reference.argmax(1) == labels))
    choice = PrecisionChoice(target_agreement, max_drop, fp32_top1, min_speedup)
    timing_images = np.ascontiguousarray(images[:1])

    def measure(float_nodes: list[str]) -> tuple[PrecisionStep, QuantResult]:
        result = builder.build(out_path, extra_float=float_nodes)
        error = compare_logits(reference, onnxruntime_logits(result.output_path, images), labels)
        step = PrecisionStep(float_nodes, error, *cpu_latencies(fp32_runner, result.output_path, timing_images,
                                                                timing_iterations))
        step.too_slow = bool(float_nodes) and min_speedup is not None and step.speedup < min_speedup
        choice.steps.append(step)
        if step_done is not None:
            step_done(step)
        return step, result

    with OnnxRunner(builder.onnx_path, device="cpu", spin_wait=False) as fp32_runner:
        step, result = measure([])
        choice.met = target_met(step.error, target_agreement, max_drop, fp32_top1)
        kept: list[str] = []
        for node in ([] if choice.met else (ranked() if callable(ranked) else ranked)):
            try:
                step, result = measure(kept + [node])
            except NothingQuantizedError:  # every quantizable node is float now: that is FP32, not a choice
                break
            if step.too_slow:
                continue
            kept = step.float_nodes
            if target_met(step.error, target_agreement, max_drop, fp32_top1):
                choice.met = True
                break
    kept_steps = [i for i, s in enumerate(choice.steps) if not s.too_slow]
    choice.chosen_step = kept_steps[-1] if choice.met else max(kept_steps, key=lambda i: (
        choice.steps[i].error.agreement, -1.0 if choice.steps[i].error.top1 is None else choice.steps[i].error.top1))
    if choice.chosen_step != len(choice.steps) - 1:
        result = builder.build(out_path, extra_float=choice.chosen.float_nodes)
    return choice, result
