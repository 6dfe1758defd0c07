"""Backbones that expose their stage feature maps (the taps FGVC methods attach to).

Every backbone offers the same interface, the only one the methods use: ``forward(x)`` /
``forward_until(x, stage)`` return ``{"layer1": ..., "layer4": ...}`` (strides 4, 8, 16, 32), with
``channels[stage]``, ``strides[stage]`` and ``name`` (what a checkpoint records to rebuild it).
:func:`build_backbone` picks the torchvision ResNets by name and any other name from timm.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from fgcli.errors import FgcliError
from fgcli.utils import optional_import

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
STAGES = ("layer1", "layer2", "layer3", "layer4")
#: nominal total stride of each stage: timm feature maps are mapped onto STAGES by these, not by module name
STAGE_REDUCTIONS = (4, 8, 16, 32)
#: forces timm for a name torchvision also has: ``timm/resnet50`` is timm's ResNet-50, ``resnet50`` torchvision's
TIMM_PREFIX = "timm/"


def build_backbone(name: str, pretrained: bool = False, weights: str | None = None) -> nn.Module:
    """The backbone called ``name``: a torchvision ResNet (``resnet18`` ... ``resnet101``), else a timm CNN
    (``efficientnet_b0``, ``timm/resnet50``: any timm model with feature maps at strides 4, 8, 16 and 32)."""
    if name in RESNETS:
        return ResNetBackbone(name, pretrained=pretrained, weights=weights)
    return TimmBackbone(name, pretrained=pretrained, weights=weights)


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


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model whose feature maps at strides 4, 8, 16, 32 become layer1..layer4.

    The stages are found from ``feature_info.reduction()`` (a timm model also reports its stride-2 map, and
    EfficientNet's stages are ``blocks.1 ... blocks.6``), so every CNN timm can cut into features works.
    ``output_stride=8`` dilates the last stages instead of downsampling them (TASN's attention net); the maps
    keep their layer names, ``strides`` then says 4, 8, 8, 8. timm's feature wrappers run every stage, so
    ``forward_until`` only drops the maps after ``last``.
    """

    def __init__(self, name: str, pretrained: bool = False, weights: str | None = None, output_stride: int = 32):
        super().__init__()
        timm = optional_import("timm", "timm", f"The backbone '{name}'")
        model_name = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
        if not timm.is_model(model_name):
            raise FgcliError(f"unknown backbone '{name}'",
                             hint=f"choose one of {', '.join(RESNETS)} (torchvision) or a timm CNN such as "
                                  "efficientnet_b0, mobilenetv3_large_100, convnext_tiny, regnety_016, timm/resnet50 "
                                  "(python -c \"import timm; print(timm.list_models())\" lists them)")
        fgcli_state = _fgcli_checkpoint_backbone(weights, name) if weights else None
        indices = _timm_stage_indices(timm, model_name, name)
        kwargs: dict = {"features_only": True, "out_indices": indices}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if weights and fgcli_state is None:
            if not os.path.isfile(weights):
                raise FgcliError(f"weights file not found: {weights}",
                                 hint=f"pass the path of a timm {model_name} state dict (.pth, .bin or .safetensors)")
            pretrained, kwargs["pretrained_cfg_overlay"] = True, {"file": str(weights)}
        try:
            self.body = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        except FgcliError:
            raise
        except Exception as exc:  # download (HTTP, hub, SSL) or a file that does not fit the model
            raise _timm_weights_error(timm, model_name, weights, exc) from exc
        if fgcli_state is not None:
            self.body.load_state_dict(fgcli_state)
        self.name = name
        self.channels = dict(zip(STAGES, self.body.feature_info.channels()))
        self.strides = dict(zip(STAGES, self.body.feature_info.reduction()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(STAGES, self.body(x)))

    def forward_until(self, x: torch.Tensor, last: str) -> dict[str, torch.Tensor]:
        return dict(zip(STAGES[:STAGES.index(last) + 1], self.body(x)))


def _timm_stage_indices(timm, model_name: str, name: str) -> tuple[int, ...]:
    """Positions in the model's feature list of the deepest map at each of STAGE_REDUCTIONS (built on the meta
    device: no memory, no weights)."""
    try:
        with torch.device("meta"):
            reductions = timm.create_model(model_name, features_only=True).feature_info.reduction()
    except Exception as exc:  # a model timm cannot cut into features (e.g. some transformers)
        raise FgcliError(f"timm cannot build '{model_name}' as a feature extractor: {exc}",
                         hint="choose a CNN backbone such as efficientnet_b0, convnext_tiny or timm/resnet50") from exc
    missing = [r for r in STAGE_REDUCTIONS if r not in reductions]
    if missing:
        raise FgcliError(
            f"backbone '{name}' has no feature maps at stride {', '.join(map(str, missing))} "
            f"(timm reports strides {reductions})",
            hint="fgcli's methods tap four stages at strides 4, 8, 16 and 32: choose a CNN with four such stages",
        )
    return tuple(max(i for i, r in enumerate(reductions) if r == target) for target in STAGE_REDUCTIONS)


def _timm_weights_error(timm, model_name: str, weights: str | None, exc: Exception) -> FgcliError:
    if weights:
        return FgcliError(f"could not load {weights} into timm's {model_name}: {exc}",
                          hint=f"pass a state dict of timm's {model_name} (as timm saves it: .pth or .safetensors)")
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub = cfg.hf_hub_id if cfg else None
    source = f"https://huggingface.co/{hub}/resolve/main/model.safetensors" if hub else (cfg.url if cfg else None)
    return FgcliError(
        f"could not download timm's pretrained weights for {model_name} ({source or 'no download address'}): {exc}",
        hint="on a machine with internet, download that file, copy it here and pass --weights FILE instead of "
             "--pretrained (or train from scratch without either)",
    )


def _fgcli_checkpoint_backbone(path: str, name: str) -> dict | None:
    """The ``backbone.body.*`` weights of an fgcli checkpoint (fine-tune a method from a baseline run), else None:
    then ``path`` is a timm state dict for timm's own loader."""
    if not str(path).endswith((".pt", ".pth")) or not os.path.isfile(path):
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # not a torch file we can read: timm's loader reports it
    if not (isinstance(ckpt, dict) and {"method", "backbone", "model"} <= ckpt.keys()):
        return None
    if ckpt["backbone"] != name:
        raise FgcliError(f"{path} holds a {ckpt['backbone']} backbone, not a {name}",
                         hint=f"pass --backbone {ckpt['backbone']}, or a checkpoint trained with {name}")
    prefix = "backbone.body."
    return {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}


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
    if not os.path.isfile(path):
        raise FgcliError(f"weights file not found: {path}", hint="pass the path of a torchvision .pth state dict")
    from fgcli.torch_files import torch_load_safely

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
