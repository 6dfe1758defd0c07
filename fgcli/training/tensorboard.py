"""TensorBoard event files for a training run (``fgcli train --tensorboard``), beside ``metrics.jsonl``.

Per epoch: every loss term (``loss/<term>``, ``loss/total``), each optimizer group's learning rate
(``lr/<group>``), ``accuracy/train``, ``accuracy/val_top1`` / ``val_top5`` and ``speed/images_per_s``.
Every ``attention_every`` epochs (and after the last): the method's own attention maps
(``model.attention_maps``) on a few fixed validation images, ``attention/<map>``, beside those images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fgcli.utils import optional_import

#: validation images whose attention maps are drawn
PREVIEW_IMAGES = 4


class TensorBoardLogger:
    def __init__(self, run_dir: str | Path, mean, std, attention_every: int = 5):
        tensorboard = optional_import("torch.utils.tensorboard", "tensorboard", "fgcli train --tensorboard")
        self.writer = tensorboard.SummaryWriter(log_dir=str(run_dir))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.attention_every = attention_every

    def log_epoch(self, record: dict[str, Any], optimizer, epoch: int) -> None:
        """The epoch's scalars from its metrics.jsonl record; ``epoch`` counts from 1."""
        for key, value in record.items():
            if key == "train_loss":
                self.writer.add_scalar("loss/total", value, epoch)
            elif key == "train_acc":
                self.writer.add_scalar("accuracy/train", value, epoch)
            elif key.startswith("train_"):
                self.writer.add_scalar(f"loss/{key[len('train_'):]}", value, epoch)
            elif key.startswith("val_"):
                self.writer.add_scalar(f"accuracy/{key}", value, epoch)
            elif key == "images_per_s":
                self.writer.add_scalar("speed/images_per_s", value, epoch)
        for index, group in enumerate(optimizer.param_groups):
            self.writer.add_scalar(f"lr/{group.get('name', index)}", group["lr"], epoch)
        self.writer.flush()

    def wants_attention(self, epoch: int, last_epoch: int) -> bool:
        return epoch % self.attention_every == 0 or epoch == last_epoch

    @torch.no_grad()
    def log_attention(self, model, images: torch.Tensor, epoch: int) -> None:
        """The input images and each attention map (min-max scaled per image, at input size) as image grids."""
        images = images[:PREVIEW_IMAGES]
        was_training = model.training
        model.eval()
        try:
            maps = model.attention_maps(images)
        finally:
            model.train(was_training)
        if not maps:
            return
        pixels = (images.cpu().float() * self.std + self.mean).clamp(0, 1)
        self.writer.add_images("attention/input", pixels, epoch)
        for name, value in maps.items():
            value = F.interpolate(value.float().cpu()[:, None], size=images.shape[-2:], mode="bilinear",
                                  align_corners=False)
            low = value.amin(dim=(2, 3), keepdim=True)
            high = value.amax(dim=(2, 3), keepdim=True)
            self.writer.add_images(f"attention/{name}", (value - low) / (high - low).clamp_min(1e-12), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
