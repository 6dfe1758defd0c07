"""Device names: ``--device`` parsed once for every backend, and its torch device for training and PyTorch runs.

Torch-free at import (deployment code parses devices too); ``resolve_torch_device`` is handed the torch module.
"""

from __future__ import annotations

from fgcli.errors import FgcliError


def parse_device(device: str, allowed: tuple[str, ...] = ("auto", "cpu", "cuda")) -> tuple[str, int]:
    """``"cuda:1"`` -> ``("cuda", 1)``; ``"auto"`` / ``"cpu"`` / ``"cuda"`` -> index 0. Shared by every runner."""
    kind, _, index = str(device).strip().lower().partition(":")
    if kind not in allowed or (index and (not index.isdigit() or kind in ("auto", "cpu"))):
        accepted = ", ".join(a if a in ("auto", "cpu") else f"{a}, {a}:N" for a in allowed)
        raise FgcliError(f"unknown device '{device}'", hint=f"use one of: {accepted}")
    return kind, int(index or 0)


def resolve_torch_device(torch, device: str):
    """"auto" -> the first GPU when CUDA works, else CPU; "cuda[:N]" without CUDA is an error, not a fallback."""
    kind, index = parse_device(device)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise FgcliError(f"--device {device} asked for CUDA, but PyTorch sees no CUDA GPU",
                         hint="use --device cpu, or install a CUDA build of PyTorch that matches the driver")
    return torch.device("cpu") if kind == "cpu" else torch.device("cuda", index)
