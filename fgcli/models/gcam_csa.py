"""GCAM-CSA: a channel-spatial attention module after layer4, its channel weights supervised by Grad-CAM.

Paper: Shuai Xu, Dongliang Chang, Jiyang Xie, Zhanyu Ma, "Grad-CAM guided channel-spatial attention module for
fine-grained visual classification", arXiv 2101.09666 (2021; IEEE MLSP 2021).
Reference code: github PRIS-CV/CAM-Guided-Attention (``cars_sp_CAM.py``, ResNet-50 at 448 px).

What the reference code fixes (kept here):

* Module on the layer4 map X (``Spatial_SEModule``, reduction 16): ``s = softmax_C(W2 relu(W1 GAP(X)))`` (1x1 convs
  with bias), ``m = sigmoid(sum_c s_c X_c)`` (B, 1, h, w), ``Y = X * m``. The channel weights only build the spatial
  mask. X is post-ReLU, so m lies in [0.5, 1).
* Head: global max pool of Y -> BN1d -> Linear(-> 512) -> BN1d -> ELU -> Linear(-> K).
* Grad-CAM supervision, training only: ``score = sum_b max_k logits`` (the predicted class, not the label),
  ``α = softmax_C(mean_HW(∂score/∂Y))`` detached, ``L_kl = KL(s ‖ α) = sum_{b,c} s (log s - log α)``
  (``F.kl_div(α.log(), s, reduction="sum")``: summed over batch and channels, weight 1).
* ``L = CE + L_kl``.

Choices [inf]:

* α comes from ``torch.autograd.grad(score, Y, retain_graph=True)`` inside ``loss()``: no hooks, ``.grad`` untouched,
  no ``create_graph`` (the code detaches α with ``.data``). ``log α`` is a ``log_softmax`` (same value, no log(0)).
* The code calls ``optimizer.zero_grad()`` before ``score.backward()`` and not again, so its update also descends
  ``sum_b max_k logits``. ``max_logit_quirk=True`` reproduces that as an extra loss term ``max_logit_quirk`` (same
  gradient; it is negative whenever the top logits are). Off by default.
* ``MaxPool2d(14)`` (448 px only) becomes a global max over the map, so any input size divisible by 32 works.
* Precision (issue 22): s is a float32 softmax and the KL is computed from float32 log-softmax logits (same value
  as the code's ``kl_div``): under float16 autocast most of a 2048-way s rounded to 0, where the KL's gradient is
  infinite (NaN gradients in ``attention.squeeze`` / ``attention.excite``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fgcli.errors import FgcliError
from fgcli.models.backbones import build_backbone
from fgcli.models.base import FGVCModel
from fgcli.models.registry import register_model


def bn_elu_head(in_features: int, hidden: int, num_classes: int) -> nn.Sequential:
    """The PRIS-CV classifier (GCAM-CSA and TDSA code): BN1d -> Linear -> BN1d -> ELU -> Linear; the BNs fold on export.

    Departure: the first BN has no affine parameters and the first Linear no bias. In the reference both
    shifts are cancelled by the second BN (their gradient is exactly zero) and the first BN's scale is
    absorbed by the Linear, so they never learn anything; dropping them keeps the same function class.
    """
    return nn.Sequential(
        nn.BatchNorm1d(in_features, affine=False),
        nn.Linear(in_features, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ELU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


class ChannelSpatialAttention(nn.Module):
    """SE-style channel distribution s (softmax over channels) that builds a sigmoid spatial mask m; Y = X * m."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.squeeze = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.excite = nn.Conv2d(channels // reduction, channels, kernel_size=1)

    def channel_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``W2 relu(W1 GAP(X))``: ``(B, C, 1, 1)``, the logits of the channel distribution s."""
        return self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3), keepdim=True))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Y, the channel logits ``(B, C)``, m as ``(B, 1, h, w)``).

        Precision: s is a float32 softmax (under autocast too); the weighted channel sum runs in X's dtype, where
        it stays below max |X| because s sums to 1. The loss reads the logits, not s: float16 rounds most of a
        2048-way s to 0, and the KL's gradient at s = 0 is infinite.
        """
        logits = self.channel_logits(x)
        weights = F.softmax(logits.float(), dim=1).to(x.dtype)
        mask = torch.sigmoid((x * weights).sum(dim=1, keepdim=True))
        return x * mask, logits.flatten(1), mask


def gradcam_log_channel_weights(score: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """log α, ``(B, C)``: log-softmax over channels of the spatially averaged ∂score/∂features.

    Uses ``autograd.grad`` with ``retain_graph=True``, so the graph stays usable for the loss and no ``.grad`` is
    written; the result carries no graph (α is a fixed target, as in the reference's ``.data``). Float32.
    """
    if not score.requires_grad:
        raise FgcliError(
            "the GCAM-CSA loss needs the autograd graph of the forward pass (Grad-CAM)",
            hint="compute it on forward_train outputs with gradients enabled (not under torch.no_grad)",
        )
    (grad,) = torch.autograd.grad(score, features, retain_graph=True)
    return F.log_softmax(grad.float().mean(dim=(2, 3)), dim=1)


def gradcam_kl(channel_logits: torch.Tensor, log_gradcam_weights: torch.Tensor) -> torch.Tensor:
    """KL(s ‖ α) summed over batch and channels, s = softmax(channel_logits); the gradient flows into s only.

    Computed from log s (a float32 log-softmax), so a channel whose s underflows to 0 adds 0 with a finite
    gradient: the same value as ``F.kl_div(log α, s, reduction="sum")``.
    """
    log_weights = F.log_softmax(channel_logits.float(), dim=1)
    return F.kl_div(log_gradcam_weights, log_weights, reduction="sum", log_target=True)


class GCAMCSA(FGVCModel):
    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        reduction: int = 16,
        hidden: int = 512,
        kl_weight: float = 1.0,
        max_logit_quirk: bool = False,
    ):
        super().__init__(num_classes)
        self.kl_weight = kl_weight
        self.max_logit_quirk = max_logit_quirk
        self.backbone = build_backbone(backbone, pretrained=pretrained, weights=weights)
        channels = self.backbone.channels["layer4"]
        self.attention = ChannelSpatialAttention(channels, reduction)
        self.classifier = bn_elu_head(channels, hidden, num_classes)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        attended, channel_logits, _ = self.attention(self.backbone(x)["layer4"])
        logits = self.classifier(attended.amax(dim=(2, 3)))
        return {"logits": logits, "attended": attended, "channel_logits": channel_logits}

    def forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)["logits"]

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        logits = outputs["logits"]
        predicted_score = logits.max(dim=1).values.sum()
        log_alpha = gradcam_log_channel_weights(predicted_score, outputs["attended"])
        terms = OrderedDict(
            ce=F.cross_entropy(logits, targets),
            gradcam_kl=self.kl_weight * gradcam_kl(outputs["channel_logits"], log_alpha),
        )
        if self.max_logit_quirk:
            terms["max_logit_quirk"] = predicted_score
        return terms

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, _, mask = self.attention(self.backbone(x)["layer4"])
        return {"spatial_mask": mask[:, 0]}


@register_model("gcam-csa")
def gcam_csa(num_classes: int, backbone: str = "resnet50", pretrained: bool = False, weights: str | None = None, **kwargs) -> GCAMCSA:
    return GCAMCSA(num_classes, backbone=backbone, pretrained=pretrained, weights=weights, **kwargs)
