"""TASN's attention-based sampler (the ``AttSampler`` op of researchmm/tasn), static-shaped and export-safe.

The official op is a CUDA kernel with data-dependent ``while`` loops. Here every step is a fixed-shape tensor op
that ONNX opset 17 and TensorRT 8.6+ support, so the sampler can stay in the deployed graph:

1. Marginals: ``m_y[i] = max_j A[i, j]``, ``m_x[j] = max_i A[i, j]``, each normalised to sum 1 and scaled by the
   output size, so a value is "output pixels spent per input pixel" (uniform = out / n).
2. ``iters`` fixed (unrolled) clip-and-refill rounds: clip both marginals at ``min(max m_x, max m_y)``, in round 0
   also at ``dense * out / n`` (at most ``dense``-fold magnification), then add the removed mass back uniformly.
3. Inverse CDF: ``F`` = cumulative sum; output index ``o`` maps to the input position where the piecewise-linear
   ``F`` reaches its ``o``-th of ``out`` evenly spaced levels. The search is a comparison count,
   ``(F[None, :] < t[:, None]).sum(-1)`` (first ``j`` with ``F[j] >= t``), then a gather and a lerp.
4. Sampling: the grid is separable, so bilinear ``grid_sample(align_corners=True, padding_mode="zeros")`` is two
   matmuls with tent-kernel matrices, ``R_y @ image @ R_x^T`` with ``R[o, i] = relu(1 - |i - p_o|)``.

Departures from the CUDA op (both are edge conventions of the inverse CDF, < 0.5 % of the width):
* the op seeds ``F[0] = 1`` and spaces its levels as ``o * F[-1] / out`` (o = 0..out-1), so uniform attention maps
  output 0..out-1 onto input pixels ~0..n-3.3 and output 0 reads ``F[-1]`` out of bounds. Here ``F[0] = 0`` and
  the levels span ``[0, F[-1]]`` inclusive (``o * F[-1] / (out - 1)``): uniform attention is exactly the identity
  (align-corners) resize, and every index stays in range.
* the marginal normalisation divides by ``max(sum, 1e-12)``: an all-zero attention map gives a uniform grid
  instead of NaN.

Like the op, this assumes square maps (the ``dense`` cap is relative to the uniform level ``out / n``).
``dense`` caps the magnification (about ``dense``-fold, plus the refill), not the thinning: input regions whose
attention is near zero get almost no samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: guards the normalisation of an all-zero attention map and the lerp over zero-width CDF steps
_EPS = 1e-12


def marginals(attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column maxima of ``(B, H, W)`` attention, each normalised to sum 1: ``(m_y (B, H), m_x (B, W))``."""
    rows, cols = attention.amax(dim=2), attention.amax(dim=1)
    return rows / rows.sum(-1, keepdim=True).clamp_min(_EPS), cols / cols.sum(-1, keepdim=True).clamp_min(_EPS)


def clip_marginals(
    m_y: torch.Tensor, m_x: torch.Tensor, out_size: int, dense: float = 4.0, iters: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's fixed-count clip-and-refill rounds on marginals that sum to 1; results sum to ``out_size``.

    The cap is shared by both axes (the smaller of their maxima), and only round 0 also applies the ``dense``
    limit; later rounds just even out the two axes' maxima, as in the official code.
    """
    n_y, n_x = m_y.shape[-1], m_x.shape[-1]
    density_cap = dense * out_size / n_x  # the op's scale * dense * in_size / att_size, with att_size == in_size
    m_y, m_x = m_y * out_size, m_x * out_size
    for round_index in range(iters):
        cap = torch.minimum(m_y.amax(-1, keepdim=True), m_x.amax(-1, keepdim=True))
        if round_index == 0:
            cap = cap.clamp(max=density_cap)
        m_y, m_x = torch.minimum(m_y, cap), torch.minimum(m_x, cap)
        m_y = m_y + (out_size - m_y.sum(-1, keepdim=True)) / n_y
        m_x = m_x + (out_size - m_x.sum(-1, keepdim=True)) / n_x
    return m_y, m_x


def inverse_cdf_grid(density: torch.Tensor, out_size: int) -> torch.Tensor:
    """``(B, n)`` non-negative density -> ``(B, out_size)`` normalised sample coordinates in [-1, 1], non-decreasing.

    ``density[j]`` is the output mass of the input interval ``(j - 1, j)``; a dense region gets many samples.
    """
    n = density.shape[-1]
    cdf = torch.cat([torch.zeros_like(density[:, :1]), torch.cumsum(density[:, 1:], dim=-1)], dim=-1)
    levels = torch.linspace(0.0, 1.0, out_size, device=density.device, dtype=density.dtype) * cdf[:, -1:]
    below = (cdf[:, None, :] < levels[:, :, None]).to(density.dtype).sum(-1)  # first j with F[j] >= level
    upper = below.clamp(1, n - 1).long()
    f_lo, f_hi = cdf.gather(1, upper - 1), cdf.gather(1, upper)
    fraction = ((levels - f_lo) / (f_hi - f_lo).clamp_min(_EPS)).clamp(0.0, 1.0)
    position = (upper - 1).to(density.dtype) + fraction
    return position * (2.0 / (n - 1)) - 1.0


def attention_grid(
    attention: torch.Tensor, out_size: int, dense: float = 4.0, iters: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, H, W)`` non-negative attention -> separable grid ``(grid_y (B, out), grid_x (B, out))`` in [-1, 1].

    Runs in float32 on a detached map: the op has no gradient w.r.t. the attention.
    """
    m_y, m_x = marginals(attention.detach().float())
    m_y, m_x = clip_marginals(m_y, m_x, out_size, dense, iters)
    return inverse_cdf_grid(m_y, out_size), inverse_cdf_grid(m_x, out_size)


def tent_weights(grid: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, out)`` normalised coordinates -> ``(B, out, size)`` bilinear weights (align_corners, zero padding)."""
    position = (grid + 1.0) * (0.5 * (size - 1))
    pixels = torch.arange(size, device=grid.device, dtype=grid.dtype)
    return F.relu(1.0 - (pixels - position[..., None]).abs())


def separable_sample(images: torch.Tensor, grid_y: torch.Tensor, grid_x: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` on the grid ``(grid_x[o_x], grid_y[o_y])`` as ``R_y @ images @ R_x^T``: ``(B, C, oy, ox)``."""
    rows = tent_weights(grid_y, images.shape[-2]).to(images.dtype)
    cols = tent_weights(grid_x, images.shape[-1]).to(images.dtype)
    return rows[:, None] @ images @ cols[:, None].transpose(-1, -2)


def attention_sample(
    images: torch.Tensor, attention: torch.Tensor, out_size: int, dense: float = 4.0, iters: int = 5
) -> torch.Tensor:
    """Resample ``(B, C, H, W)`` images to ``out_size``², with more pixels where ``(B, H, W)`` attention is high."""
    grid_y, grid_x = attention_grid(attention, out_size, dense, iters)
    return separable_sample(images, grid_y, grid_x)
