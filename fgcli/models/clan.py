"""CLAN: cross-layer attention network (mutual refinement of mid-level and top-level feature maps).

Paper: Ranyi Huang, Yuanzhe Wang, Huaming Yang, "Cross-layer Attention Network for Fine-grained Visual
Categorization", arXiv 2210.08784 (2022), no public code.

Only the abstract was available. It fixes two modules: CLCA (Cross-layer Context Attention), where the top-level map
gives global context to the intermediate maps, and CLSA (Cross-layer Spatial Attention), where the mid-level maps'
local attention boosts local regions of the top-level map. Everything else is reconstructed [inf]
(see /work/shared/methods/clan.md):

* [inf] Mid levels ``mid_stages = ("layer2", "layer3")`` (the abstract speaks of mid-level maps, plural);
  configurable to any subset of layer1..layer3.
* [inf] CLCA per mid level m: ``Q = Wq F_m``, ``K = Wk F4``, ``V = Wv F4`` (1x1 convs to d = C4/8, 256 for
  ResNet-50; the value bottleneck is also d), ``A = softmax_over_top_positions(Q^T K / sqrt(d))``,
  ``F_m' = F_m + gamma * Wo(V A^T)`` with Wo a 1x1 conv d -> C_m. Keys and values come from the raw layer4 map.
  The refined mid maps do not feed the later backbone stages (that would be circular with F4).
* [inf] gamma starts at ``gamma_init = 0.1`` instead of the usual 0: with gamma = 0 the Q/K/V/Wo convs would get
  no gradient at all. 0.1 keeps the mid maps nearly unchanged at the start while CLCA trains from step one.
* [inf] CLSA per mid level: a CBAM-style spatial mask ``a_m = sigmoid(conv3x3([mean_C F_m'; max_C F_m']))``,
  average-pooled onto the layer4 grid (kernel = stride ratio), averaged over the mid levels: ``a``.
  ``F4' = F4 * (1 + a)`` (residual gating keeps the original signal).
* [inf] Heads: ``FC(GAP(F4'))`` (top) and one ``FC(GAP(F_m'))`` per mid level. Loss ``ce_top + sum_m
  mid_weight * ce_<m>`` with mid_weight = 1; the abstract implies no attention loss.
* [inf] Test time uses the top head only (``test_heads="top"``): CLSA already funnels the mid levels into F4'.
  ``test_heads="mean"`` averages the top and mid heads instead. CLCA stays in the eval graph either way,
  because CLSA reads the refined mid maps.

Training-only: the mid-level heads (when ``test_heads="top"``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fgcli.errors import FgcliError
from fgcli.models.backbones import build_backbone
from fgcli.models.base import FGVCModel
from fgcli.models.registry import register_model
from fgcli.models.ssanet import attend, attention_received, query_key_attention

MID_STAGES = ("layer1", "layer2", "layer3")
TEST_HEADS = ("top", "mean")


class CrossLayerContextAttention(nn.Module):
    """CLCA: each mid-level position queries the top-level positions; the gathered context is added back."""

    def __init__(self, mid_channels: int, top_channels: int, inner_channels: int, gamma_init: float = 0.1):
        super().__init__()
        self.query = nn.Conv2d(mid_channels, inner_channels, kernel_size=1)
        self.key = nn.Conv2d(top_channels, inner_channels, kernel_size=1)
        self.value = nn.Conv2d(top_channels, inner_channels, kernel_size=1)
        self.out = nn.Conv2d(inner_channels, mid_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.scale = inner_channels**-0.5

    def attention(self, mid: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """``(B, Hm*Wm, H4*W4)``, each row a distribution over the top-level positions."""
        return query_key_attention(self.query(mid), self.key(top), self.scale)

    def forward(self, mid: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        return mid + self.gamma * self.out(attend(self.value(top), self.attention(mid, top), mid))


class CrossLayerSpatialAttention(nn.Module):
    """CLSA: a spatial mask in (0, 1) from a refined mid map, average-pooled onto the top-level grid."""

    def __init__(self, pool: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.pool = pool

    def mask(self, mid: torch.Tensor) -> torch.Tensor:
        """``(B, 1, Hm, Wm)`` from the channel mean and max (CBAM's spatial descriptor)."""
        descriptor = torch.cat([mid.mean(dim=1, keepdim=True), mid.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(descriptor))

    def forward(self, mid: torch.Tensor) -> torch.Tensor:
        # ceil_mode: a ResNet stage has ceil(S / stride) cells, so a side that is not a multiple of 32 (80 px:
        # layer2 10x10, layer4 3x3) still pools onto the top grid; the last window averages its valid cells.
        return F.avg_pool2d(self.mask(mid), kernel_size=self.pool, ceil_mode=True)


class CLAN(FGVCModel):
    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        mid_stages: Sequence[str] = ("layer2", "layer3"),
        reduction: int = 8,
        gamma_init: float = 0.1,
        spatial_kernel: int = 3,
        mid_weight: float = 1.0,
        test_heads: str = "top",
    ):
        super().__init__(num_classes)
        self.mid_stages = tuple(mid_stages)
        unknown = [s for s in self.mid_stages if s not in MID_STAGES]
        if not self.mid_stages or unknown or len(set(self.mid_stages)) != len(self.mid_stages):
            raise FgcliError(f"bad CLAN mid_stages {list(self.mid_stages)}", hint=f"distinct stages among: {', '.join(MID_STAGES)}")
        if test_heads not in TEST_HEADS:
            raise FgcliError(f"unknown CLAN test_heads '{test_heads}'", hint=f"choose one of: {', '.join(TEST_HEADS)}")
        self.test_heads = test_heads
        self.mid_weight = mid_weight
        self.backbone = build_backbone(backbone, pretrained=pretrained, weights=weights)
        channels, strides = self.backbone.channels, self.backbone.strides
        top_channels = channels["layer4"]
        inner = max(top_channels // reduction, 1)
        self.context = nn.ModuleDict(
            {s: CrossLayerContextAttention(channels[s], top_channels, inner, gamma_init) for s in self.mid_stages}
        )
        self.spatial = nn.ModuleDict(
            {s: CrossLayerSpatialAttention(strides["layer4"] // strides[s], spatial_kernel) for s in self.mid_stages}
        )
        self.top_classifier = nn.Linear(top_channels, num_classes)
        self.mid_classifiers = nn.ModuleDict({s: nn.Linear(channels[s], num_classes) for s in self.mid_stages})

    def _refine(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw backbone maps, CLCA-refined mid maps, CLSA mask on the layer4 grid, gated layer4 map F4')."""
        maps = self.backbone(x)
        top = maps["layer4"]
        mids = {s: self.context[s](maps[s], top) for s in self.mid_stages}
        mask = sum(self.spatial[s](mids[s]) for s in self.mid_stages) / len(self.mid_stages)
        return maps, mids, mask, top * (1 + mask)

    def _heads(self, mids: dict[str, torch.Tensor], gated_top: torch.Tensor, with_mid: bool) -> dict[str, torch.Tensor]:
        """Head logits and the test-time logits; the mid heads run only when asked or needed at test time."""
        heads = {"logits_top": self.top_classifier(gated_top.mean(dim=(2, 3)))}
        if with_mid or self.test_heads == "mean":
            heads.update({f"logits_{s}": self.mid_classifiers[s](mids[s].mean(dim=(2, 3))) for s in self.mid_stages})
        if self.test_heads == "top":
            heads["logits"] = heads["logits_top"]
        else:
            heads["logits"] = sum(heads.values()) / len(heads)
        return heads

    def forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        _, mids, _, gated_top = self._refine(x)
        return self._heads(mids, gated_top, with_mid=False)["logits"]

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, mids, _, gated_top = self._refine(x)
        return self._heads(mids, gated_top, with_mid=True)

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        terms = OrderedDict(ce_top=F.cross_entropy(outputs["logits_top"], targets))
        for stage in self.mid_stages:
            terms[f"ce_{stage}"] = self.mid_weight * F.cross_entropy(outputs[f"logits_{stage}"], targets)
        return terms

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per mid level: CLCA attention received by each layer4 position and the CLSA mask; plus the pooled mask."""
        maps, mids, mask, _ = self._refine(x)
        top = maps["layer4"]
        result = {}
        for stage in self.mid_stages:
            result[f"clca_{stage}"] = attention_received(self.context[stage].attention(maps[stage], top), top)
            result[f"clsa_{stage}"] = self.spatial[stage].mask(mids[stage])[:, 0]
        result["clsa"] = mask[:, 0]
        return result


@register_model("clan")
def clan(num_classes: int, backbone: str = "resnet50", pretrained: bool = False, weights: str | None = None, **kwargs) -> CLAN:
    return CLAN(num_classes, backbone=backbone, pretrained=pretrained, weights=weights, **kwargs)
