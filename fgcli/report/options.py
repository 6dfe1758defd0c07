"""What ``fgcli report`` is asked to measure: ``ReportOptions`` with its defaults (written once, read by the CLI
too) and the checks that refuse bad values before anything is exported or timed.

Light to import (no numpy): the CLI reads the defaults when it declares its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fgcli.errors import FgcliError
from fgcli.export.options import DEFAULT_BATCH, DEFAULT_CALIB_SIZE, DEFAULT_VAL_SIZE

#: throughput is measured at each; the largest is also the evaluation batch and the TensorRT profile's maximum
DEFAULT_BATCH_SIZES = DEFAULT_BATCH
DEFAULT_ITERATIONS = 100
DEFAULT_WARMUP = 10
DEFAULT_CAM_IMAGES = 4
#: ``fgcli bench``: the largest batch tried, images' worth of timed calls and untimed calls per batch size
BENCH_MAX_BATCH = 256
BENCH_ITERATIONS = 64
BENCH_WARMUP = 3


@dataclass
class ReportOptions:
    """The measurement settings of ``build_report`` (see its docstring for each)."""

    formats: str | Sequence[str] | None = None
    batch_sizes: str | Sequence[int] = DEFAULT_BATCH_SIZES
    device: str = "auto"
    iterations: int = DEFAULT_ITERATIONS
    warmup: int = DEFAULT_WARMUP
    calib_size: int = DEFAULT_CALIB_SIZE
    split: str = "test"
    layout: str = "auto"
    cam_images: int = DEFAULT_CAM_IMAGES
    target_agreement: float | None = None
    val_size: int = DEFAULT_VAL_SIZE
    max_drop: float | None = None
    qat: str | Path | None = None
    auto_calib: bool = False
    peak_tflops: float | None = None

    def validate(self) -> None:
        """Parse ``batch_sizes`` (into a sorted list) and refuse counts out of range or contradicting options."""
        from fgcli.calibration.mixed_precision import check_targets  # numpy: kept off the CLI's import path

        self.batch_sizes = parse_batch_sizes(self.batch_sizes)
        if self.iterations < 1 or self.warmup < 0 or self.calib_size < 1:
            raise FgcliError(f"iterations ({self.iterations}) and calib_size ({self.calib_size}) must be >= 1, "
                             f"warmup ({self.warmup}) >= 0")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise FgcliError(f"--peak-tflops {self.peak_tflops} is not a rate", hint="give the GPU's dense BF16 TFLOP/s")
        if self.auto_calib and self.target_agreement is None:
            raise FgcliError("--auto-calib calibrates the mixed-precision variants", hint="add --target-agreement")
        if self.target_agreement is not None:
            check_targets(self.target_agreement, self.max_drop)


def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    """``"1,8,32"`` (or a sequence) -> sorted distinct positive batch sizes."""
    try:
        sizes = [int(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise FgcliError(f"--batch-sizes '{text}' is not a list of positive integers", hint="e.g. --batch-sizes 1,8,32")
    return sorted(set(sizes))
