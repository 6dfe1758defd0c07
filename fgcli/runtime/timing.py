"""Latency and throughput of several runners, measured interleaved in one run.

Absolute times on a shared machine drift with the load of other jobs; timing the variants round by round
(each round runs every variant once, starting with a different one each round) makes that drift hit all
of them alike, so the ratios between variants stay meaningful even when the milliseconds do not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

#: the fewest timed rounds behind a throughput median
MIN_THROUGHPUT_ROUNDS = 3


@dataclass
class Timing:
    """``latency_ms``: p50 / p90 / p99 of single-image calls; ``throughput_ips``: images per second by batch
    size (batch / median seconds per call; at batch 1 from the latency samples)."""

    latency_ms: dict[str, float]
    throughput_ips: dict[str, float]


def throughput_rounds(batch: int, iterations: int) -> int:
    """Calls per variant at ``batch``: about as many images as the batch-1 latency run, at least 3 calls."""
    return max(MIN_THROUGHPUT_ROUNDS, math.ceil(iterations / batch))


def timed_calls(num_runners: int, batch_sizes: list[int], iterations: int, warmup: int) -> int:
    """How many ``run`` calls ``time_interleaved`` makes (the length of its progress bar)."""
    sizes = sorted(set(batch_sizes) | {1})
    per_runner = warmup * len(sizes) + iterations + sum(throughput_rounds(b, iterations) for b in sizes if b != 1)
    return per_runner * num_runners


def time_interleaved(runners: dict, images: np.ndarray, batch_sizes: list[int], iterations: int, warmup: int,
                     progress: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Time every runner of ``runners`` (name -> Runner) on ``images`` (at least max(batch_sizes) of them).

    Per batch size: ``warmup`` untimed calls per runner, then rounds of one timed call per runner. Batch 1
    always runs ``iterations`` rounds (its samples give the latency percentiles); larger batches run
    ``throughput_rounds`` rounds. A timed call is ``runner.run_staged`` on the batch its ``stage_input`` made
    before the rounds (a GPU runner's host-to-device copy stays outside; ``Runner.timed_region`` says what is in).
    """
    progress = progress or (lambda n: None)
    names = list(runners)
    samples: dict[int, dict[str, list[float]]] = {}
    for batch in sorted(set(batch_sizes) | {1}):
        inputs = np.ascontiguousarray(images[:batch])
        staged = {name: runners[name].stage_input(inputs) for name in names}
        for name in names:
            for _ in range(warmup):
                runners[name].run_staged(staged[name])
                progress(1)
        rounds = iterations if batch == 1 else throughput_rounds(batch, iterations)
        samples[batch] = {name: [] for name in names}
        for round_index in range(rounds):
            start_at = round_index % len(names)
            for name in names[start_at:] + names[:start_at]:
                start = time.perf_counter()
                runners[name].run_staged(staged[name])
                samples[batch][name].append(time.perf_counter() - start)
                progress(1)
    timings = {}
    for name in names:
        latency = np.percentile(np.array(samples[1][name]) * 1000.0, [50, 90, 99])
        throughput = {str(b): b / float(np.median(samples[b][name])) for b in sorted(set(batch_sizes))}
        timings[name] = Timing(dict(zip(("p50", "p90", "p99"), map(float, latency))), throughput)
    return timings
