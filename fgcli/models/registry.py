"""A timm-style function registry: ``@register_model`` on a factory, ``create_model`` by name."""

from __future__ import annotations

from typing import Callable

from fgcli.errors import FgcliError

_MODELS: dict[str, Callable] = {}


def register_model(name: str):
    """Register ``fn(num_classes, backbone=..., pretrained=..., weights=..., **kwargs)`` as ``name``."""

    def decorator(fn: Callable) -> Callable:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    _import_all()
    return sorted(_MODELS)


def create_model(
    name: str,
    num_classes: int,
    backbone: str | None = None,
    pretrained: bool = False,
    weights: str | None = None,
    **kwargs,
):
    """Build a registered model; ``backbone=None`` takes the method's paper default.

    ``pretrained`` downloads torchvision's ImageNet weights; ``weights`` loads a local
    torchvision state dict into the backbone instead.
    """
    _import_all()
    if name not in _MODELS:
        raise FgcliError(f"unknown method '{name}'", hint=f"choose one of: {', '.join(sorted(_MODELS))}")
    if backbone is not None:
        kwargs["backbone"] = backbone
    model = _MODELS[name](num_classes=num_classes, pretrained=pretrained, weights=weights, **kwargs)
    model.method = name
    return model


def _import_all() -> None:
    """Import every model module so its ``@register_model`` runs."""
    import importlib
    import pkgutil

    import fgcli.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in {"base", "registry", "backbones"}:
            importlib.import_module(f"fgcli.models.{info.name}")
