"""Training loop: checkpoints, metrics, exact resume, bad images, DDP on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fgcli.training.checkpoint import load_checkpoint, model_from_checkpoint
from fgcli.training.train import train
from fgcli.errors import DataError
from conftest import tiny_train_config, write_tiny_folder_dataset


def test_checkpoint_holds_everything_later_commands_need(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt["method"] == "baseline" and ckpt["backbone"] == "resnet18"
    assert ckpt["class_names"] == ["alpha", "beta", "gamma"]
    assert ckpt["preprocess"] == {"img_size": 32, "resize_size": 36,
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert ckpt["fgcli_version"]
    model = model_from_checkpoint(ckpt)
    assert not model.training
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_metrics_jsonl_has_one_line_per_epoch_with_every_loss_term(tiny_checkpoint):
    lines = (tiny_checkpoint.parent / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"train_loss", "train_ce", "train_acc", "val_top1", "val_top5", "lr", "images_per_s"} <= set(r)
        assert 0.0 <= r["val_top1"] <= r["val_top5"] <= 1.0


def test_resume_after_kill_matches_uninterrupted_run(tiny_dataset, tmp_path):
    full = tiny_train_config(tiny_dataset, tmp_path / "full", epochs=3)
    train(full)
    # "killed after epoch 1": a 3-epoch run whose process ends after its first epoch
    partial = tiny_train_config(tiny_dataset, tmp_path / "resumed", epochs=3)
    _train_epochs(partial, stop_after=1)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    train(tiny_train_config(tiny_dataset, tmp_path / "resumed", epochs=3, resume=True))
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def _train_epochs(cfg, stop_after: int):
    """Run ``cfg`` but raise SystemExit (like a kill) once ``stop_after`` epochs are saved."""
    from fgcli.training.train import Trainer

    trainer = Trainer(cfg)
    original = trainer._append_metrics

    def append_then_maybe_die(record):
        original(record)
        if record["epoch"] == stop_after:
            trainer._die_after_save = True

    trainer._append_metrics = append_then_maybe_die
    original_barrier = __import__("fgcli.training.distributed", fromlist=["barrier"]).barrier

    def barrier_or_die(info):
        if getattr(trainer, "_die_after_save", False):
            raise SystemExit("killed")
        original_barrier(info)

    import fgcli.training.train as train_module

    train_module.dist_utils.barrier = barrier_or_die
    try:
        with pytest.raises(SystemExit):
            trainer.fit()
    finally:
        train_module.dist_utils.barrier = original_barrier


def test_bad_image_stops_training_naming_the_file_unless_skip_bad(tmp_path):
    data = write_tiny_folder_dataset(tmp_path / "data", {"train": 6, "test": 2})
    bad = data / "train" / "beta" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError) as info:
        train(tiny_train_config(data, tmp_path / "run", epochs=1))
    assert "broken.jpg" in str(info.value) and "--skip-bad" in str(info.value)
    result = train(tiny_train_config(data, tmp_path / "run2", epochs=1, skip_bad=True))
    assert result.bad_images == [str(bad)]
    assert (tmp_path / "run2" / "best.pt").exists()


def test_resume_without_last_checkpoint_says_what_to_do(tiny_dataset, tmp_path):
    from fgcli.errors import FgcliError

    with pytest.raises(FgcliError, match="drop --resume"):
        train(tiny_train_config(tiny_dataset, tmp_path / "none", resume=True))


@pytest.mark.slow
def test_ddp_two_processes_on_gloo(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        "-m", "fgcli", "train", "--method", "baseline", "--data", str(tiny_dataset), "--out", str(out),
        "--backbone", "resnet18", "--img-size", "32", "--resize-size", "36", "--epochs", "1",
        "--batch-size", "4", "--workers", "0", "--device", "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # 24 training images split over 2 ranks of 12, batch 4: every image is seen once per epoch
    assert record["images_per_s"] > 0
    assert proc.stdout.count("epoch 1:") == 1  # only rank 0 reports


def test_ctrl_c_saves_interrupted_checkpoint_and_keeps_last_for_resume(tiny_dataset, tmp_path):
    steps = []

    def interrupt_in_second_epoch(event, payload):
        if event == "step":
            steps.append(payload)
            if len(steps) == 4:  # 3 steps per epoch: this is epoch 2
                raise KeyboardInterrupt

    result = train(tiny_train_config(tiny_dataset, tmp_path / "run", epochs=3), hook=interrupt_in_second_epoch)
    assert result.interrupted
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    interrupted = load_checkpoint(tmp_path / "run" / "interrupted.pt")
    assert interrupted["metrics"] == {"interrupted_in_epoch": 2}
    assert {"loss", "acc", "terms", "images_per_s", "lr"} <= set(steps[0])


def test_weights_file_loads_into_the_backbone_and_offline_pretrained_says_how(tmp_path, monkeypatch):
    import torchvision

    from fgcli.errors import FgcliError
    from fgcli.models import create_model

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("baseline", 3, backbone="resnet18", weights=str(path))
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(FgcliError, match="not a resnet50 state dict"):
        create_model("baseline", 3, backbone="resnet50", weights=str(path))

    def offline(self, progress=True, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(FgcliError) as info:
        create_model("baseline", 3, backbone="resnet18", pretrained=True)
    assert "--weights FILE" in str(info.value) and "download.pytorch.org" in str(info.value)


def test_weights_from_an_fgcli_checkpoint_initialise_another_methods_backbone(tiny_checkpoint):
    """Fine-tune a method from a baseline run: ``--weights RUN/best.pt`` takes that run's backbone."""
    from fgcli.training.checkpoint import load_checkpoint
    from fgcli.errors import FgcliError
    from fgcli.models import create_model

    trained = load_checkpoint(tiny_checkpoint)["model"]
    model = create_model("ssanet", 3, backbone="resnet18", weights=str(tiny_checkpoint))
    backbone = model.backbone.state_dict()
    assert backbone.keys() == {k[len("backbone."):] for k in trained if k.startswith("backbone.")}
    assert all(torch.equal(value, trained[f"backbone.{key}"]) for key, value in backbone.items())
    with pytest.raises(FgcliError, match="holds a resnet18 backbone, not a resnet50") as info:
        create_model("ssanet", 3, backbone="resnet50", weights=str(tiny_checkpoint))
    assert "--backbone resnet18" in info.value.hint
