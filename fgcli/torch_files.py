"""Reading .pt / .pth files without executing pickled code: checkpoints (engine) and backbone weights (models).

torch is imported when a file is read, so this module sits below both packages that need it.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

from fgcli.errors import FgcliError


def torch_load_safely(path: str | os.PathLike, hint: str) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never pickled code.

    Its errors become one FgcliError that says whether the file is damaged or holds Python objects, without
    torch's advice to retry with ``weights_only=False`` (which would run whatever the file carries).
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        called = re.search(r"GLOBAL ([\w.]+)", text)
        other = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        detail = (f"loading it would call {called.group(1)}" if called else
                  other.group(1).strip() if other else "not a tensor pickle")
        raise FgcliError(f"refused to load {path}: it is damaged or carries Python objects, not only tensors "
                         f"({detail}); fgcli never runs code stored in a checkpoint", hint=hint) from None
    except Exception as exc:  # torch raises RuntimeError for a damaged zip, EOFError or ValueError for others
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FgcliError(f"cannot read {path}: it is damaged or not a PyTorch file (truncated by a killed copy?): "
                         f"{first_line}", hint=hint) from None
