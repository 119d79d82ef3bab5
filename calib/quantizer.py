"""Asymmetric group fake-quantization with learnable weight clipping (OmniQuant's LWC).

Groups are ``group_size`` consecutive input columns of one output row; a last partial group is
padded (ceil division, as MLC-LLM does) by repeating the row's last column, which leaves the
group's min/max, and so its grid, unchanged.

Two choices keep the learned grid exactly representable in the exported artifact:

* the scale is rounded to float16 in the forward pass (straight-through), so the loss that is
  optimised is the loss of the float16 model that ships;
* the zero point is clamped into the code range [0, 2^b - 1], so it packs into ``bits`` bits.
  OmniQuant clamps it to +-1e4 instead; the two differ only for a group whose values all share
  one sign, which a weight group of 32 or more practically never is.

With those, ``w_hat = (q - zero) * scale`` computed in float32 and rounded once to float16 is
what any float16 dequantize kernel computes, bit for bit (q - zero is a small integer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LWC_INIT = 4.0  # sigmoid(4) = 0.982: start just inside the min/max range (OmniQuant)
SCALE_MIN, SCALE_MAX = 1e-5, 1e4
FP16_TINY = 2.0**-24  # smallest positive float16 (subnormal)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient."""
    return (x.round() - x).detach() + x


def to_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] -> [N, ceil(K/G), G], padding the last group by repeating the last column."""
    n, k = w.shape
    pad = math.ceil(k / group_size) * group_size - k
    if pad:
        w = F.pad(w.unsqueeze(0), (0, pad), mode="replicate").squeeze(0)
    return w.reshape(n, -1, group_size)


def from_groups(wg: torch.Tensor, k: int) -> torch.Tensor:
    """[N, ngroups, G] -> [N, K], dropping the padding."""
    return wg.reshape(wg.shape[0], -1)[:, :k]


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round to the float16 value that ships, with a straight-through gradient."""
    rounded = scale.to(torch.float16).float().clamp_min(FP16_TINY)
    return (rounded - scale).detach() + scale


@dataclass
class GroupQuant:
    """A weight on its grid: what the calibrated checkpoint stores and the exporter packs."""

    w_hat: torch.Tensor  # [N, K] float16, = (codes - zero) * scale
    codes: torch.Tensor  # [N, ngroups * G] uint8, padded columns included
    scale: torch.Tensor  # [N, ngroups] float16
    zero: torch.Tensor  # [N, ngroups] uint8, in [0, 2^bits - 1]


def grid(
    wg: torch.Tensor,
    bits: int,
    up: torch.Tensor | None = None,
    low: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (scale, zero) of grouped weights [N, ng, G]; LWC logits ``up``/``low`` [N, ng]."""
    xmax = wg.amax(dim=-1)
    xmin = wg.amin(dim=-1)
    if up is not None:
        xmax = torch.sigmoid(up) * xmax
    if low is not None:
        xmin = torch.sigmoid(low) * xmin
    qmax = 2**bits - 1
    scale = fp16_scale(((xmax - xmin) / qmax).clamp(SCALE_MIN, SCALE_MAX))
    zero = (-xmin / scale).round().clamp(0, qmax)  # no gradient through the zero (OmniQuant)
    return scale, zero


def fake_quant(
    w: torch.Tensor,
    bits: int,
    group_size: int,
    up: torch.Tensor | None = None,
    low: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable W_hat = (clamp(round_ste(W / s) + z, 0, 2^b - 1) - z) * s, shape [N, K]."""
    wg = to_groups(w, group_size)
    scale, zero = grid(wg, bits, up, low)
    scale, zero = scale.unsqueeze(-1), zero.unsqueeze(-1)
    q = torch.clamp(round_ste(wg / scale) + zero, 0, 2**bits - 1)
    return from_groups((q - zero) * scale, w.shape[1])


@torch.no_grad()
def quantize(
    w: torch.Tensor,
    bits: int,
    group_size: int,
    up: torch.Tensor | None = None,
    low: torch.Tensor | None = None,
) -> GroupQuant:
    """Fold: integer codes, float16 scale, integer zero and the float16 weight they give.

    Without ``up``/``low`` this is round-to-nearest (RTN) on the min/max grid.
    """
    w = w.float()
    wg = to_groups(w, group_size)
    scale, zero = grid(wg, bits, up, low)
    q = torch.clamp((wg / scale.unsqueeze(-1)).round() + zero.unsqueeze(-1), 0, 2**bits - 1)
    w_hat = from_groups((q - zero.unsqueeze(-1)) * scale.unsqueeze(-1), w.shape[1])
    return GroupQuant(
        w_hat=w_hat.to(torch.float16),
        codes=q.reshape(q.shape[0], -1).to(torch.uint8),
        scale=scale.to(torch.float16),
        zero=zero.to(torch.uint8),
    )


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of ``quantize`` from stored integers: float16 [N, K]."""
    n, ng = scale.shape
    q = codes.float().reshape(n, ng, -1)
    w = (q - zero.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)
    return from_groups(w, k).to(torch.float16)


class LWC(torch.nn.Module):
    """Learnable clipping logits for one [N, K] weight (OmniQuant's ``upbound/lowbound_factor``)."""

    def __init__(self, n: int, k: int, group_size: int, init: float = LWC_INIT) -> None:
        super().__init__()
        ng = math.ceil(k / group_size)
        self.up = torch.nn.Parameter(torch.full((n, ng), init))
        self.low = torch.nn.Parameter(torch.full((n, ng), init))
