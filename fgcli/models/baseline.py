"""Plain baseline: a ResNet backbone, global average pooling and a linear classifier."""

from __future__ import annotations

import torch
from torch import nn

from fgcli.models.backbones import build_backbone
from fgcli.models.base import FGVCModel
from fgcli.models.registry import register_model


class Baseline(FGVCModel):
    def __init__(self, num_classes: int, backbone: str = "resnet50", pretrained: bool = False, weights: str | None = None):
        super().__init__(num_classes)
        self.backbone = build_backbone(backbone, pretrained=pretrained, weights=weights)
        self.classifier = nn.Linear(self.backbone.channels["layer4"], num_classes)

    def forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)["layer4"]
        return self.classifier(features.mean(dim=(2, 3)))


@register_model("baseline")
def baseline(num_classes: int, **kwargs) -> Baseline:
    return Baseline(num_classes, **kwargs)
