"""The cost of float16-safe query-key attention (fgcli.models.numerics) against the plain formula, on CPU.

    python benchmarks/attention_numerics.py [--batch 2] [--side 28] [--channels 256] [--repeats 7]

One CLCA-sized attention, ``softmax(Q^T K / sqrt(d)) V``, forward and backward, at a mid-level grid of
``side x side`` positions with ``channels`` inner channels (CLAN on ResNet-50: layer2 at 224 px is 28 x 28 with
256 inner channels; at 448 px 56 x 56). "plain" is the formula the methods used before issue 22 (bmm, scale,
softmax); "safe" divides Q and K by their peaks, folds the peaks back into the max-shifted logits and takes a
float32 softmax. The two run interleaved, ``--repeats`` times each (median), in float32 and under bfloat16
autocast; the ratio safe / plain is what to read, since timings on a shared machine are noisy. Writes a table and
``docs/attention_numerics.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fgcli.models.numerics import query_key_softmax
from fgcli.utils import write_json_atomic


def plain_attention(query, key, values, scale):
    attention = (torch.bmm(query.transpose(1, 2), key) * scale).softmax(dim=-1)
    return torch.bmm(values, attention.transpose(1, 2))


def safe_attention(query, key, values, scale):
    attention = query_key_softmax(query, key, scale)
    return torch.bmm(values, attention.transpose(1, 2))


def step_seconds(attention, tensors, scale, dtype) -> float:
    """One forward + backward, timed."""
    for tensor in tensors:
        tensor.grad = None
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        out = attention(*tensors, scale)
    out.float().square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--side", type=int, default=28)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    positions = args.side * args.side
    tensors = [(torch.randn(args.batch, args.channels, positions) * 30).requires_grad_() for _ in range(3)]
    scale = args.channels**-0.5
    rows = []
    for label, dtype in (("float32", None), ("bfloat16 autocast", torch.bfloat16)):
        times = {"plain": [], "safe": []}
        for _ in range(args.repeats + 1):  # the first round warms up and is dropped
            for name, attention in (("plain", plain_attention), ("safe", safe_attention)):
                times[name].append(step_seconds(attention, tensors, scale, dtype))
        plain, safe = (statistics.median(times[name][1:]) for name in ("plain", "safe"))
        rows.append({"precision": label, "plain_ms": plain * 1e3, "safe_ms": safe * 1e3, "ratio": safe / plain})
    print(f"attention fwd+bwd, batch {args.batch}, {positions} positions, {args.channels} channels, "
          f"{torch.get_num_threads()} threads")
    print(f"{'precision':<20}{'plain ms':>10}{'safe ms':>10}{'safe/plain':>12}")
    for row in rows:
        print(f"{row['precision']:<20}{row['plain_ms']:>10.1f}{row['safe_ms']:>10.1f}{row['ratio']:>12.2f}")
    out = Path(__file__).resolve().parents[1] / "docs" / "attention_numerics.json"
    write_json_atomic(out, {"args": vars(args), "threads": torch.get_num_threads(), "rows": rows})
    print(f"wrote docs/{out.name}")


if __name__ == "__main__":
    main()
