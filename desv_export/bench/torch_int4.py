"""torch's own int4 weight-only matmul as a baseline row: what a user gets from plain PyTorch.

``torch.ops.aten._weight_int4pack_mm`` (CUDA, bfloat16 activations) and
``_weight_int4pack_mm_for_cpu`` (CPU, float32 here) are the tinygemm kernels behind torchao's
int4 weight-only quantization. Every ``nn.Linear`` of the HF model (lm_head included, as MLC
quantizes it) is replaced by an :class:`Int4Linear` holding the packed codes and the
per-group scale and zero, quantized round-to-nearest on the group's min/max as our ``rtn``
does, so the row measures the kernel, not a calibration.

tinygemm's convention is ``w = (q - 8) * scale + zero`` with a float zero per group, ours
``w = (q - z) * scale`` with an integer ``z``: ``zero = (8 - z) * scale`` converts exactly.
It needs the group size to divide the input size: groups are 128 where they do, else the
largest of 64 and 32 that does (SmolLM2's 576 takes 64); the row's label lists the groups used.
A linear that fits no group, or whose output size is not a multiple of 16, stays float.
"""

from __future__ import annotations

import torch

GROUPS = (128, 64, 32)
INNER_K_TILES = 2
OUT_MULTIPLE = 16  # tinygemm's CPU packing wants N % 16 == 0 (CUDA: 8)


def group_for(k: int) -> int | None:
    return next((g for g in GROUPS if k % g == 0), None)


def quantize_rtn(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes int32 [N, K] in 0..15, scale [N, K/g], integer zero [N, K/g]) on the min/max grid."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)
    lo = wg.amin(-1).clamp(max=0)
    hi = wg.amax(-1).clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    zero = (-lo / scale).round().clamp(0, 15)
    codes = (wg / scale[..., None] + zero[..., None]).round().clamp(0, 15)
    return codes.reshape(n, k).to(torch.int32), scale, zero


class Int4Linear(torch.nn.Module):
    """``y = x W^T (+ b)`` with W as tinygemm int4 codes and per-group scale/zero."""

    def __init__(self, linear: torch.nn.Linear, group: int, device: str) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        codes, scale, zero = quantize_rtn(linear.weight.detach(), group)
        self.cuda = device == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        # [K/g, N, 2]: scale and tinygemm's float zero (the value that code 8 stands for).
        sz = torch.stack([scale.t(), ((8 - zero) * scale).t()], dim=-1).contiguous()
        self.register_buffer("scale_zero", sz.to(device=device, dtype=self.dtype))
        if self.cuda:
            packed = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8).to(device)
            self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack(packed, INNER_K_TILES))
        else:
            self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, INNER_K_TILES))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().to(device), False)

    def dequantized(self) -> torch.Tensor:
        """W as the kernel sees it (float32 [N, K]): for tests."""
        eye = torch.eye(self.in_features, dtype=self.dtype, device=self.scale_zero.device)
        return self._mm(eye).t().float()

    def _mm(self, x2: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            return torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group, self.scale_zero)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scale_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._mm(x.reshape(-1, self.in_features).to(self.dtype)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)


def quantize_model(model: torch.nn.Module, device: str) -> list[int]:
    """Replace every eligible ``nn.Linear`` in place; return the sorted group sizes used."""
    used: set[int] = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                group = group_for(child.in_features)
                if group is None or child.out_features % OUT_MULTIPLE:
                    continue
                setattr(parent, name, Int4Linear(child, group, device))
                used.add(group)
    return sorted(used, reverse=True)
