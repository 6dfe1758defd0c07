"""TASN: Trilinear Attention Sampling Network (Zheng, Fu, Zha, Luo, CVPR 2019, arXiv 1903.06150).

Follows the official MXNet code (github researchmm/tasn, ``tasn-mxnet/example/tasn/model.py`` and the
``AttSampler`` op); notes in shared/methods/tasn.md.

* Attention net: ResNet-18 whose stage 2 and 4 do not downsample (stride 8 overall), then the multi-dilation head:
  one 3x3 conv (with bias) applied at dilations 1, 2 (ReLU each, summed), another at dilations 1, 2, 3. Its own
  classifier BN -> ReLU -> GAP -> FC is trained with CE (training-only).
* Trilinear attention on that head's output X (B, c, hw): ``M = softmax_rows(softmax_hw(7 X) X^T) X``, detached
  (the code's BlockGrad): the sampler sends no gradient into the attention net.
* Structure map: ``(upsample(sum_c M_c))**2`` (computed scaled to at most 1 per image: the sampler is
  scale-invariant, and float16 is not); detail map: ``upsample(M_k)`` with one random channel k per image
  in training (``sum_c M_c``, not squared, at test time). Upsampling is bilinear with aligned corners (MXNet's
  BilinearResize2D).
* Sampler: fgcli.models.tasn_sampler (dense 4, 5 rounds), the structure- and detail-sampled images go through the
  ONE ``self.backbone`` (master = part net, shared weights) as a single concatenated batch ``[detail; structure]``.
* Heads on the pooled layer4 features (code names): ``part_fc`` = fc1 (part half), ``master_fc`` = fc2 (structure
  half), ``shared_fc`` = fc (both halves, the "aux" heads).
* Loss (the code's grad_scale weights): ce_att 1.0, ce_part 0.5, ce_master 0.5, ce_part_aux 0.5,
  ce_master_aux 0.5, distill 1.0 with ``distill = -sum softmax(z_part / T) log softmax(z_master / T)``, T = 10,
  no T**2 and a soft target that is NOT detached (the gradient reaches the part head through it), as in the code.
  ``distill="hinton"`` gives the common variant instead: detached teacher, times T**2.
* Test time: master-net logits on the structure-sampled image, ``master_fc`` (fc2, the distilled student) by
  default; ``test_head="shared"`` uses the shared fc, which the code's comment names for the final prediction.

Sizes [inf]: the paper uses a 512 input, a 224 attention-net input (28x28 maps) and a 224 sampled image. Both
derived sizes scale with the input side S: ``max(32, 16 * round(S * ratio / 16))`` with ratio 224/512 for each
(16, not 32, so that ``sampled_ratio=336/512``, the code README's 88.0 % setting, gives exactly 336).
S = 512 -> 224, 448 -> 192, 96 -> 48, 64 -> 32. Any square input of at least 32 px works (like the op, inputs
must be square).

Departures and choices [inf]:
* Backbones are torchvision ResNets (v1, post-activation, no input BN) instead of MXNet's pre-activation ResNet-v2
  with a ``bn_data`` layer and a final BN-ReLU: inputs are normalised with mean/std by the data pipeline instead,
  and both nets see the same normalised image.
* ``pretrained`` initialises the master and the attention ResNet-18 from ImageNet (as the code does);
  ``weights`` (a local file) applies to the master only. Without ``pretrained`` the attention net is random.
  ``attention_backbone`` (default ``resnet18``) swaps the attention net's backbone: another torchvision ResNet
  with the same two strides removed, or a timm CNN dilated to output stride 8 (both give 28x28 maps at 224).
* The detail channel is drawn uniformly from all c channels; the code draws among channels whose total sums are
  distinct, and its structure map drops duplicate-sum channels (with real features all sums differ, so both masks
  are no-ops). The multi-dilation convs use MXNet's MSRAPrelu init (Kaiming normal, a = 0.25), zero bias.
* The sampler's inverse-CDF edge convention and its zero-attention guard (see tasn_sampler's docstring).

INT8 [choice]: for TensorRT (modelopt, signed symmetric activations) only the master net (``/backbone/`` nodes) is
quantized and the attention net stays in high precision (``symmetric_int8_nodes``), because its INT8 error moves
where the sampler looks; ONNX Runtime's INT8 (unsigned activations) quantizes both nets. Under every quantizer the
ops between the nets (trilinear step, structure map, sampler: ``float_nodes``) stay float.

Training-only: attention-net classifier, part pass (detail image, random channel), part_fc, the unused shared /
master head, distillation. The eval graph is att-net -> trilinear -> structure map -> sampler -> backbone -> head.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fgcli.errors import FgcliError
from fgcli.models.backbones import RESNETS, ResNetBackbone, TimmBackbone, build_backbone
from fgcli.models.base import FGVCModel
from fgcli.models.numerics import sample_peak
from fgcli.models.registry import register_model
from fgcli.models.tasn_sampler import attention_sample

#: the paper's sizes: 512 input, 224 attention-net input, 224 sampled image
PAPER_RATIO = 224 / 512
DISTILL_STYLES = ("code", "hinton")
TEST_HEADS = ("master", "shared")
#: (loss name, output key, weight): the code's SoftmaxOutput grad_scale values
CE_TERMS = (
    ("ce_att", "att_logits", 1.0),
    ("ce_part", "part_logits", 0.5),
    ("ce_master", "master_logits", 0.5),
    ("ce_part_aux", "part_aux_logits", 0.5),
    ("ce_master_aux", "master_aux_logits", 0.5),
)
DISTILL_WEIGHT = 1.0


def scaled_size(size: int, ratio: float = PAPER_RATIO) -> int:
    """TASN's derived sizes for input side ``size``: ``size * ratio`` rounded to a multiple of 16, at least 32."""
    return max(32, 16 * math.floor(size * ratio / 16 + 0.5))


class MultiDilationConv(nn.Module):
    """One 3x3 kernel applied at several dilations (ReLU each, summed): multi-scale context at no extra weights."""

    def __init__(self, channels: int, dilations: tuple[int, ...]):
        super().__init__()
        self.dilations = dilations
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_normal_(self.weight, a=0.25)  # MXNet's MSRAPrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(F.relu(F.conv2d(x, self.weight, self.bias, padding=d, dilation=d)) for d in self.dilations)


def attention_body(name: str, pretrained: bool) -> nn.Module:
    """The attention net's backbone at total stride 8 (224 -> 28). A torchvision ResNet: layer2 and layer4 stop
    downsampling (the code's ResNet-18; weights load unchanged). A timm CNN: its last stages dilated instead."""
    if name not in RESNETS:
        return TimmBackbone(name, pretrained=pretrained, output_stride=8)
    body = ResNetBackbone(name, pretrained=pretrained)
    for stage in ("layer2", "layer4"):
        block = getattr(body, stage)[0]
        for conv in (block.conv1, block.conv2):  # BasicBlock downsamples in conv1, Bottleneck in conv2
            conv.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    body.strides = {"layer1": 4, "layer2": 4, "layer3": 8, "layer4": 8}
    return body


class AttentionNet(nn.Module):
    """TASN's attention net: stride-8 ResNet-18, multi-dilation head, and a CE classifier used in training only."""

    def __init__(self, num_classes: int, pretrained: bool = False, backbone: str = "resnet18"):
        super().__init__()
        self.body = attention_body(backbone, pretrained)
        channels = self.body.channels["layer4"]
        self.conv1 = MultiDilationConv(channels, (1, 2))
        self.conv2 = MultiDilationConv(channels, (1, 2, 3))
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The maps X the trilinear attention reads (before the classifier's BN)."""
        return self.conv2(self.conv1(self.body(x)["layer4"]))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(features)).mean(dim=(2, 3)))


def channel_relation(features: torch.Tensor, softmax_scale: float = 7.0) -> torch.Tensor:
    """``softmax_rows(softmax_hw(k X) X^T)``: ``(B, c, c)`` inter-channel relation, each row a distribution."""
    x = features.flatten(2)
    spatial = torch.softmax(softmax_scale * x, dim=-1)
    return torch.softmax(spatial @ x.transpose(1, 2), dim=-1)


def trilinear_attention(features: torch.Tensor, softmax_scale: float = 7.0) -> torch.Tensor:
    """``M = relation(X) X``: one ``(h, w)`` attention map per channel, detached (the code's BlockGrad).

    Float32 even under autocast: the structure map squares a sum over all channels, which overflows float16.
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        features = features.detach().float()
        return (channel_relation(features, softmax_scale) @ features.flatten(2)).view_as(features)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, style: str = "code"
) -> torch.Tensor:
    """Soft cross-entropy of the student on the teacher's tempered softmax.

    ``"code"``: as the official code (no T**2, gradient also through the soft target); ``"hinton"``: detached
    teacher, scaled by T**2.
    """
    student, teacher = student.float(), teacher.float()
    if style == "hinton":
        teacher = teacher.detach()
    soft_ce = -(F.softmax(teacher / temperature, dim=-1) * F.log_softmax(student / temperature, dim=-1)).sum(-1).mean()
    return soft_ce * temperature**2 if style == "hinton" else soft_ce


class TASN(FGVCModel):
    #: modelopt (TensorRT) INT8 for the master net only. softmax(7 X) turns every quantization step of the
    #: attention features X into a factor on the weights, which moves the sampled image; a non-negative X gets half
    #: the steps under signed symmetric INT8. Measured on 108 synthetic test images: modelopt INT8 of the attention
    #: net too agreed with FP32 on 93.5 % (max) / 95.4 % (entropy), master-only on 97-99 %; ONNX Runtime's unsigned
    #: INT8 of everything agreed on 98-99 % and keeps the CPU speed-up, so it quantizes the whole model.
    symmetric_int8_nodes = r"/backbone/.*"
    #: every quantizer: the ops outside both ResNets (trilinear step, structure map, sampler) stay float. With
    #: them in INT8, ONNX Runtime's model agreed with FP32 on 91.7 % (360 synthetic test images, fine-tuned TASN);
    #: with them in float on 96.7 %, the attention net and master net still INT8.
    float_nodes = r"/[A-Za-z]+(_\d+)?"

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        attention_backbone: str = "resnet18",
        sampled_ratio: float = PAPER_RATIO,
        attention_ratio: float = PAPER_RATIO,
        softmax_scale: float = 7.0,
        dense: float = 4.0,
        sampler_iters: int = 5,
        temperature: float = 10.0,
        distill: str = "code",
        test_head: str = "master",
    ):
        super().__init__(num_classes)
        if distill not in DISTILL_STYLES:
            raise FgcliError(f"unknown distill style '{distill}'", hint=f"choose one of: {', '.join(DISTILL_STYLES)}")
        if test_head not in TEST_HEADS:
            raise FgcliError(f"unknown test head '{test_head}'", hint=f"choose one of: {', '.join(TEST_HEADS)}")
        self.backbone = build_backbone(backbone, pretrained=pretrained, weights=weights)
        self.attention_net = AttentionNet(num_classes, pretrained=pretrained, backbone=attention_backbone)
        channels = self.backbone.channels["layer4"]
        self.part_fc = nn.Linear(channels, num_classes)
        self.master_fc = nn.Linear(channels, num_classes)
        self.shared_fc = nn.Linear(channels, num_classes)
        self.sampled_ratio, self.attention_ratio = sampled_ratio, attention_ratio
        self.softmax_scale, self.dense, self.sampler_iters = softmax_scale, dense, sampler_iters
        self.temperature, self.distill, self.test_head = temperature, distill, test_head

    def pretrained_modules(self) -> list[nn.Module]:
        return [self.backbone, self.attention_net.body]

    # --- attention and sampling -------------------------------------------------------------------------------
    @staticmethod
    def _input_size(x: torch.Tensor) -> int:
        if x.shape[-1] != x.shape[-2]:
            raise FgcliError(f"TASN needs square inputs, got {tuple(x.shape[-2:])}", hint="center-crop to img_size")
        return int(x.shape[-1])

    def _attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention-net features X (with gradient) and the detached trilinear maps M ``(B, c, h, w)``."""
        size = scaled_size(self._input_size(x), self.attention_ratio)
        small = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
        features = self.attention_net.features(small)
        return features, trilinear_attention(features, self.softmax_scale)

    @staticmethod
    def _upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
        return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]

    def _structure_attention(self, maps: torch.Tensor, size: int) -> torch.Tensor:
        """``(upsample(sum_c M_c))**2`` up to a positive factor per image: the sampler normalises its marginals, so
        only relative values matter. Precision: M is divided by its per-image peak before the channel sum (taken
        as a mean) and the square, which overflow float16 in the FP16 ONNX (the eval graph computes this)."""
        return self._upsample((maps / sample_peak(maps)).mean(dim=1), size).square()

    def _detail_attention(self, maps: torch.Tensor, size: int, random_channel: bool) -> torch.Tensor:
        if random_channel:
            batch = torch.arange(maps.shape[0], device=maps.device)
            chosen = maps[batch, torch.randint(maps.shape[1], (maps.shape[0],), device=maps.device)]
        else:
            chosen = maps.sum(dim=1)
        return self._upsample(chosen, size)

    def _sample(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        out_size = scaled_size(self._input_size(x), self.sampled_ratio)
        return attention_sample(x, attention, out_size, self.dense, self.sampler_iters)

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The maps the sampler reads, at input resolution (detail: the test-time channel sum)."""
        size = self._input_size(x)
        _, maps = self._attend(x)
        return {"structure": self._structure_attention(maps, size), "detail": self._detail_attention(maps, size, False)}

    def sample_images(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The structure- and (test-time) detail-sampled images, for visualisation."""
        return {name: self._sample(x, attention) for name, attention in self.attention_maps(x).items()}

    # --- forward and loss ---------------------------------------------------------------------------------------
    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self._input_size(x)
        features, maps = self._attend(x)
        detail = self._sample(x, self._detail_attention(maps, size, random_channel=True))
        structure = self._sample(x, self._structure_attention(maps, size))
        pooled = self.backbone(torch.cat([detail, structure]))["layer4"].mean(dim=(2, 3))
        part, master = pooled.chunk(2)
        part_aux, master_aux = self.shared_fc(pooled).chunk(2)
        master_logits = self.master_fc(master)
        return {
            "logits": master_logits if self.test_head == "master" else master_aux,
            "att_logits": self.attention_net.classify(features),
            "part_logits": self.part_fc(part),
            "master_logits": master_logits,
            "part_aux_logits": part_aux,
            "master_aux_logits": master_aux,
        }

    def forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        _, maps = self._attend(x)
        structure = self._sample(x, self._structure_attention(maps, self._input_size(x)))
        pooled = self.backbone(structure)["layer4"].mean(dim=(2, 3))
        return (self.master_fc if self.test_head == "master" else self.shared_fc)(pooled)

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        terms = OrderedDict((name, weight * F.cross_entropy(outputs[key], targets)) for name, key, weight in CE_TERMS)
        terms["distill"] = DISTILL_WEIGHT * distillation_loss(
            outputs["master_logits"], outputs["part_logits"], self.temperature, self.distill
        )
        return terms


@register_model("tasn")
def tasn(num_classes: int, **kwargs) -> TASN:
    return TASN(num_classes, **kwargs)
