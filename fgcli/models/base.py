"""The forward contract every fgcli model follows.

* ``model.train()``: ``forward(x)`` returns a dict of whatever the model's loss needs
  (always including ``"logits"``, the head used at test time).
* ``model.eval()``: ``forward(x)`` returns a plain ``(B, num_classes)`` logits tensor.
  That graph is what gets exported, so it holds only what the paper uses at test time.
* ``model.loss(outputs, targets)`` returns an ordered dict of *weighted* loss terms; the
  training loop sums them and logs each one, so users see what every term is doing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

class FGVCModel(nn.Module, ABC):
    """Base class: a backbone (pretrained part) plus method-specific new layers.

    Subclasses implement ``forward_train`` and ``forward_eval``; override ``loss`` when the
    method has more than a cross-entropy term.
    """

    #: registry name, set by ``register_model``
    method: str = ""
    #: regex over the exported ONNX node names: the nodes modelopt may quantize for TensorRT, whose INT8 activations
    #: are signed and symmetric (None: all it supports). For parts that need the finer steps of unsigned activations
    #: (ONNX Runtime's INT8 ignores this): TASN's attention net, whose errors move where its sampler looks.
    symmetric_int8_nodes: str | None = None
    #: regex over the exported ONNX node names that every INT8 quantizer leaves in float (None: none beyond the
    #: softmax-weighted nodes, which always stay float). TASN: its sampler, whose per-image interpolation weights
    #: decide which pixels the master net sees.
    float_nodes: str | None = None

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor):
        return self.forward_train(x) if self.training else self.forward_eval(x)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.forward_eval(x)}

    @abstractmethod
    def forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the test-time graph, ``(B, num_classes)``: the exported graph."""

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(ce=F.cross_entropy(outputs["logits"], targets))

    def pretrained_modules(self) -> list[nn.Module]:
        """Modules initialised from ImageNet weights; they train at a lower learning rate."""
        return [self.backbone]

    def param_groups(self, lr: float, backbone_lr_scale: float, weight_decay: float) -> list[dict]:
        """Optimizer groups: pretrained layers at ``lr * backbone_lr_scale``, new layers at ``lr``."""
        pretrained_ids = {id(p) for m in self.pretrained_modules() for p in m.parameters()}
        pretrained = [p for p in self.parameters() if id(p) in pretrained_ids and p.requires_grad]
        new = [p for p in self.parameters() if id(p) not in pretrained_ids and p.requires_grad]
        groups = [
            {"params": pretrained, "lr": lr * backbone_lr_scale, "weight_decay": weight_decay, "name": "backbone"},
            {"params": new, "lr": lr, "weight_decay": weight_decay, "name": "new_layers"},
        ]
        return [g for g in groups if g["params"]]

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's own attention maps for visualisation, each ``(B, h, w)``; none by default."""
        return {}
