"""Train the baseline and the five methods under one budget on the synthetic dataset and compare them.

    python benchmarks/methods.py --out runs/bench-methods [--seeds 0 1 2] [--epochs 12]

Same backbone, image size, epochs and seeds for every method (the `small` recipe); writes
`docs/results.md` and `<out>/methods.json`. GFLOPs are counted at the paper's input size with
ResNet-50 (torch's FlopCounterMode, multiply-adds counted as 2 FLOPs), latency is eager PyTorch on
this CPU at batch 1 and at the small recipe's input size, interleaved over the methods.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fgcli.data import load_split
from fgcli.data.synth import generate_synthetic
from fgcli.training.checkpoint import load_checkpoint, model_from_checkpoint
from fgcli.training.config import load_recipe, resolve_config
from fgcli.training.evaluate import evaluate_runner
from fgcli.training.train import train
from fgcli.models import create_model, list_models
from fgcli.runtime.torch_runner import TorchRunner
from fgcli.utils import write_json_atomic, write_text_atomic

#: the papers' own top-1 %, copied from shared/methods/*.md (not ours); "not found" = our notes could not reach the
#: paper's table, "not published" = the paper reports no figure there
PAPER_ACCURACY = {
    "tasn": {"CUB-200-2011": "87.9", "Stanford Cars": "93.8", "FGVC-Aircraft": "not published",
             "note": "ResNet-50; CLAN's Table 6 lists the same 87.9 / 93.8 / -; official code README: 87.0 (224) / 88.0 (336) on CUB"},
    "tdsa": {"CUB-200-2011": "not found", "Stanford Cars": "not found", "FGVC-Aircraft": "not found",
             "note": "table not retrieved (arXiv 2102.00367)"},
    "gcam-csa": {"CUB-200-2011": "not found", "Stanford Cars": "not found", "FGVC-Aircraft": "not found",
                 "note": "table not retrieved (arXiv 2101.09666)"},
    "clan": {"CUB-200-2011": "88.1", "Stanford Cars": "94.2", "FGVC-Aircraft": "93.2",
             "note": "Table 6, 2-scale ResNet-50 (ours); also R101 88.7 / 94.5 / 93.3, VGG-16 85.9 / 92.9 / 90.3, "
                     "VGG-16 3-scale 86.8 / 93.1 / 91.0"},
    "ssanet": {"CUB-200-2011": "not found", "Stanford Cars": "not found", "FGVC-Aircraft": "not found",
               "note": "abstract only"},
    "baseline": {"CUB-200-2011": "86.0", "Stanford Cars": "92.0", "FGVC-Aircraft": "89.9",
                 "note": "no paper of its own: the ResNet-50 baseline row of CLAN's Table 6"},
}


def gflops_at_paper_size(method: str, num_classes: int = 200) -> float:
    recipe = load_recipe(method, "paper")
    model = create_model(method, num_classes, backbone="resnet50").eval()
    x = torch.zeros(1, 3, recipe["img_size"], recipe["img_size"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def latency_ms(models: dict, size: int, rounds: int = 5, iters: int = 10) -> dict[str, float]:
    """Median ms per image at batch 1, methods interleaved round by round so drift hits all alike."""
    x = torch.randn(1, 3, size, size)
    samples: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(x)  # warm-up
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                for _ in range(iters):
                    model(x)
                samples[name].append((time.perf_counter() - start) / iters * 1000)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-methods"))
    parser.add_argument("--methods", nargs="+", default=list_models())
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the small recipe's")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--results-md", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args()

    data = args.out / "data"
    if not (data / "images.txt").exists():
        generate_synthetic(data, num_classes=args.classes, per_class=args.per_class, seed=0)
    test_split = load_split(data, "test")
    rows: dict[str, dict] = {}
    trained = {}
    for method in args.methods:
        runs = []
        for seed in args.seeds:
            run = args.out / f"{method}-seed{seed}"
            cfg = resolve_config({"method": method, "data": str(data), "out": str(run), "recipe": "small",
                                  "epochs": args.epochs, "seed": seed, "workers": 2})
            result = train(cfg)
            records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            with TorchRunner(str(run / "last.pt"), device="cpu") as runner:
                ev = evaluate_runner(runner, test_split)
            runs.append({"seed": seed, "top1": ev.top1, "top5": ev.top5, "best_val_top1": result.best_top1,
                         "train_images_per_s": statistics.median(r["images_per_s"] for r in records)})
            print(f"{method} seed {seed}: top-1 {ev.top1:.4f} top-5 {ev.top5:.4f}", flush=True)
        trained[method] = model_from_checkpoint(load_checkpoint(args.out / f"{method}-seed{args.seeds[0]}" / "last.pt"))
        top1 = [r["top1"] for r in runs]
        rows[method] = {
            "runs": runs,
            "top1_mean": statistics.mean(top1), "top1_spread": (max(top1) - min(top1)) if len(top1) > 1 else None,
            "top5_mean": statistics.mean(r["top5"] for r in runs),
            "params_m_resnet50_200cls": sum(p.numel() for p in create_model(method, 200, backbone="resnet50").eval().parameters()) / 1e6,
            "gflops_paper_size_resnet50": gflops_at_paper_size(method),
            "paper_img_size": load_recipe(method, "paper")["img_size"],
            "train_images_per_s": statistics.mean(r["train_images_per_s"] for r in runs),
        }
    size = resolve_config({"method": "baseline", "recipe": "small"}).img_size
    for method, ms in latency_ms(trained, size).items():
        rows[method]["cpu_latency_ms_b1"] = ms
    base_ms = rows.get("baseline", {}).get("cpu_latency_ms_b1")
    write_json_atomic(args.out / "methods.json", {"seeds": args.seeds, "img_size": size, "methods": rows})
    write_text_atomic(args.results_md, render_markdown(rows, args, size, base_ms))
    print(render_markdown(rows, args, size, base_ms))


def render_markdown(rows: dict, args, size: int, base_ms: float | None) -> str:
    seeds = " ".join(map(str, args.seeds))
    lines = [
        "# Methods compared on the synthetic dataset",
        "",
        f"Regenerate: `python benchmarks/methods.py --seeds {seeds} --classes {args.classes} --per-class {args.per_class}"
        + (f" --epochs {args.epochs}" if args.epochs else "") + "` (2-core CPU, about 30 minutes per seed).",
        "",
        f"Synthetic dataset: {args.classes} classes x {args.per_class} images (seed 0); every method trained with the "
        f"`small` recipe (ResNet-18 from scratch, {size} px crops, same epochs, seeds {seeds}). Top-1 / top-5 on the "
        "test split from the last epoch's weights; spread = max - min over seeds. Params and GFLOPs: ResNet-50, "
        "200 classes, the paper's input size. Latency: eager PyTorch, batch 1, this CPU, interleaved.",
        "",
        "| method | top-1 | spread | top-5 | params (M) | GFLOPs @ paper size | CPU ms (b1) | x baseline | train img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in rows.items():
        spread = "-" if r["top1_spread"] is None else f"{r['top1_spread'] * 100:.1f}"
        ratio = f"{r['cpu_latency_ms_b1'] / base_ms:.2f}" if base_ms else "-"
        lines.append(
            f"| {method} | {r['top1_mean'] * 100:.1f} | {spread} | {r['top5_mean'] * 100:.1f} | "
            f"{r['params_m_resnet50_200cls']:.1f} | {r['gflops_paper_size_resnet50']:.1f} @ {r['paper_img_size']} | "
            f"{r['cpu_latency_ms_b1']:.1f} | {ratio} | {r['train_images_per_s']:.0f} |"
        )
    lines += [
        "",
        "## The papers' reported accuracies (the papers' figures, not ours)",
        "",
        "| method | CUB-200-2011 | Stanford Cars | FGVC-Aircraft | note |",
        "|---|---|---|---|---|",
    ]
    for method in rows:
        p = PAPER_ACCURACY.get(method, {})
        lines.append(f"| {method} | {p.get('CUB-200-2011', '?')} | {p.get('Stanford Cars', '?')} | "
                     f"{p.get('FGVC-Aircraft', '?')} | {p.get('note', '')} |")
    lines += ["", "not found: our notes (shared/methods) could not reach the paper's table; not published: the paper "
              "reports no figure for that dataset.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
