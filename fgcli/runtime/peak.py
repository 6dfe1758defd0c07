"""The device's arithmetic limit, measured where the report runs: a BF16 matrix product (torch imported inside).

The report's "fraction of the limit" divides a variant's images/s x FLOPs per image by this rate. A large
square BF16 product is the fastest work a tensor-core GPU does (measured on an H200: 787.8 TFLOP/s at 8192^3,
see ``shared/gpu/README.md``); a datasheet figure can replace it (``--peak-tflops``).
"""

from __future__ import annotations

import time

from fgcli.devices import resolve_torch_device
from fgcli.errors import FgcliError
from fgcli.utils import optional_import

#: the side of the square product; 8192^3 keeps an H200 busy for ~1.4 ms per call
MATMUL_SIZE = 8192
MATMUL_CALLS = 20


def measure_matmul_tflops(device: str = "cuda", size: int = MATMUL_SIZE, calls: int = MATMUL_CALLS) -> float:
    """TFLOP/s of ``calls`` back-to-back BF16 ``size`` x ``size`` products on ``device`` (after one warm-up)."""
    torch = optional_import("torch", "torch", "Measuring the device's BF16 matrix rate")
    target = resolve_torch_device(torch, device)
    try:
        a = torch.randn(size, size, device=target, dtype=torch.bfloat16)
        b = torch.randn(size, size, device=target, dtype=torch.bfloat16)
        torch.matmul(a, b)
        _synchronize(torch, target)
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        _synchronize(torch, target)
    except RuntimeError as exc:  # no BF16 GEMM (pre-Ampere GPUs, some Jetsons), out of memory
        raise FgcliError(f"PyTorch's BF16 {size}x{size} matrix product failed on {target}: {str(exc)[:300]}",
                         hint="pass --peak-tflops from the GPU's datasheet") from exc
    return 2 * size ** 3 * calls / (time.perf_counter() - start) / 1e12


def _synchronize(torch, target) -> None:
    if target.type == "cuda":
        torch.cuda.synchronize(target)


def limit_fraction(images_per_s: float, flops_per_image: float, peak_tflops: float) -> float:
    """The share of the device's rate a variant's throughput uses: images/s x FLOPs/image / (peak x 1e12)."""
    if peak_tflops <= 0 or flops_per_image <= 0:
        raise FgcliError(f"the limit needs a positive rate and FLOP count, got {peak_tflops} TFLOP/s and "
                         f"{flops_per_image} FLOPs per image", hint="pass --peak-tflops from the GPU's datasheet")
    return images_per_s * flops_per_image / (peak_tflops * 1e12)
