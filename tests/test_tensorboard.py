"""fgcli train --tensorboard: event files in the run folder, read back with TensorBoard's own reader."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_train_config
from fgcli.training.train import train

pytest.importorskip("tensorboard")


def test_event_file_holds_every_scalar_and_the_attention_maps(tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_train_config(tiny_dataset, tmp_path, method="gcam-csa", img_size=64, resize_size=72, epochs=2,
                            tensorboard=True, tensorboard_every=1)
    train(cfg)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    terms = {k[len("train_"):] for k in records[0] if k.startswith("train_") and k not in ("train_loss", "train_acc")}
    assert len(terms) > 1  # gcam-csa logs more than one loss term
    assert {f"loss/{t}" for t in terms} | {"loss/total", "accuracy/train", "accuracy/val_top1", "accuracy/val_top5",
                                         "speed/images_per_s", "lr/backbone", "lr/new_layers"} <= scalars
    top1 = events.Scalars("accuracy/val_top1")
    assert [e.step for e in top1] == [1, 2]
    assert [e.value for e in top1] == pytest.approx([r["val_top1"] for r in records])
    images = set(events.Tags()["images"])
    assert {"attention/input", "attention/spatial_mask"} <= images, images
    assert [e.step for e in events.Images("attention/spatial_mask")] == [1, 2]


def test_without_the_flag_no_event_file(tiny_checkpoint):
    assert not list(tiny_checkpoint.parent.glob("events.out.tfevents.*"))
