"""CLAN: cross-layer attention network (mutual refinement of mid-level and top-level feature maps).

Paper: Ranran Huang, Yu Wang, Huazhong Yang (Tsinghua University), "Cross-layer Attention Network for
Fine-grained Visual Categorization", arXiv 2210.08784, CVPR 2022 FGVC workshop; no public code.

Built from the paper's Figures 1-3, its loss equation and Table 6 (reproduced on a public survey slide, see
shared/methods/clan.md); [fig] marks what they show, [inf] what they leave open and we chose.

* [fig] Mid levels: ResNet "2-scale" = stages 2 and 3 (``mid_stages = ("layer2", "layer3")``; layer1 may be
  added). The refined mid maps are side branches: the backbone goes on from the raw maps.
* [fig] CLCA (Fig. 2), per mid level s, a non-local block over the mid map's own positions whose affinity the top
  map L_N shapes: ``F = W_g(Up(L_N)) + W_l(L_s)``, ``A = normalize(W_theta(F)^T W_phi(F))`` of size
  (HsWs) x (HsWs), values ``V = W_k(L_s)`` from the mid map, ``L̂_s = L_s + W_y(V A^T)``.
  [inf] normalize = softmax over the key positions of ``theta^T phi / sqrt(d)`` (the embedded-Gaussian non-local
  block, with dot-product scaling so the softmax does not saturate at d = 256-512); inner width
  ``d = C_s / 2`` for W_g, W_l, W_theta, W_phi and W_k (the non-local default); Up = bilinear to the mid grid,
  applied after W_g: a 1x1 conv and a bilinear resize commute exactly, and W_g at the top grid costs 1/16 of it
  at 56x56 (tests check the figure's order gives the same F); W_y = 1x1 conv + BatchNorm (the non-local
  block's), BN scale starting at ``residual_init = 0.1``: the non-local paper starts it at 0 (an exact identity),
  but then no CLCA conv but W_y gets a gradient on the first step; 0.1 keeps L̂_s close to L_s while all of
  CLCA trains from step one (``residual_init=0`` gives the identity start).
  [inf] ``subsample=True``: the non-local block's sub-sampling, phi and V max-pooled by 2, so the affinity is
  (HsWs) x (HsWs / 4). Off by default: at 448 px ResNet-50 the full affinity costs about 39 MB per image per
  backward-saved copy at layer2 (docs/results.md has the measured training memory).
* [fig] CLSA (Fig. 3): ``M_s = conv([max_c(L̂_s); avg_c(L̂_s)])``, down-sampled to the top grid, applied
  element-wise to the raw top map L_N. [inf] a 3x3 conv and a sigmoid (CBAM's spatial attention), down-sampling by
  average pooling (kernel = stride ratio), plain product ``L_N * R(M_s)``.
* [fig] Fig. 1 draws one attended top map per mid level, stacked into the refined top map L̂_N. [inf] stacked =
  concatenated along channels, so the refined-top head sees ``len(mid_stages) * C_N`` features.
* [fig] Loss: ``sum_s CE(FC(Pool(L̂_s))) + CE(FC(Pool(L_N))) + CE(FC(Pool(L̂_N)))``, weights 1; logged as
  ``ce_mid_<stage>``, ``ce_top_raw``, ``ce_top_refined``. [inf] Pool = global average pooling.
* [fig] Prediction "obtained by combining the outputs at each branch" (Fig. 1 joins the four heads in one
  softmax). [inf] The mean of the heads' softmaxes; the eval graph returns its log (``log mean_h softmax(z_h)``,
  computed as a stable log-sum-exp of the heads' log-softmaxes). That is a valid logit vector: its arg-max is the
  mean-softmax prediction and its softmax gives back the mean probabilities exactly.

Precision (issue 22): CLCA's theta^T phi is formed from peak-normalised operands with the peaks and 1/sqrt(d)
folded back into max-shifted logits, softmax in float32 under autocast (ssanet.query_key_attention); the
combination is a log-sum-exp of log-softmaxes, finite in any precision.

Training-only: nothing. Every head feeds the test-time combination, so the whole graph is exported.
"""

from __future__ import annotations

import math
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


class CrossLayerContextAttention(nn.Module):
    """CLCA (Fig. 2): a non-local block over the mid map's positions; the top map enters the affinity only."""

    def __init__(self, mid_channels: int, top_channels: int, inner_channels: int, residual_init: float = 0.1,
                 subsample: bool = False):
        super().__init__()
        self.top_proj = nn.Conv2d(top_channels, inner_channels, kernel_size=1)  # W_g
        self.mid_proj = nn.Conv2d(mid_channels, inner_channels, kernel_size=1)  # W_l
        self.theta = nn.Conv2d(inner_channels, inner_channels, kernel_size=1)
        self.phi = nn.Conv2d(inner_channels, inner_channels, kernel_size=1)
        self.value = nn.Conv2d(mid_channels, inner_channels, kernel_size=1)  # W_k
        self.out = nn.Sequential(nn.Conv2d(inner_channels, mid_channels, kernel_size=1, bias=False),
                                 nn.BatchNorm2d(mid_channels))  # W_y
        nn.init.constant_(self.out[1].weight, residual_init)
        self.scale = inner_channels**-0.5
        self.subsample = subsample

    def fused(self, mid: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """``F = Up(W_g(L_N)) + W_l(L_s)`` on the mid grid (equal to the figure's ``W_g(Up(L_N))``)."""
        top_context = F.interpolate(self.top_proj(top), size=mid.shape[-2:], mode="bilinear", align_corners=False)
        return top_context + self.mid_proj(mid)

    def subsampled(self, x: torch.Tensor) -> torch.Tensor:
        """The key / value grid: ``x`` max-pooled by 2 when ``subsample`` is on, else ``x`` itself."""
        return F.max_pool2d(x, kernel_size=2, ceil_mode=True) if self.subsample else x

    def attention(self, mid: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """``(B, HsWs, HsWs)`` (keys ``ceil(Hs/2) ceil(Ws/2)`` when subsampled), each row a distribution.

        Precision: see ``query_key_attention`` (peak-normalised theta / phi in the autocast dtype, scale and peaks
        folded back into the max-shifted energy, float32 softmax): theta^T phi overflows float16 before the
        1/sqrt(d) scaling (a NaN from epoch 2 under CUDA fp16 autocast at 448 px, issue 22)."""
        fused = self.fused(mid, top)
        return query_key_attention(self.theta(fused), self.subsampled(self.phi(fused)), self.scale)

    def forward(self, mid: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        values = self.subsampled(self.value(mid))
        return mid + self.out(attend(values, self.attention(mid, top), mid))


class CrossLayerSpatialAttention(nn.Module):
    """CLSA (Fig. 3): a spatial mask in (0, 1) from a refined mid map, average-pooled onto the top-level grid."""

    def __init__(self, pool: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.pool = pool

    def mask(self, mid: torch.Tensor) -> torch.Tensor:
        """``M_s``, ``(B, 1, Hs, Ws)``, from the channel max and mean (the figure's [MaxPool, AvgPool])."""
        descriptor = torch.cat([mid.amax(dim=1, keepdim=True), mid.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(descriptor))

    def forward(self, mid: torch.Tensor) -> torch.Tensor:
        """``R(M_s)`` on the top grid. ceil_mode: a ResNet stage has ceil(S / stride) cells, so a side that is not a
        multiple of 32 (80 px: layer2 10x10, layer4 3x3) still pools onto the top grid."""
        return F.avg_pool2d(self.mask(mid), kernel_size=self.pool, ceil_mode=True)


def mean_softmax_logits(head_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_h softmax(z_h))``, ``(B, K)``, as a log-sum-exp over the heads that never takes log(0)."""
    log_probs = torch.stack([z.log_softmax(dim=1) for z in head_logits])
    peak = log_probs.amax(dim=0)
    return peak + (log_probs - peak).exp().sum(dim=0).log() - math.log(len(head_logits))


class CLAN(FGVCModel):
    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        mid_stages: Sequence[str] = ("layer2", "layer3"),
        reduction: int = 2,
        residual_init: float = 0.1,
        subsample: bool = False,
        spatial_kernel: int = 3,
    ):
        super().__init__(num_classes)
        self.mid_stages = tuple(mid_stages)
        unknown = [s for s in self.mid_stages if s not in MID_STAGES]
        if not self.mid_stages or unknown or len(set(self.mid_stages)) != len(self.mid_stages):
            raise FgcliError(f"bad CLAN mid_stages {list(self.mid_stages)}", hint=f"distinct stages among: {', '.join(MID_STAGES)}")
        self.backbone = build_backbone(backbone, pretrained=pretrained, weights=weights)
        channels, strides = self.backbone.channels, self.backbone.strides
        top_channels = channels["layer4"]
        self.context = nn.ModuleDict({
            s: CrossLayerContextAttention(channels[s], top_channels, max(channels[s] // reduction, 1), residual_init,
                                          subsample)
            for s in self.mid_stages
        })
        self.spatial = nn.ModuleDict(
            {s: CrossLayerSpatialAttention(strides["layer4"] // strides[s], spatial_kernel) for s in self.mid_stages}
        )
        self.mid_classifiers = nn.ModuleDict({s: nn.Linear(channels[s], num_classes) for s in self.mid_stages})
        self.top_raw_classifier = nn.Linear(top_channels, num_classes)
        self.top_refined_classifier = nn.Linear(len(self.mid_stages) * top_channels, num_classes)

    def _branches(self, x: torch.Tensor):
        """(raw backbone maps, refined mid maps L̂_s, CLSA masks R(M_s) on the top grid, refined top map L̂_N)."""
        maps = self.backbone(x)
        top = maps["layer4"]
        mids = {s: self.context[s](maps[s], top) for s in self.mid_stages}
        masks = {s: self.spatial[s](mids[s]) for s in self.mid_stages}
        refined_top = torch.cat([top * masks[s] for s in self.mid_stages], dim=1)
        return maps, mids, masks, refined_top

    def _heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four heads' logits (one per mid level, raw top, refined top) and their combination ``logits``."""
        maps, mids, _, refined_top = self._branches(x)
        heads = {f"logits_mid_{s}": self.mid_classifiers[s](mids[s].mean(dim=(2, 3))) for s in self.mid_stages}
        heads["logits_top_raw"] = self.top_raw_classifier(maps["layer4"].mean(dim=(2, 3)))
        heads["logits_top_refined"] = self.top_refined_classifier(refined_top.mean(dim=(2, 3)))
        heads["logits"] = mean_softmax_logits(list(heads.values()))
        return heads

    def forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        return self._heads(x)["logits"]

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._heads(x)

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        terms = OrderedDict((f"ce_mid_{s}", F.cross_entropy(outputs[f"logits_mid_{s}"], targets)) for s in self.mid_stages)
        terms["ce_top_raw"] = F.cross_entropy(outputs["logits_top_raw"], targets)
        terms["ce_top_refined"] = F.cross_entropy(outputs["logits_top_refined"], targets)
        return terms

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per mid level: the CLCA attention each key position receives and the CLSA mask M_s, on the mid grid."""
        maps, mids, _, _ = self._branches(x)
        result = {}
        for stage in self.mid_stages:
            context = self.context[stage]
            key_grid = context.subsampled(maps[stage][:, :1])
            result[f"clca_{stage}"] = attention_received(context.attention(maps[stage], maps["layer4"]), key_grid)
            result[f"clsa_{stage}"] = self.spatial[stage].mask(mids[stage])[:, 0]
        return result


@register_model("clan")
def clan(num_classes: int, backbone: str = "resnet50", pretrained: bool = False, weights: str | None = None, **kwargs) -> CLAN:
    return CLAN(num_classes, backbone=backbone, pretrained=pretrained, weights=weights, **kwargs)
