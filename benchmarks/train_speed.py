"""The training input pipeline and loop on this CPU, old against new in one run, ratios printed.

    python benchmarks/train_speed.py [--out runs/bench-train-speed] [--json docs/train_speed.json]

1. ``loader``: images/s of one DataLoader worker at 448 (resize 512, random crop, flip; the synthetic JPEGs),
   the float pipeline the workers ran before (``train_transform``: ToTensor + Normalize in the worker, float32
   batches to the main process) against the uint8 one they run now (``train_pixels``; the trainer normalises
   on its device). Rounds interleaved, median per pipeline. Also: what ``Normalizer`` then costs per image on
   this CPU (on a GPU it is one small kernel per batch). Target: >= 1.5x images/s per worker.
2. ``trainer``: fgcli's ``Trainer.train_one_epoch`` (loader with ``--workers``, sync-free loop) against a plain
   loop (forward, loss, backward, SGD step) over the same model on one batch already in memory, in steps/s;
   1.0 means the trainer adds nothing to the model's own step. Small (ResNet-18 at 96 px) so the CPU finishes.

Writes a table to stdout and the figures to ``--json``. Timings on a shared machine are noisy: compare the
ratios, which come from one run with the two sides taking turns.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from fgcli.data import load_split
from fgcli.data.preprocess import PreprocessConfig
from fgcli.data.synth import generate_synthetic
from fgcli.data.torch_dataset import ImageDataset, SeededSampler, collate_with_bad
from fgcli.data.transforms import Normalizer, train_pixels, train_transform
from fgcli.training.config import TrainConfig
from fgcli.training.train import Trainer
from fgcli.utils import write_json_atomic


def loader_images_per_s(split, transform, images: int, batch: int) -> float:
    """One worker process decoding and augmenting ``images`` images into batches for this process."""
    sampler = SeededSampler(RandomSampler(range(len(split.samples)), num_samples=images,
                                          generator=torch.Generator().manual_seed(0)))
    loader = DataLoader(ImageDataset(split, transform), batch_size=batch, sampler=sampler, num_workers=1,
                        collate_fn=collate_with_bad, persistent_workers=True, prefetch_factor=4)
    next(iter(loader))  # the worker is up
    start = time.perf_counter()
    count = sum(len(labels) for _, labels, _, _ in loader)
    return count / (time.perf_counter() - start)


def bench_loader(data: Path, rounds: int, images: int, batch: int) -> dict:
    split = load_split(str(data), split="train")
    cfg = PreprocessConfig(img_size=448, resize_size=512)
    pipelines = {"float (before)": train_transform(cfg), "uint8 (now)": train_pixels(cfg)}
    samples = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, transform in pipelines.items():
            samples[name].append(loader_images_per_s(split, transform, images, batch))
    rates = {name: statistics.median(values) for name, values in samples.items()}
    normalize = Normalizer(cfg.mean, cfg.std, torch.device("cpu"))
    pixels = torch.randint(0, 256, (batch, 3, 448, 448), dtype=torch.uint8)
    start = time.perf_counter()
    for _ in range(5):
        normalize(pixels)
    normalize_ms = (time.perf_counter() - start) / (5 * batch) * 1e3
    return {"img_size": 448, "resize_size": 512, "workers": 1, "batch": batch, "images_per_round": images,
            "rounds": rounds, "images_per_s_per_worker": {k: round(v, 1) for k, v in rates.items()},
            "ratio_uint8_to_float": round(rates["uint8 (now)"] / rates["float (before)"], 2),
            "normalize_ms_per_image_main_process_cpu": round(normalize_ms, 3)}


def bench_trainer(data: Path, out: Path, rounds: int, workers: int) -> dict:
    cfg = TrainConfig(method="baseline", data=str(data), out=str(out), backbone="resnet18", img_size=96,
                      resize_size=110, epochs=rounds + 1, batch_size=16, workers=workers, device="cpu", seed=0)
    trainer = Trainer(cfg)
    model, steps = trainer.model, trainer.steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size)
    labels = torch.randint(0, len(trainer.class_names), (cfg.batch_size,))

    def plain_epoch() -> float:
        model.train()
        start = time.perf_counter()
        for _ in range(steps):
            total = sum(model.loss(model(images), labels).values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
        return steps / (time.perf_counter() - start)

    trainer.train_one_epoch(0)  # warm-up: workers start, allocator settles
    fgcli, plain = [], []
    for epoch in range(1, rounds + 1):
        start = time.perf_counter()
        trainer.train_one_epoch(epoch)
        fgcli.append(steps / (time.perf_counter() - start))
        plain.append(plain_epoch())
    fgcli_rate, plain_rate = statistics.median(fgcli), statistics.median(plain)
    return {"method": "baseline", "backbone": "resnet18", "img_size": cfg.img_size, "batch": cfg.batch_size,
            "workers": workers, "steps_per_epoch": steps, "rounds": rounds,
            "steps_per_s": {"fgcli Trainer": round(fgcli_rate, 2), "plain loop": round(plain_rate, 2)},
            "ratio_trainer_to_plain": round(fgcli_rate / plain_rate, 3)}


def table(record: dict) -> str:
    loader, trainer = record["loader"], record["trainer"]
    lines = [f"{'what':44} {'before / trainer':>16} {'now / plain':>12} {'ratio':>7}"]
    (old_name, old), (new_name, new) = loader["images_per_s_per_worker"].items()
    lines.append(f"{'loader img/s per worker at 448 (float vs uint8)':44} {old:16.1f} {new:12.1f} "
                 f"{loader['ratio_uint8_to_float']:7.2f}")
    lines.append(f"{'trainer steps/s vs plain loop (R18, 96 px)':44} {trainer['steps_per_s']['fgcli Trainer']:16.2f} "
                 f"{trainer['steps_per_s']['plain loop']:12.2f} {trainer['ratio_trainer_to_plain']:7.3f}")
    lines.append(f"normalising uint8 on this CPU afterwards: {loader['normalize_ms_per_image_main_process_cpu']} ms/image")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-train-speed"))
    parser.add_argument("--json", type=Path, default=Path("docs/train_speed.json"))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison (median kept)")
    parser.add_argument("--images", type=int, default=128, help="images per loader round")
    parser.add_argument("--workers", type=int, default=1, help="the trainer's loader workers")
    args = parser.parse_args(argv)
    data = args.out / "data"
    if not data.is_dir():
        generate_synthetic(data, num_classes=10, per_class=30, seed=0)
    torch.manual_seed(0)
    record = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine(), "torch": torch.__version__},
              "loader": bench_loader(data, args.rounds, args.images, batch=16),
              "trainer": bench_trainer(data, args.out / "run", args.rounds, args.workers)}
    print(table(record))
    write_json_atomic(args.json, record)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
