"""The training loop: readable first (torchvision reference style), exact to resume, DDP-ready.

One epoch is fully determined by ``(seed, epoch, rank)``: the RNGs are reseeded at the start of
every epoch and the sampler draws its order and each sample's augmentation seed from the same seed
(``SeededSampler``: the loader's workers persist across epochs). A run killed after epoch k and
resumed from ``last.pt`` therefore ends with the same weights as a run that was never stopped.

At the speed of the GPU: the workers hand over uint8 images, normalised on the device (``Normalizer``); the
epoch's loss terms, accuracy and the first non-finite loss are accumulated on the device and read back every
``SYNC_EVERY`` steps, not every step (each read-back empties the GPU's queue); channels_last on CUDA.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from fgcli.data import load_split
from fgcli.data.preprocess import PreprocessConfig
from fgcli.data.torch_dataset import ImageDataset, SeededSampler, collate_with_bad
from fgcli.data.transforms import Normalizer, eval_pixels, eval_transform, train_pixels
from fgcli.devices import resolve_torch_device
from fgcli.training import distributed as dist_utils
from fgcli.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fgcli.training.config import TrainConfig
from fgcli.training.metrics import ClassificationMetrics
from fgcli.training.run_folder import RUN_FILES, check_run_folder, run_lock
from fgcli.training.tensorboard import PREVIEW_IMAGES, TensorBoardLogger
from fgcli.errors import TERMINATED_EXIT_CODE, DataError, FgcliError, Interrupted, Terminated
from fgcli.models import create_model
from fgcli.utils import atomic_path, write_json_atomic

#: callback(event, payload) used by the CLI to drive progress bars; the loop itself prints nothing
ProgressHook = Callable[[str, dict[str, Any]], None]

#: steps between read-backs of the running loss (the progress line) and the finiteness check; also read back:
#: an epoch's first step (figures on the screen at once) and its last
SYNC_EVERY = 20
#: batches each loader worker prepares ahead
PREFETCH_FACTOR = 4
#: autocast dtype per --amp precision; "off" runs in float32
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: what to try when training diverges, per precision
DIVERGENCE_HINTS = {
    "fp16": "fp16's range ends at 65504: try --amp bf16 (same range as fp32) or --amp off; else lower --lr",
    "bf16": "try --amp off, or lower --lr",
    "off": "lower --lr",
}


@dataclass
class TrainResult:
    out_dir: Path
    best_top1: float
    last_top1: float
    epochs_run: int
    bad_images: list[str]
    interrupted: bool = False
    terminated: bool = False  # interrupted by SIGTERM, not Ctrl-C


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return seed * 1_000_003 + epoch * 1_009 + rank


def resolve_precision(amp: str, device: torch.device) -> str:
    """The autocast precision ``--amp`` asks for on ``device``: ``auto`` is bf16 on a GPU that has it (fp32's
    range, so no loss scaling), else fp16 on CUDA, and off on the CPU, where fgcli never used autocast."""
    if amp == "auto":
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FgcliError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16",
                         hint="use --amp fp16 or --amp off")
    return amp


def recorded_precision(train_config: dict[str, Any], device: torch.device) -> str:
    """The precision a checkpoint's run trained in (before ``--amp`` took a precision it was a flag: on = fp16,
    on CUDA only)."""
    amp = train_config.get("amp", True)
    if isinstance(amp, bool):
        return "fp16" if amp and device.type == "cuda" else "off"
    return amp


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine to zero or steps at ``milestones``; stepped every iteration."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    total = max(1, cfg.epochs * steps_per_epoch - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / total))


class Trainer:
    """Owns the model, optimizer, schedule and data of one run; ``fit()`` runs it."""

    def __init__(self, cfg: TrainConfig, hook: ProgressHook | None = None):
        cfg.validate()
        self.cfg = cfg
        self.hook = hook or (lambda event, payload: None)
        self.device = resolve_torch_device(torch, cfg.device)
        self.dist = dist_utils.init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.out = Path(cfg.out)
        self.preprocess = PreprocessConfig(cfg.img_size, cfg.resize_size, tuple(cfg.mean), tuple(cfg.std))
        self.train_split = load_split(cfg.data, split=cfg.train_split, layout=cfg.layout)
        self.val_split = load_split(cfg.data, split=cfg.val_split, layout=cfg.layout)
        if self.train_split.class_names != self.val_split.class_names:
            raise DataError(f"the {cfg.train_split} and {cfg.val_split} splits of {cfg.data} list different classes")
        self.class_names = list(self.train_split.class_names)
        seed_everything(cfg.seed)
        self.bad_images: dict[str, str] = {}
        resume_ckpt = self._read_resume_checkpoint() if cfg.resume else None
        self.precision = self._precision(resume_ckpt)
        self.cfg = cfg = replace(cfg, amp=self.precision)  # config.json and checkpoints record what ran
        self.qat_calibration_images = 0
        self.model = self._build_model(resume_ckpt)
        channels_last = self.device.type == "cuda"  # the layout cuDNN's fast (tensor-core) convolutions take
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.backbone_name = self.model.backbone.name
        self.optimizer = torch.optim.SGD(
            self.model.param_groups(cfg.lr, cfg.backbone_lr_scale, cfg.weight_decay),
            lr=cfg.lr, momentum=cfg.momentum, nesterov=False,
        )
        self.autocast_dtype = AUTOCAST_DTYPES.get(self.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")  # bf16 needs none
        self.normalize = Normalizer(cfg.mean, cfg.std, self.device, channels_last)
        self.train_loader = self._loader(self.train_split, train_pixels(self.preprocess), shuffle=True)
        self.val_loader = self._loader(self.val_split, eval_pixels(self.preprocess), shuffle=False)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.steps_per_epoch, cfg)
        )
        self.start_epoch = 0
        self.best_top1 = -1.0
        self.last_top1 = 0.0  # of the last finished epoch (a resumed run's: its last.pt's)
        self.preview_images: torch.Tensor | None = None  # the first validation images, for attention maps
        self.ddp_model = self.model
        if resume_ckpt is not None:
            self._load_resume_state(resume_ckpt)
        if self.dist.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # the training forward; checkpoints, validation and attention maps use the plain model
        self.step_model = torch.compile(self.ddp_model) if cfg.compile else self.ddp_model

    def _precision(self, resume_ckpt: dict[str, Any] | None) -> str:
        """``--amp`` on this device; resuming without ``--amp``, the precision the run was trained in."""
        if resume_ckpt is None or self.cfg.amp != "auto":
            return resolve_precision(self.cfg.amp, self.device)
        return resolve_precision(recorded_precision(resume_ckpt.get("train_config", {}), self.device), self.device)

    def _build_model(self, resume_ckpt: dict[str, Any] | None) -> torch.nn.Module:
        """The model on the device: a new one, or for ``--qat`` the ``--weights`` run with INT8 quantizers
        calibrated on train images (resuming: with the quantizers of the interrupted run)."""
        cfg = self.cfg
        if not cfg.qat:
            return create_model(cfg.method, len(self.class_names), backbone=cfg.backbone, pretrained=cfg.pretrained,
                                weights=cfg.weights, **cfg.model_kwargs).to(self.device)
        from fgcli.training import qat

        if resume_ckpt is not None:  # its weights are loaded with the rest of its state
            self.qat_calibration_images = int(resume_ckpt["qat"].get("calibration_images", 0))
            return model_from_checkpoint(resume_ckpt, self.out / "last.pt").to(self.device)
        source = load_checkpoint(cfg.weights)
        qat.check_qat_source(source, cfg.weights, cfg.method, cfg.backbone, self.class_names)
        model = model_from_checkpoint(source, cfg.weights).to(self.device)
        count = min(cfg.qat_calib_size, len(self.train_split.samples))
        self.hook("note", {"message": f"QAT: calibrating the INT8 quantizers of {cfg.weights} on {count} train images"})
        qat.insert_quantizers(model, lambda: self._calibration_batches(count), self.device)
        self.qat_calibration_images = count
        return model

    def _calibration_batches(self, count: int) -> Iterator[torch.Tensor]:
        """``count`` train images spread evenly over the split (every class shows up), eval-transformed."""
        dataset = ImageDataset(self.train_split, eval_transform(self.preprocess))
        picks = np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()
        loader = DataLoader(torch.utils.data.Subset(dataset, picks), batch_size=self.cfg.batch_size,
                            num_workers=self.cfg.workers, collate_fn=collate_with_bad)
        for images, labels, _, bad in loader:
            self._check_bad(bad)
            if len(labels):
                yield images

    # -- data -----------------------------------------------------------------
    def _loader(self, split, transform, shuffle: bool) -> DataLoader:
        dataset = ImageDataset(split, transform)
        if self.dist.enabled:
            sampler = DistributedSampler(
                dataset, self.dist.world_size, self.dist.rank, shuffle=shuffle, seed=self.cfg.seed,
                drop_last=shuffle,
            )
        elif shuffle:
            sampler = RandomSampler(dataset, generator=torch.Generator())
        else:
            sampler = SequentialSampler(dataset)
        if shuffle:
            sampler = SeededSampler(sampler)
        # Training drops a ragged last batch (BatchNorm with a batch of 1 fails) unless that would drop everything.
        drop_last = shuffle and len(dataset) // max(1, self.dist.world_size) >= self.cfg.batch_size
        workers = self.cfg.workers
        return DataLoader(
            dataset, batch_size=self.cfg.batch_size, sampler=sampler, num_workers=workers,
            collate_fn=collate_with_bad, drop_last=drop_last, pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=PREFETCH_FACTOR if workers else None,
        )

    def _set_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.cfg.seed, epoch, self.dist.rank)
        seed_everything(seed)
        seeded = self.train_loader.sampler
        seeded.set_seed(seed)  # each sample's augmentation seed
        if isinstance(seeded.sampler, DistributedSampler):
            seeded.sampler.set_epoch(epoch)
        elif isinstance(seeded.sampler, RandomSampler):
            seeded.sampler.generator.manual_seed(seed)

    def _check_bad(self, bad: list) -> None:
        for sample in bad:
            self.bad_images[sample.path] = sample.reason
        if bad and not self.cfg.skip_bad:
            first = bad[0]
            raise DataError(
                f"cannot read image {first.path}: {first.reason}",
                hint="fix or remove the file (fgcli data check lists every bad file), or pass --skip-bad to train without it",
            )

    # -- checkpoints ----------------------------------------------------------
    def _state(self, epoch_done: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "method": self.cfg.method,
            "backbone": self.backbone_name,
            "num_classes": len(self.class_names),
            "class_names": self.class_names,
            "model_kwargs": dict(self.cfg.model_kwargs),
            "preprocess": self.preprocess.to_dict(),
            "model": self.model.state_dict(),
            "epoch": epoch_done,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": _python_rng_state()},
            "best_top1": self.best_top1,
            "train_config": {k: v for k, v in self.cfg.to_dict().items() if k not in ("resume", "overwrite")},
            "metrics": metrics,
            "bad_images": sorted(self.bad_images),
            **({"qat": self._qat_record()} if self.cfg.qat else {}),
        }

    def _qat_record(self) -> dict[str, Any]:
        from fgcli.training.qat import qat_record

        return qat_record(self.model, str(self.cfg.weights), self.qat_calibration_images)

    def _read_resume_checkpoint(self) -> dict[str, Any]:
        path = self.out / "last.pt"
        if not path.is_file():
            held = [name for name in RUN_FILES if (self.out / name).exists()]
            raise FgcliError(f"--resume: {path} does not exist, so no epoch of a run in {self.out} finished "
                             f"(it holds {', '.join(held) or 'no run files'})",
                             hint="drop --resume: a new run starts there, and nothing in that folder is lost")
        ckpt = load_checkpoint(path)
        from fgcli.training.qat import is_qat_checkpoint

        if is_qat_checkpoint(ckpt) != self.cfg.qat:
            kind, started = ("a QAT run", "without") if not self.cfg.qat else ("not a QAT run", "with")
            raise FgcliError(f"--resume: {path} is {kind}, and this run was started {started} --qat",
                             hint="resume with the options the run was started with (--qat --weights SOURCE for a "
                                  "QAT run)")
        return ckpt

    def _load_resume_state(self, ckpt: dict[str, Any]) -> None:
        path = self.out / "last.pt"
        if ckpt["method"] != self.cfg.method or ckpt["backbone"] != self.backbone_name:
            raise FgcliError(
                f"--resume: {path} is a {ckpt['method']} run ({ckpt['backbone']}), but this run asks for "
                f"--method {self.cfg.method} ({self.backbone_name})",
                hint=f"resume with --method {ckpt['method']} --backbone {ckpt['backbone']}, or choose another --out",
            )
        if ckpt["class_names"] != self.class_names:
            raise FgcliError(
                f"--resume: {path} was trained on {ckpt['num_classes']} other classes than the "
                f"{len(self.class_names)} of {self.cfg.data}",
                hint="resume with the --data the run was started on, or choose another --out",
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):  # empty: the run trained without loss scaling (bf16 / off); a new scale starts
            self.scaler.load_state_dict(ckpt["scaler"])
        trained_in = recorded_precision(ckpt.get("train_config", {}), self.device)
        if trained_in != self.precision:
            self.hook("note", {"message": f"--resume: {path} trained with --amp {trained_in}, continuing with "
                                          f"--amp {self.precision} (not bit-identical to an uninterrupted run)"})
        _restore_rng(ckpt["rng"])
        self.start_epoch = int(ckpt["epoch"])
        self.best_top1 = float(ckpt.get("best_top1", -1.0))
        self.last_top1 = float((ckpt.get("metrics") or {}).get("val_top1", 0.0))
        _metrics_before(self.out / "metrics.jsonl", self.start_epoch + 1)  # a damaged line: said now, not in an hour
        self.bad_images.update({p: "skipped before resume" for p in ckpt.get("bad_images", [])})

    # -- loop -----------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        if self.cfg.qat:
            from fgcli.training.qat import freeze_batchnorm_statistics

            freeze_batchnorm_statistics(self.model)
        self._set_epoch(epoch)
        tally = _EpochTally(self.device)
        start = time.perf_counter()
        self.hook("epoch_start", {"epoch": epoch, "steps": self.steps_per_epoch, "epochs": self.cfg.epochs})
        for step, (images, labels, _, bad) in enumerate(self.train_loader, 1):
            self._check_bad(bad)
            if len(labels) < 2:  # everything in this batch was bad, or BatchNorm cannot train on one image
                self.scheduler.step()
                continue
            images, labels = self.normalize(images), labels.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                outputs = self.step_model(images)
                terms = self.model.loss(outputs, labels)
            total = sum(terms.values())
            tally.add(step, total, terms, outputs["logits"], labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if step % SYNC_EVERY and step not in (1, self.steps_per_epoch):
                self.hook("step", {})  # the bar advances; the figures wait for the next read-back
                continue
            means = self._read_back(tally, epoch)
            self.hook("step", {
                "loss": means["loss"], "acc": means["acc"],
                "terms": {name: means[name] for name in tally.names} if len(tally.names) > 1 else {},
                "images_per_s": tally.seen * self.dist.world_size / max(time.perf_counter() - start, 1e-9),
                "lr": self.optimizer.param_groups[-1]["lr"],
            })
        means = self._read_back(tally, epoch, all_ranks=True)
        result = {f"train_{k}": means[k] for k in ("loss", *tally.names)}
        result["train_acc"] = means["acc"]
        result["images_per_s"] = means["seen"] / max(time.perf_counter() - start, 1e-9)
        return result

    def _read_back(self, tally: "_EpochTally", epoch: int, all_ranks: bool = False) -> dict[str, float]:
        """The epoch's running means (over every rank's images with ``all_ranks``) in one read-back; stops with
        the divergence message if a loss on this rank has been non-finite since the last one."""
        stats = tally.stats()
        summed = dist_utils.all_reduce_sum(stats.clone(), self.dist) if all_ranks else stats
        values = torch.cat([stats, summed]).tolist()
        local, (seen, correct, _, *rest) = values[:len(stats)], values[len(stats):]
        sums = rest[:len(tally.names) + 1]
        diverged_at, first_bad = local[2], local[3 + len(tally.names) + 1:]
        if diverged_at:
            loss, *terms = first_bad
            named = ", ".join(f"{name}={value:.4g}" for name, value in zip(tally.names, terms))
            raise FgcliError(
                f"training diverged at epoch {epoch + 1}, step {int(diverged_at)} with --amp {self.precision}: "
                f"loss is {loss} ({named})",
                hint=f"{DIVERGENCE_HINTS[self.precision]}; resume from last.pt with the change",
            )
        seen_all = max(seen, 1.0)
        return {"seen": seen, "acc": correct / seen_all,
                **{name: value / seen_all for name, value in zip(("loss", *tally.names), sums)}}

    @torch.no_grad()
    def validate(self) -> ClassificationMetrics:
        self.model.eval()
        metrics = ClassificationMetrics(len(self.class_names))
        self.hook("eval_start", {"steps": len(self.val_loader)})
        for images, labels, _, bad in self.val_loader:
            self._check_bad(bad)
            if len(labels) == 0:
                continue
            images = self.normalize(images)
            if self.preview_images is None:
                self.preview_images = images[:PREVIEW_IMAGES].clone()  # not a view holding the whole batch
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                logits = self.model(images)
            metrics.update(logits.float().cpu().numpy(), labels.numpy())
            self.hook("eval_step", {})
        return metrics

    def fit(self) -> TrainResult:
        cfg = self.cfg
        # a new run over an old one (--overwrite) replaces its files only once it has an epoch to show
        replaces_old_run = not cfg.resume and any((self.out / name).exists() for name in RUN_FILES)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not replaces_old_run:
                write_json_atomic(self.out / "config.json", cfg.to_dict())
        last_top1 = self.last_top1
        epoch = self.start_epoch
        if self.start_epoch >= cfg.epochs:  # before, this printed "last 0.0000" and nothing else
            self.hook("note", {"message": f"the run in {self.out} already finished its {self.start_epoch} epochs: "
                                          "nothing to train (a larger --epochs continues it)"})
        board = None
        if cfg.tensorboard and self.dist.is_main:
            board = TensorBoardLogger(self.out, cfg.mean, cfg.std, cfg.tensorboard_every)
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                epoch_start = time.perf_counter()
                train_stats = self.train_one_epoch(epoch)
                val = self.validate() if self.dist.is_main else None
                if self.dist.is_main:
                    last_top1 = val.top1()
                    record = {
                        "epoch": epoch + 1, "lr": self.optimizer.param_groups[-1]["lr"], **train_stats,
                        "val_top1": last_top1, "val_top5": val.top5(),
                        "epoch_time_s": time.perf_counter() - epoch_start,
                    }
                    self._append_metrics(record)
                    if board is not None:
                        board.log_epoch(record, self.optimizer, epoch + 1)
                        if board.wants_attention(epoch + 1, cfg.epochs) and self.preview_images is not None:
                            board.log_attention(self.model, self.preview_images, epoch + 1)
                    is_best = last_top1 > self.best_top1
                    self.best_top1 = max(self.best_top1, last_top1)
                    state = self._state(epoch + 1, record)
                    save_checkpoint(self.out / "last.pt", state)
                    if is_best:
                        save_checkpoint(self.out / "best.pt", state)
                    if replaces_old_run and epoch == self.start_epoch:
                        write_json_atomic(self.out / "config.json", cfg.to_dict())
                        (self.out / "interrupted.pt").unlink(missing_ok=True)  # the old run's
                    self.hook("epoch_end", record)
                dist_utils.barrier(self.dist)
        except (KeyboardInterrupt, Exception) as stop:  # Ctrl-C, or SIGTERM (Terminated)
            terminated = isinstance(stop, Terminated) or _SIGTERM_RECEIVED.is_set()
            if not isinstance(stop, KeyboardInterrupt) and not terminated:
                raise
            # after a SIGTERM, an error is its doing (a DataLoader worker it killed, a Terminated a library
            # turned into another exception): the partial epoch is kept all the same
            if self.dist.is_main:
                with _stop_signals_ignored():  # a second Ctrl-C or SIGTERM must not cut interrupted.pt short
                    save_checkpoint(self.out / "interrupted.pt",
                                    self._state(epoch, {"interrupted_in_epoch": epoch + 1}))
                self.hook("interrupted", {"epoch": epoch + 1, "out": str(self.out)})
            return TrainResult(self.out, self.best_top1, last_top1, epoch - self.start_epoch, sorted(self.bad_images),
                               True, terminated)
        finally:
            if board is not None:
                board.close()
            self._release_workers()
            dist_utils.cleanup(self.dist)
        return TrainResult(
            self.out, self.best_top1, last_top1, cfg.epochs - self.start_epoch, sorted(self.bad_images)
        )

    def _release_workers(self) -> None:
        """End the loaders' persistent worker processes when the fit ends. Left to the garbage collector, they were
        joined with PyTorch's 5 s time-out each: 80 s after every fit with 8 workers on the H200 (gpu_check)."""
        for loader in (self.train_loader, self.val_loader):
            if loader._iterator is not None:  # where a DataLoader keeps its persistent workers' iterator
                loader._iterator._shutdown_workers()
                loader._iterator = None

    def _append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line; rewritten atomically so a killed run never leaves half a line."""
        path = self.out / "metrics.jsonl"
        lines = _metrics_before(path, record["epoch"])
        lines.append(json.dumps(record))
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")


def _metrics_before(path: Path, epoch: int) -> list[str]:
    """The lines of RUN/metrics.jsonl for the epochs before ``epoch`` (none before the first); a line that is not
    an epoch's record is an error naming it (before: a JSONDecodeError traceback after a whole resumed epoch)."""
    if epoch <= 1 or not path.exists():
        return []
    hint = "fix or delete that line (each line is one epoch's JSON record)"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise FgcliError(f"cannot read {path}: {exc}", hint=hint) from None
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            if line.strip() and int(json.loads(line)["epoch"]) < epoch:
                kept.append(line)
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise FgcliError(f"{path}:{number} is not an epoch record of fgcli train ({type(exc).__name__}: {exc})",
                             hint=hint) from None
    return kept


def train(cfg: TrainConfig, hook: ProgressHook | None = None) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.data``; writes RUN/last.pt, RUN/best.pt and RUN/metrics.jsonl.

    A RUN holding a run is refused unless ``cfg.resume`` or ``cfg.overwrite``; RUN/.fgcli.lock keeps a
    second run out while this one trains (see fgcli.training.run_folder).
    """
    try:
        with _sigterm_interrupts():
            if os.environ.get("RANK", "0") != "0":  # DDP: rank 0 holds the lock and decides for the folder
                check_run_folder(cfg.out, cfg.resume, cfg.overwrite)
                return Trainer(cfg, hook).fit()
            note = (lambda message: hook("note", {"message": message})) if hook else (lambda message: None)
            with run_lock(cfg.out, note):
                check_run_folder(cfg.out, cfg.resume, cfg.overwrite, note)
                return Trainer(cfg, hook).fit()
    except Terminated:  # before the first epoch began (fit() keeps a partial epoch in interrupted.pt)
        raise Interrupted(f"SIGTERM before the first epoch into {cfg.out} began; no weights were saved",
                          exit_code=TERMINATED_EXIT_CODE) from None


#: set by the first SIGTERM of a training run
_SIGTERM_RECEIVED = threading.Event()


class _EpochTally:
    """An epoch's images, correct predictions and summed loss terms, and the first step whose loss was not
    finite with its terms, all kept on the device: adding a step never waits for the GPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names: tuple[str, ...] = ()
        self.seen = 0  # images: known on the host
        self.counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, first bad step (0: none)
        self.sums = self.first_bad = torch.zeros(0, dtype=torch.float64, device=device)

    def add(self, step: int, total: torch.Tensor, terms: dict[str, torch.Tensor], logits: torch.Tensor,
            labels: torch.Tensor) -> None:
        values = torch.stack([total.detach().double(), *(value.detach().double() for value in terms.values())])
        if not self.names:
            self.names = tuple(terms)
            self.sums = torch.zeros_like(values)
            self.first_bad = torch.zeros_like(values)
        n = len(labels)
        self.seen += n
        self.sums += values * n
        newly_bad = ~torch.isfinite(values[0]) & (self.counts[1] == 0)
        self.first_bad = torch.where(newly_bad, values, self.first_bad)
        correct = (logits.detach().argmax(1) == labels).sum()
        self.counts += torch.stack([correct.double(), newly_bad.double() * step])

    def stats(self) -> torch.Tensor:
        """``[images, correct, first bad step, *sums, *first bad values]`` in one tensor (one read-back)."""
        seen = torch.tensor([float(self.seen)], dtype=torch.float64).to(self.device)
        return torch.cat([seen, self.counts, self.sums, self.first_bad])


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block the first SIGTERM raises Terminated, later ones are ignored: the run is stopping
    already (in the main thread, where Python handles signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        if _SIGTERM_RECEIVED.is_set():
            return
        _SIGTERM_RECEIVED.set()
        if hasattr(signal, "SIGCHLD"):  # the process ends: PyTorch need not raise for the workers SIGTERM killed
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        raise Terminated

    _SIGTERM_RECEIVED.clear()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _SIGTERM_RECEIVED.clear()


@contextmanager
def _stop_signals_ignored() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM for the block (in the main thread, where Python handles signals), and the
    deaths of DataLoader workers: a scheduler's SIGTERM to the whole process group (Slurm) kills them too, and
    PyTorch's SIGCHLD handler then raised "DataLoader worker ... is killed" inside torch.save of interrupted.pt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    if hasattr(signal, "SIGCHLD"):  # POSIX; SIG_DFL, not SIG_IGN, which would stop children being waited for
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))


def _numpy_rng_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _python_rng_state() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]
