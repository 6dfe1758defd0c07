"""Model registry: one file per method, each registered with ``@register_model``."""

from fgcli.models.base import FGVCModel
from fgcli.models.registry import create_model, list_models, register_model

__all__ = ["FGVCModel", "create_model", "list_models", "register_model"]
