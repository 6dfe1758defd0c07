"""ResNet backbones that expose their stage feature maps (the taps FGVC methods attach to)."""

from __future__ import annotations

import torch
from torch import nn

from fgcli.errors import FgcliError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    ``forward`` returns ``{"layer1": ..., ..., "layer4": ...}`` (strides 4, 8, 16, 32);
    ``channels[stage]`` gives each map's channel count. ``forward_until(x, stage)`` stops early,
    so a method that only needs ``layer3`` pays for nothing after it.
    """

    def __init__(self, name: str = "resnet50", pretrained: bool = False, weights: str | None = None):
        super().__init__()
        import torchvision

        if name not in RESNETS:
            raise FgcliError(f"unknown backbone '{name}'", hint=f"choose one of: {', '.join(RESNETS)}")
        net = getattr(torchvision.models, name)(weights=None)
        if weights:
            net.load_state_dict(_load_local_weights(weights, name))
        elif pretrained:
            net.load_state_dict(_download_imagenet_weights(name))
        self.name = name
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        width = 512 if name in ("resnet18", "resnet34") else 2048
        self.channels = {"layer1": width // 8, "layer2": width // 4, "layer3": width // 2, "layer4": width}
        self.strides = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_until(x, "layer4")

    def forward_until(self, x: torch.Tensor, last: str) -> dict[str, torch.Tensor]:
        features = {}
        x = self.stem(x)
        for stage in STAGES:
            x = getattr(self, stage)(x)
            features[stage] = x
            if stage == last:
                break
        return features


def _download_imagenet_weights(name: str) -> dict:
    """torchvision's DEFAULT ImageNet weights; offline, a message that says how to pass a file."""
    import torchvision

    weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return weights_enum.get_state_dict(progress=True)
    except Exception as exc:  # URLError, SSL, timeouts: all mean "could not download"
        raise FgcliError(
            f"could not download the ImageNet weights for {name} ({weights_enum.url}): {exc}",
            hint=(
                "on a machine with internet, download that URL, copy the .pth file here and pass "
                "--weights FILE instead of --pretrained (or train from scratch without either)"
            ),
        ) from exc


def _load_local_weights(path: str, name: str) -> dict:
    """A torchvision ResNet state dict from disk; ``fc.*`` may be absent (it is replaced anyway)."""
    import os

    if not os.path.isfile(path):
        raise FgcliError(f"weights file not found: {path}", hint="pass the path of a torchvision .pth state dict")
    from fgcli.engine.checkpoint import torch_load_safely

    state = torch_load_safely(path, hint="pass a torch state dict (.pth) or an fgcli checkpoint (RUN/best.pt)")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and {"method", "backbone", "model"} <= state.keys():
        state = _fgcli_backbone_state(state, path, name)
    if not isinstance(state, dict):
        raise FgcliError(f"{path} holds a {type(state).__name__}, not a state dict")
    reference = getattr(__import__("torchvision").models, name)(weights=None).state_dict()
    missing = [k for k in reference if k not in state and not k.startswith("fc.")]
    if missing:
        raise FgcliError(
            f"{path} is not a {name} state dict: {len(missing)} keys missing (e.g. {missing[0]})",
            hint=f"use the torchvision ImageNet weights of {name}",
        )
    for key in ("fc.weight", "fc.bias"):
        state.setdefault(key, reference[key])
    return {k: state[k] for k in reference}


def _fgcli_backbone_state(ckpt: dict, path: str, name: str) -> dict:
    """The backbone of an fgcli checkpoint in torchvision's key names: fine-tune a method from a baseline run."""
    if ckpt["backbone"] != name:
        raise FgcliError(f"{path} holds a {ckpt['backbone']} backbone, not a {name}",
                         hint=f"pass --backbone {ckpt['backbone']}, or a checkpoint trained with {name}")
    state = {}
    for key, value in ckpt["model"].items():
        if key.startswith("backbone."):
            key = key[len("backbone."):]
            for ours, torchvision_name in (("stem.0.", "conv1."), ("stem.1.", "bn1.")):
                if key.startswith(ours):
                    key = torchvision_name + key[len(ours):]
            state[key] = value
    return state
