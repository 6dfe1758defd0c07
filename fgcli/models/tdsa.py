"""TDSA-Loss: multi-stage class-aligned channels (MC-Loss) plus top-down spatial attention, on a ResNet.

Paper: Dongliang Chang, Yixiao Zheng, Zhanyu Ma, Ruoyi Du, Kongming Liang, "Fine-Grained Visual Classification via
Simultaneously Learning of Multi-regional Multi-grained Features", arXiv 2102.00367 (2021).
Reference code: github dongliangchang/Top-Down-Spatial-Attention-Loss (``Birds_TDSA_Loss.py``, ``my_pooling.py``).

What the reference code fixes (kept here):

* Every class owns ``mid_per_class = 9`` channels at the mid stage and ``high_per_class = 3`` at the high stage,
  grouped contiguously per class, so channel counts scale with ``num_classes`` (1800 / 600 for CUB).
* Top-down attention: ``S = sigmoid(upsample_nearest(F_h))``, each high channel repeated for 9 / 3 = 3 mid channels
  (mid channel k is gated by high channel k // 3), ``F_g = F_m * S``. No detach: MC-Loss on ``F_g`` trains the high stage.
* MC-Loss per stage (``supervisor`` in the code), ξ channels per class:
  ``L_dis = CE(GAP(max over the class's channels of (F * random mask)))``, the mask keeping 2 of 3 / 5 of 9
  channels of every class, one new draw per call, shared by the whole batch (as in the code);
  ``L_div = 1 - mean_{b,k}(sum_HW max over the class's channels of softmax_HW(F)) / ξ``.
* ``L = CE + 1.5 L_dis(F_g, 9) + 15 L_div(F_g, 9) + 1.5 L_dis(F_h, 3) + 15 L_div(F_h, 3)`` (weights from the code's
  argparse defaults; the help text says 10 for the diversity weights, the value is 15).
* Test-time head: max pool on ``F_h`` -> BN1d -> Linear(-> 512) -> BN1d -> ELU -> Linear(-> K). The mid stage, the
  top-down masks and both MC-Loss terms are training-only.
* Features are taken after BN + ReLU (the code's class-aligned VGG convs are Conv-BN-ReLU), so ``S`` lies in [0.5, 1).

Inferred for ResNets [inf] (the code trains a widened VGG16-BN from scratch; the paper's ResNet settings were not
available):

* Backbone ``resnet50``. The class-aligned channels come from new 1x1 Conv-BN-ReLU side branches: layer3 -> K·9
  (mid, stride 16) and layer4 -> K·3 (high, stride 32); the stride ratio 2 matches conv4_3 / conv5_3 in the VGG.
  The mid branch does not feed layer4 (the VGG's conv4_3 does feed conv5), so the pretrained trunk stays intact.
* The upsampling goes to the mid map's size (equal to x2 for inputs divisible by 32).
* The head pools ``F_h`` to a ``head_grid`` x ``head_grid`` grid and flattens. The code flattens a 7x7 map (29400-d
  for CUB at 224 px), which ties the FC to one input size; ``head_grid = 1`` (global max pool, K·3 features) keeps
  any input size working and is the default. ``head_grid = 7`` at 448 px reproduces the code's 2x2 max pool + flatten.
* Channel masks keep ceil(ξ / 2) channels per class (the code lists only ξ = 3, 6, 9: 2, 3, 5) and are drawn with
  torch's RNG instead of Python's ``random``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fgcli.errors import FgcliError
from fgcli.models.backbones import build_backbone
from fgcli.models.base import FGVCModel
from fgcli.models.gcam_csa import bn_elu_head
from fgcli.models.registry import register_model


def class_group_max(features: torch.Tensor, per_class: int) -> torch.Tensor:
    """Max over each class's contiguous group of channels: ``(B, K·ξ, H, W) -> (B, K, H, W)``."""
    b, c, h, w = features.shape
    return features.view(b, c // per_class, per_class, h, w).amax(dim=2)


def random_channel_mask(num_classes: int, per_class: int, device: torch.device | None = None) -> torch.Tensor:
    """``(1, K·ξ, 1, 1)`` 0/1 mask keeping a random ceil(ξ/2) of every class's ξ channels (torch RNG)."""
    keep = (per_class + 1) // 2
    chosen = torch.rand(num_classes, per_class, device=device).topk(keep, dim=1).indices
    mask = torch.zeros(num_classes, per_class, device=device).scatter_(1, chosen, 1.0)
    return mask.view(1, num_classes * per_class, 1, 1)


def mc_discriminality(features: torch.Tensor, targets: torch.Tensor, per_class: int, mask: torch.Tensor) -> torch.Tensor:
    """MC-Loss L_dis: CE on the spatial mean of the class-wise channel max of the masked features."""
    logits = class_group_max(features * mask, per_class).mean(dim=(2, 3))
    return F.cross_entropy(logits, targets)


def mc_diversity(features: torch.Tensor, per_class: int) -> torch.Tensor:
    """MC-Loss L_div = 1 - mean(D) / ξ, D = spatial sum of the class-wise max of per-channel spatial softmaxes.

    D lies in [1, ξ]: 1 when a class's channels coincide, ξ when their spatial peaks are disjoint. The spatial
    softmax runs in float32 under autocast (a float16 one rounds small weights to 0 and D's sum is coarser).
    """
    b, c, h, w = features.shape
    spatial = F.softmax(features.reshape(b, c, h * w).float(), dim=2).view(b, c, h, w)
    coverage = class_group_max(spatial, per_class).sum(dim=(2, 3))
    return 1.0 - coverage.mean() / per_class


def top_down_gate(mid: torch.Tensor, high: torch.Tensor, mid_per_high: int) -> torch.Tensor:
    """``F_m * S``: S = sigmoid of the upsampled high map, each high channel gating ``mid_per_high`` mid channels."""
    attention = torch.sigmoid(F.interpolate(high, size=mid.shape[-2:], mode="nearest"))
    return mid * attention.repeat_interleave(mid_per_high, dim=1)


def class_aligned(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 Conv-BN-ReLU mapping a backbone stage to K·ξ class-aligned channels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TDSA(FGVCModel):
    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        mid_per_class: int = 9,
        high_per_class: int = 3,
        head_grid: int = 1,
        hidden: int = 512,
        dis_mid_weight: float = 1.5,
        div_mid_weight: float = 15.0,
        dis_high_weight: float = 1.5,
        div_high_weight: float = 15.0,
    ):
        super().__init__(num_classes)
        if high_per_class < 1 or mid_per_class % high_per_class:
            raise FgcliError(
                f"TDSA needs mid_per_class ({mid_per_class}) to be a multiple of high_per_class ({high_per_class})",
                hint="each high-level channel gates the same number of mid-level channels (paper: 9 and 3)",
            )
        self.mid_per_class, self.high_per_class = mid_per_class, high_per_class
        self.head_grid = head_grid
        self.term_weights = {
            "mc_dis_mid": dis_mid_weight, "mc_div_mid": div_mid_weight,
            "mc_dis_high": dis_high_weight, "mc_div_high": div_high_weight,
        }
        self.backbone = build_backbone(backbone, pretrained=pretrained, weights=weights)
        channels = self.backbone.channels
        self.mid_aligned = class_aligned(channels["layer3"], num_classes * mid_per_class)
        self.high_aligned = class_aligned(channels["layer4"], num_classes * high_per_class)
        head_features = num_classes * high_per_class * head_grid * head_grid
        self.classifier = bn_elu_head(head_features, hidden, num_classes)

    def _classify(self, high: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_max_pool2d(high, self.head_grid).flatten(1))

    def _aligned_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(top-down gated mid map F_g, high map F_h)."""
        maps = self.backbone(x)
        high = self.high_aligned(maps["layer4"])
        gated_mid = top_down_gate(self.mid_aligned(maps["layer3"]), high, self.mid_per_class // self.high_per_class)
        return gated_mid, high

    def forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        return self._classify(self.high_aligned(self.backbone(x)["layer4"]))

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        gated_mid, high = self._aligned_maps(x)
        return {"logits": self._classify(high), "mid_gated": gated_mid, "high": high}

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        terms = OrderedDict(ce=F.cross_entropy(outputs["logits"], targets))
        for stage, features, per_class in (
            ("mid", outputs["mid_gated"], self.mid_per_class),
            ("high", outputs["high"], self.high_per_class),
        ):
            mask = random_channel_mask(self.num_classes, per_class, features.device)
            discriminality = mc_discriminality(features, targets, per_class, mask)
            terms[f"mc_dis_{stage}"] = self.term_weights[f"mc_dis_{stage}"] * discriminality
            terms[f"mc_div_{stage}"] = self.term_weights[f"mc_div_{stage}"] * mc_diversity(features, per_class)
        return terms

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """For each image's predicted class: its top-down masks (one per high channel) and its gated mid regions."""
        gated_mid, high = self._aligned_maps(x)
        predicted = self._classify(high).argmax(dim=1)
        batch = torch.arange(x.shape[0], device=x.device)
        mid_size = gated_mid.shape[-2:]
        high_of_class = high.view(x.shape[0], self.num_classes, self.high_per_class, *high.shape[-2:])[batch, predicted]
        masks = torch.sigmoid(F.interpolate(high_of_class, size=mid_size, mode="nearest"))
        result = {f"top_down_{j}": masks[:, j] for j in range(self.high_per_class)}
        mid_of_class = gated_mid.view(x.shape[0], self.num_classes, self.mid_per_class, *mid_size)[batch, predicted]
        result["mid_regions"] = mid_of_class.amax(dim=1)
        return result


@register_model("tdsa")
def tdsa(num_classes: int, backbone: str = "resnet50", pretrained: bool = False, weights: str | None = None, **kwargs) -> TDSA:
    return TDSA(num_classes, backbone=backbone, pretrained=pretrained, weights=weights, **kwargs)
