"""The trainer at the speed of the hardware, without changing what it computes: ``--amp`` (parsed, recorded,
kept on --resume), uint8 workers normalised in the trainer (same values as the float pipeline), augmentation
seeded per sample (persistent workers give the same epochs), read-backs every SYNC_EVERY steps only, and the
divergence message naming the precision and the loss terms."""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, RandomSampler  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import fgcli.training.train as train_module  # noqa: E402
from fgcli.cli import app  # noqa: E402
from fgcli.data.index import DatasetSplit, Sample  # noqa: E402
from fgcli.data.preprocess import PreprocessConfig  # noqa: E402
from fgcli.data.torch_dataset import ImageDataset, SeededSampler, collate_with_bad  # noqa: E402
from fgcli.data.transforms import Normalizer, eval_pixels, eval_transform, train_pixels, train_transform  # noqa: E402
from fgcli.training.checkpoint import load_checkpoint  # noqa: E402
from fgcli.training.config import TrainConfig  # noqa: E402
from fgcli.training.train import Trainer, recorded_precision, resolve_precision, train  # noqa: E402
from fgcli.errors import FgcliError  # noqa: E402
from conftest import tiny_train_config  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (61, 83, 3), dtype=np.uint8))


@pytest.mark.parametrize("float_pipeline, uint8_pipeline", [(train_transform, train_pixels), (eval_transform, eval_pixels)])
def test_uint8_pipeline_normalised_in_the_trainer_equals_the_float_pipeline(photo, float_pipeline, uint8_pipeline):
    cfg = PreprocessConfig(img_size=32, resize_size=40)
    for seed in range(6):  # crops and flips differ between seeds; the two pipelines draw them alike
        torch.manual_seed(seed)
        expected = float_pipeline(cfg)(photo)
        torch.manual_seed(seed)
        pixels = uint8_pipeline(cfg)(photo)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 32, 32)
        got = Normalizer(cfg.mean, cfg.std, CPU)(pixels[None])[0]
        assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_normalizer_can_hand_over_channels_last():
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), CPU, channels_last=True)(batch)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, (batch.float() / 255 - 0.5) / 0.25)


def _epochs(dataset, workers: int, seeds=(11, 12)) -> list[torch.Tensor]:
    sampler = SeededSampler(RandomSampler(dataset, generator=torch.Generator()))
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers, collate_fn=collate_with_bad,
                        persistent_workers=workers > 0)
    epochs = []
    for seed in seeds:
        sampler.set_seed(seed)
        sampler.sampler.generator.manual_seed(seed)
        epochs.append(torch.cat([images for images, *_ in loader]))
    return epochs


def test_augmentation_depends_on_the_epoch_seed_not_on_persistent_workers(tmp_path):
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    split = DatasetSplit(tmp_path, "folder", "train", ["a"], [Sample(str(tmp_path / f"{i}.png"), 0) for i in range(6)])
    dataset = ImageDataset(split, train_pixels(PreprocessConfig(img_size=32, resize_size=36)))
    in_main = _epochs(dataset, workers=0)
    with_workers = _epochs(dataset, workers=2)  # started once, in the first epoch: their own seeds never change
    assert all(torch.equal(a, b) for a, b in zip(in_main, with_workers))
    assert not torch.equal(in_main[0], in_main[1])  # a new epoch seed, new crops
    before = torch.get_rng_state()
    dataset[(0, 123)]
    assert torch.equal(torch.get_rng_state(), before)  # workers=0: the trainer's own RNG is left alone


def test_trainer_workers_persist_with_prefetch(tiny_dataset, tmp_path):
    trainer = Trainer(tiny_train_config(tiny_dataset, tmp_path / "run", workers=2))
    for loader in (trainer.train_loader, trainer.val_loader):
        assert loader.persistent_workers and loader.prefetch_factor == train_module.PREFETCH_FACTOR
        assert not loader.pin_memory  # CPU: nothing to pin for
    assert isinstance(trainer.train_loader.sampler, SeededSampler)
    assert trainer.precision == "off" and trainer.autocast_dtype is None and not trainer.scaler.is_enabled()


def test_fit_ends_its_persistent_workers(tiny_dataset, tmp_path):
    """Left to the garbage collector, each worker was joined with a 5 s time-out: 80 s lost after every fit
    with 8 workers on the H200, at whatever point the collector ran (inside the next method's fit, once)."""
    import multiprocessing

    trainer = Trainer(tiny_train_config(tiny_dataset, tmp_path / "run", workers=2, epochs=1))
    trainer.fit()
    assert trainer.train_loader._iterator is None and trainer.val_loader._iterator is None
    assert multiprocessing.active_children() == []


def test_precision_resolves_per_device_and_reads_old_checkpoints(monkeypatch):
    assert resolve_precision("auto", CPU) == "off"  # what fgcli always did on the CPU
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp16", CPU) == "fp16"
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(FgcliError, match="Tesla T4 has no bfloat16") as raised:
        resolve_precision("bf16", cuda)
    assert "--amp fp16" in raised.value.hint
    # before --amp took a precision it was a flag, on by default, fp16 on CUDA only
    assert recorded_precision({"amp": True}, cuda) == "fp16" and recorded_precision({"amp": True}, CPU) == "off"
    assert recorded_precision({}, CPU) == "off" and recorded_precision({"amp": "bf16"}, CPU) == "bf16"


def test_amp_option_rejects_an_unknown_precision():
    with pytest.raises(FgcliError, match="--amp fp32 is not a precision") as raised:
        TrainConfig(amp="fp32").validate()
    assert "auto, bf16, fp16, off" in raised.value.hint
    result = CliRunner().invoke(app, ["train", "--data", "nowhere", "--amp", "fp8"])  # refused before any data is read
    assert isinstance(result.exception, FgcliError) and result.exception.message == "--amp fp8 is not a precision"


def test_amp_is_recorded_and_kept_on_resume_unless_given(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_dataset), "--out", str(out), "--backbone", "resnet18",
                                      "--img-size", "32", "--resize-size", "36", "--epochs", "1", "--batch-size", "8",
                                      "--workers", "0", "--device", "cpu", "--amp", "bf16"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["amp"] == "bf16"
    assert load_checkpoint(out / "last.pt")["train_config"]["amp"] == "bf16"
    assert load_checkpoint(out / "last.pt")["scaler"] == {}  # bf16: no loss scaling

    notes = []
    hook = lambda event, payload: notes.append(payload["message"]) if event == "note" else None  # noqa: E731
    common = dict(backbone="resnet18", batch_size=8)
    train(tiny_train_config(tiny_dataset, out, epochs=2, resume=True, **common), hook)  # no --amp: the run's
    assert json.loads((out / "config.json").read_text())["amp"] == "bf16" and not notes
    train(tiny_train_config(tiny_dataset, out, epochs=3, resume=True, amp="off", **common), hook)
    assert load_checkpoint(out / "last.pt")["train_config"]["amp"] == "off"
    assert notes == [f"--resume: {out / 'last.pt'} trained with --amp bf16, continuing with --amp off "
                     "(not bit-identical to an uninterrupted run)"]


def test_a_run_started_before_amp_took_a_precision_resumes(tiny_dataset, tmp_path):
    """Such a run's config.json says amp: true; --resume refused it as a value of the wrong type."""
    out = tmp_path / "run"
    options = ["train", "--data", str(tiny_dataset), "--out", str(out), "--backbone", "resnet18", "--img-size", "32",
               "--resize-size", "36", "--batch-size", "8", "--workers", "0", "--device", "cpu"]
    assert CliRunner().invoke(app, [*options, "--epochs", "1"]).exit_code == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "amp": True}))
    result = CliRunner().invoke(app, [*options, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out / "last.pt")["train_config"]["amp"] == "off"  # the checkpoint's precision, on CPU


def test_auto_precision_on_cpu_is_recorded_as_off(tiny_checkpoint):
    assert json.loads((tiny_checkpoint.parent / "config.json").read_text())["amp"] == "off"
    assert load_checkpoint(tiny_checkpoint)["train_config"]["amp"] == "off"


def _nan_at_step(model, nan_step: int):
    """``model.loss`` with its second term NaN from training step ``nan_step`` on."""
    original, calls = model.loss, []

    def loss(outputs, labels):
        calls.append(1)
        terms = original(outputs, labels)
        bad = len(calls) >= nan_step
        return OrderedDict([("ce", terms["ce"]), ("extra", terms["ce"] * (float("nan") if bad else 0.0))])

    return loss


@pytest.mark.parametrize("amp, advice", [("off", "lower --lr"), ("fp16", "try --amp bf16")])
def test_divergence_stops_naming_the_step_the_terms_and_the_precision(tiny_dataset, tmp_path, amp, advice):
    trainer = Trainer(tiny_train_config(tiny_dataset, tmp_path / "run", batch_size=2, amp=amp))  # 12 steps
    trainer.model.loss = _nan_at_step(trainer.model, nan_step=3)
    with pytest.raises(FgcliError) as raised:
        trainer.fit()
    message = str(raised.value.message)
    assert message.startswith(f"training diverged at epoch 1, step 3 with --amp {amp}: loss is nan (ce=")
    assert message.endswith(", extra=nan)") and advice in raised.value.hint
    assert not (tmp_path / "run" / "last.pt").exists()  # the epoch never counted


#: where the loader reads CPU tensors in the main process (workers=0: crops, the epoch's sample seeds); not the
#: training step's read-backs
DATA_PIPELINE = (os.path.join("torchvision", ""), os.path.join("torch", "utils", "data", ""),
                 os.path.join("fgcli", "data", ""))


def test_the_loop_reads_the_device_back_every_sync_every_steps_not_every_step(tiny_dataset, tmp_path, monkeypatch):
    trainer = Trainer(tiny_train_config(tiny_dataset, tmp_path / "run", batch_size=2, epochs=1))  # 12 steps
    monkeypatch.setattr(train_module, "SYNC_EVERY", 5)
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if not any(part in caller for part in DATA_PIPELINE):
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = []
    trainer.hook = lambda event, payload: steps.append(payload) if event == "step" else None
    stats = trainer.train_one_epoch(0)
    monkeypatch.undo()
    assert len(steps) == 12 and [i for i, p in enumerate(steps, 1) if p] == [1, 5, 10, 12]
    assert reads == ["tolist"] * 5  # steps 1, 5, 10, 12 and the epoch's totals
    assert 0.0 <= stats["train_acc"] <= 1.0 and np.isfinite(stats["train_loss"]) and stats["train_ce"] == stats["train_loss"]


def test_compile_option_compiles_the_training_forward_only(tiny_dataset, tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module):  # torch.compile on 2 CPU cores takes minutes; what it wraps is the point here
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = Trainer(tiny_train_config(tiny_dataset, tmp_path / "run", compile=True))
    assert compiled == [trainer.ddp_model] and trainer.step_model is trainer.ddp_model
    Trainer(tiny_train_config(tiny_dataset, tmp_path / "plain"))
    assert len(compiled) == 1  # off by default
