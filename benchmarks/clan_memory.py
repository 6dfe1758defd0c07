"""CLAN's training memory and speed at paper scale (ResNet-50, 448 px) against the baseline, on CPU.

    python benchmarks/clan_memory.py [--batch 2] [--steps 3] [--old-clan /tmp/old_clan.py]

CLCA is a non-local block over the mid positions: at 448 px layer2 is 56 x 56, so its affinity is 3136 x 3136 per
image. Each model trains ``--steps`` SGD steps (forward, backward, step) in its own subprocess, so the peak resident
set (``ru_maxrss``) is that model's alone; "train peak" is that peak minus the resident set before the first step
(model, optimizer and batch already allocated). Time per step: median over the steps after the first.
``--old-clan`` adds a variant from another clan.py file (e.g. an earlier version, `git show main:fgcli/models/clan.py`),
built from its ``CLAN`` class. Writes a table and ``docs/clan_memory.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"baseline": {}, "clan": {}, "clan-subsample": {"subsample": True}}


def build(variant: str, num_classes: int, old_clan: str | None):
    from fgcli.models import create_model

    if variant == "clan-old":
        spec = importlib.util.spec_from_file_location("clan_old", old_clan)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.CLAN(num_classes, backbone="resnet50")
    method = "baseline" if variant == "baseline" else "clan"
    return create_model(method, num_classes, backbone="resnet50", **VARIANTS[variant])


def measure_one(variant: str, args) -> dict:
    """Train ``args.steps`` steps of one variant in this process; its resident-set figures in MiB."""
    import torch

    torch.manual_seed(0)
    model = build(variant, args.classes, args.old_clan).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.arange(args.batch) % args.classes
    before = _rss_mib()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sum(model.loss(model(x), y).values()).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "rss_before_mib": before, "peak_rss_mib": peak, "train_peak_mib": peak - before,
            "s_per_step": statistics.median(times[1:] or times),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--old-clan", help="a clan.py to measure too, as variant clan-old")
    parser.add_argument("--json", type=Path, default=Path("docs/clan_memory.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant, print its JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args)))
        return

    variants = ["baseline", *(["clan-old"] if args.old_clan else []), "clan", "clan-subsample"]
    forwarded = ["--batch", str(args.batch), "--steps", str(args.steps), "--img-size", str(args.img_size),
                 "--classes", str(args.classes), *(["--old-clan", args.old_clan] if args.old_clan else [])]
    rows = []
    for variant in variants:
        done = subprocess.run([sys.executable, __file__, "--one", variant, *forwarded], check=True,
                              capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{variant}: {rows[-1]}", flush=True)
    base = rows[0]
    for row in rows:
        row["train_peak_x_baseline"] = row["train_peak_mib"] / base["train_peak_mib"]
        row["time_x_baseline"] = row["s_per_step"] / base["s_per_step"]
    side = args.img_size // 8  # layer2's grid
    affinity_mib = (side * side) ** 2 * 4 / 2**20
    result = {"batch": args.batch, "steps": args.steps, "img_size": args.img_size, "classes": args.classes,
              "layer2_affinity_mib_per_image": affinity_mib, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    from fgcli.utils import write_json_atomic

    write_json_atomic(args.json, result)
    print(f"\nResNet-50, {args.img_size} px, batch {args.batch}, {args.steps} SGD steps, CPU; one layer2 affinity "
          f"({side * side} x {side * side}) = {affinity_mib:.1f} MiB per image")
    print("| variant | params (M) | train peak MiB | x baseline | s / step | x baseline |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['params_m']:.1f} | {r['train_peak_mib']:.0f} | {r['train_peak_x_baseline']:.2f} | "
              f"{r['s_per_step']:.2f} | {r['time_x_baseline']:.2f} |")


if __name__ == "__main__":
    main()
