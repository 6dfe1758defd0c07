"""SSANet: a spatial self-attention (SSA) module plus self-attention distillation (Self-AD).

Paper: Adu Asare Baffour, Zhen Qin, Yong Wang, Zhiguang Qin, Kim-Kwang Raymond Choo, "Spatial self-attention
network with self-attention distillation for fine-grained image recognition", Journal of Visual Communication and
Image Representation 81 (2021) 103368 (no arXiv version, no public code).

Only the abstract was available. It fixes three things: an end-to-end single-step network, an SSA module that
encodes context into local features, and a Self-AD that distils from the SSA output to a "primary feature map",
with the classification losses of the two modules summed. Everything else is reconstructed [inf]
(see shared/methods/ssanet.md):

* [inf] SSA = DANet position attention (Fu et al., CVPR 2019) on the layer4 map P:
  ``Q, K = 1x1 convs to C/reduction`` (reduction 8), ``V = 1x1 conv to C``,
  ``A = softmax_over_keys(Q^T K)`` (no 1/sqrt(d) scaling, as in DANet), ``S = P + gamma * V A^T``.
* [inf] gamma starts at ``gamma_init = 0.1``, not DANet's 0. With gamma = 0 the Q/K/V convs would get no
  gradient at all and, with the default primary map, Self-AD would be exactly 0 (S == P). 0.1 keeps the pretrained
  features nearly untouched at the start while every part of SSA trains from step one.
* [inf] Self-AD = SAD (Hou et al., ICCV 2019): ``att(F) = softmax_over_positions(mean_C(F^2))``, the teacher's
  energy bilinearly resized to the student's grid before the softmax; ``L_AD = ||att(primary) - sg(att(S))||_2^2``
  summed over positions, averaged over the batch; weight ``distill_weight = 0.1`` (SAD's default). The channel
  *mean* replaces SAD's channel sum, which saturates the softmax with 2048 channels.
* [inf] The primary feature map is the backbone's layer4 output (``primary_stage="layer4"``); ``"layer3"`` etc.
  distil deeper -> shallower as in SAD. The primary head classifies GAP(primary map).
* [inf] Two heads, ``FC(GAP(S))`` and ``FC(GAP(primary))``; loss = ``ce_ssa + ce_primary + self_ad`` with weights
  1, 1, 0.1. At test time the two heads' logits are averaged (``test_heads="mean"``, the abstract's "both
  inter-class and intra-class features"); ``test_heads="ssa"`` keeps only the SSA head and drops the primary head
  from the eval graph.

Precision (issue 22): Q^T K and SAD's squares are formed from operands divided by their per-sample peak, the
peaks folded back into max-shifted logits, and both softmaxes run in float32 under autocast
(fgcli.models.numerics); in FP32 that is the same arithmetic up to rounding. Layer4 maps reach a few hundred when
trained, so the plain formulas overflowed float16 (NaN from epoch 2 under CUDA fp16 autocast at 448 px).

Training-only: the Self-AD maps and loss (and the primary head when ``test_heads="ssa"``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fgcli.errors import FgcliError
from fgcli.models.backbones import STAGES, build_backbone
from fgcli.models.base import FGVCModel
from fgcli.models.numerics import query_key_softmax, scaled_softmax, squared_channel_mean
from fgcli.models.registry import register_model

TEST_HEADS = ("mean", "ssa")


# Query-key attention between two feature maps, shared with CLAN's cross-layer context attention.

def query_key_attention(query: torch.Tensor, key: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``softmax_over_keys(scale * Q^T K)`` for maps ``(B, d, Hq, Wq)`` and ``(B, d, Hk, Wk)`` -> ``(B, HqWq, HkWk)``.

    Plain bmm + softmax with static spatial sizes, so it exports to ONNX / TensorRT with a dynamic batch.
    Precision (fgcli.models.numerics): the bmm runs in the autocast dtype on Q and K divided by their per-sample
    peaks, the peaks and ``scale`` are folded back into the max-shifted energy, and the softmax runs in float32:
    Q^T K itself (entries of a few hundred over 64-512 channels) overflows float16, also in the FP16 ONNX.
    """
    return query_key_softmax(query.flatten(2), key.flatten(2), scale)


def attend(values: torch.Tensor, attention: torch.Tensor, query_map: torch.Tensor) -> torch.Tensor:
    """Each query position's attention-weighted sum of ``values``, laid out on ``query_map``'s grid."""
    context = torch.bmm(values.flatten(2), attention.transpose(1, 2))
    return context.reshape(context.shape[0], context.shape[1], query_map.shape[2], query_map.shape[3])


def attention_received(attention: torch.Tensor, key_map: torch.Tensor) -> torch.Tensor:
    """How much attention each key position gets, averaged over queries: ``(B, Hk, Wk)`` for visualisation."""
    return attention.mean(dim=1).reshape(attention.shape[0], key_map.shape[2], key_map.shape[3])


def distillation_attention(features: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
    """SAD's attention map ``(B, H*W)``: channel-mean squared activation, resized to ``size``, softmax over positions.

    Precision: the square is taken of the features divided by their per-sample peak (271 squared overflows
    float16, also in the FP16 ONNX); the peak is folded back into the max-shifted energy, and the softmax runs in
    float32. Bilinear resizing is linear, so resizing the normalised energy is the same.
    """
    energy, peak = squared_channel_mean(features)
    if size is not None and tuple(energy.shape[-2:]) != tuple(size):
        energy = F.interpolate(energy, size=tuple(size), mode="bilinear", align_corners=False)
    peak = peak.flatten(1)
    return scaled_softmax(energy.flatten(1), (peak, peak), dim=1)


class SpatialSelfAttention(nn.Module):
    """DANet position attention: every position gathers the values of all positions, added back scaled by gamma."""

    def __init__(self, channels: int, reduction: int = 8, gamma_init: float = 0.1):
        super().__init__()
        inner = max(channels // reduction, 1)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, N)``, each row a distribution over the N = H*W key positions."""
        return query_key_attention(self.query(x), self.key(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * attend(self.value(x), self.attention(x), x)


class SSANet(FGVCModel):
    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        primary_stage: str = "layer4",
        reduction: int = 8,
        gamma_init: float = 0.1,
        ssa_weight: float = 1.0,
        primary_weight: float = 1.0,
        distill_weight: float = 0.1,
        test_heads: str = "mean",
    ):
        super().__init__(num_classes)
        if primary_stage not in STAGES:
            raise FgcliError(f"unknown SSANet primary_stage '{primary_stage}'", hint=f"choose one of: {', '.join(STAGES)}")
        if test_heads not in TEST_HEADS:
            raise FgcliError(f"unknown SSANet test_heads '{test_heads}'", hint=f"choose one of: {', '.join(TEST_HEADS)}")
        self.primary_stage = primary_stage
        self.test_heads = test_heads
        self.ssa_weight, self.primary_weight, self.distill_weight = ssa_weight, primary_weight, distill_weight
        self.backbone = build_backbone(backbone, pretrained=pretrained, weights=weights)
        top_channels = self.backbone.channels["layer4"]
        self.ssa = SpatialSelfAttention(top_channels, reduction, gamma_init)
        self.ssa_classifier = nn.Linear(top_channels, num_classes)
        self.primary_classifier = nn.Linear(self.backbone.channels[primary_stage], num_classes)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(primary map, layer4 map, SSA output S)."""
        maps = self.backbone(x)
        return maps[self.primary_stage], maps["layer4"], self.ssa(maps["layer4"])

    def _heads(self, primary: torch.Tensor, refined: torch.Tensor, with_primary: bool) -> dict[str, torch.Tensor]:
        """Head logits and the test-time logits; the primary head runs only when asked or needed at test time."""
        heads = {"logits_ssa": self.ssa_classifier(refined.mean(dim=(2, 3)))}
        if with_primary or self.test_heads == "mean":
            heads["logits_primary"] = self.primary_classifier(primary.mean(dim=(2, 3)))
        if self.test_heads == "ssa":
            heads["logits"] = heads["logits_ssa"]
        else:
            heads["logits"] = (heads["logits_ssa"] + heads["logits_primary"]) / 2
        return heads

    def forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        primary, _, refined = self._features(x)
        return self._heads(primary, refined, with_primary=False)["logits"]

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        primary, _, refined = self._features(x)
        return {
            **self._heads(primary, refined, with_primary=True),
            "student_attention": distillation_attention(primary),
            # stop-gradient: the SSA output is the teacher, only the primary map learns from Self-AD
            "teacher_attention": distillation_attention(refined.detach(), primary.shape[-2:]),
        }

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        distill = (outputs["student_attention"] - outputs["teacher_attention"]).pow(2).sum(dim=1).mean()
        return OrderedDict(
            ce_ssa=self.ssa_weight * F.cross_entropy(outputs["logits_ssa"], targets),
            ce_primary=self.primary_weight * F.cross_entropy(outputs["logits_primary"], targets),
            self_ad=self.distill_weight * distill,
        )

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """SSA attention received per layer4 position, and the Self-AD student / teacher maps on the primary grid."""
        primary, top, refined = self._features(x)
        batch, height, width = primary.shape[0], primary.shape[2], primary.shape[3]
        return {
            "ssa": attention_received(self.ssa.attention(top), top),
            "self_ad_primary": distillation_attention(primary).reshape(batch, height, width),
            "self_ad_ssa": distillation_attention(refined, primary.shape[-2:]).reshape(batch, height, width),
        }


@register_model("ssanet")
def ssanet(num_classes: int, backbone: str = "resnet50", pretrained: bool = False, weights: str | None = None, **kwargs) -> SSANet:
    return SSANet(num_classes, backbone=backbone, pretrained=pretrained, weights=weights, **kwargs)
