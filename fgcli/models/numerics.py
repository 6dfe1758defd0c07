"""Attention arithmetic that stays finite in float16: under autocast and in the FP16 ONNX / TensorRT graphs.

float16 overflows above 65504: a trained ResNet's stage outputs reach a few hundred (271 measured at SSANet's
layer4 at 448 px), so their squares, and dot products over hundreds of channels, become inf, and a softmax over
them NaN. ``.float()`` protects only the PyTorch side: ``fgcli export --fp16`` turns every float tensor and Cast
into float16. So the helpers here never form a large product at all:

* operands are divided by their detached per-sample peak |x| first (entries in [-1, 1]), the product is formed
  (bounded by the summed length), and the peaks are folded back afterwards;
* a softmax's logits are shifted by their (detached) row maximum *before* the large scale is folded back, so
  they are <= 0: an overflow can only give -inf (weight 0, clamped to a finite floor), never inf - inf (NaN).
  The fold-back and the softmax run in float32 in PyTorch (``.float()``, a no-op in an FP32 trace).

Both steps are exact in real arithmetic (the peaks cancel; a softmax ignores an additive constant per row), so
in FP32 the results equal the plain formulas within rounding; the detached peaks and maxima carry no gradient
because the value does not depend on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: float16's smallest normal number: the floor of a peak, so an all-zero sample divides by a representable value
PEAK_FLOOR = 2.0**-14
#: the floor of a max-shifted softmax logit: exp of it is 0 in float32 already (below -104), so clamping there
#: changes no weight and no gradient, and turns float16's -inf into a finite number
LOGIT_FLOOR = -1.0e4


def sample_peak(x: torch.Tensor) -> torch.Tensor:
    """Detached ``max |x|`` over all but the batch axis, at least PEAK_FLOOR, shaped to broadcast against ``x``."""
    return x.detach().abs().amax(dim=tuple(range(1, x.dim())), keepdim=True).clamp_min(PEAK_FLOOR)


def scaled_softmax(energy: torch.Tensor, scales: Sequence[torch.Tensor | float], dim: int = -1) -> torch.Tensor:
    """``softmax(energy * prod(scales))`` along ``dim``, in float32 under autocast.

    ``energy`` must be of moderate size (a product of peak-normalised operands); the positive ``scales`` may be
    large. They are applied one at a time to the max-shifted energy, so every intermediate is <= 0 (-inf where
    float16 overflows), then clamped at LOGIT_FLOOR.
    """
    logits = (energy - energy.detach().amax(dim=dim, keepdim=True)).float()
    for scale in scales:
        logits = logits * scale
    return logits.clamp_min(LOGIT_FLOOR).softmax(dim=dim)


def query_key_softmax(query: torch.Tensor, key: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``softmax_over_keys(scale * Q^T K)`` for ``Q (B, d, N)`` and ``K (B, d, M)`` -> ``(B, N, M)`` in ``Q``'s dtype.
    The bmm runs in the autocast dtype on Q and K divided by their peaks (entries <= d in size), the softmax in
    float32; its weights (in [0, 1]) go back to Q's dtype, so a model converted to FP16 / BF16 (``fgcli report``'s
    torch-fp16 / -bf16) multiplies them with its values without a dtype clash."""
    query_peak, key_peak = sample_peak(query), sample_peak(key)
    energy = torch.bmm((query / query_peak).transpose(1, 2), key / key_peak)
    return scaled_softmax(energy, (query_peak * scale, key_peak)).to(query.dtype)


def squared_channel_mean(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_C(F^2)`` of ``(B, C, H, W)`` as ``(energy / peak^2 in [0, 1] (B, 1, H, W), peak (B, 1, 1, 1))``:
    the square is taken of ``F / peak``, so it cannot overflow; multiply by ``peak`` twice to get the energy."""
    peak = sample_peak(features)
    return (features / peak).square().mean(dim=1, keepdim=True), peak
