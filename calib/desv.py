"""DESV: a band of learnable diagonals on a weight's singular-value matrix (LSI is n = 0).

For a linear weight W [out, in] (torch layout), thin SVD W = U_r diag(S) Vh in float32, once,
r = min(out, in). The learnable I^D has 2n+1 rows of length r, zero initialised, and row k+n
sits on diagonal k of an r x r matrix B (k in -n..n):

    B[j + k, j] = I^D[k + n, j]   for 0 <= j + k < r

and the weight that is quantized is W' = W + U_r B Vh. Adding the correction to W (rather than
rebuilding U (diag(S) + B) Vh) keeps W' = W exactly at step 0, so the first loss equals LWC's.
n = 0 is LSI (learnable singular values). n is capped at r - 1 so the band fits in B.
"""

from __future__ import annotations

import torch


def band_indices(n: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dst, src): flat positions in B [r*r] and in I^D [(2n+1)*r] of every in-band entry."""
    dst, src = [], []
    j = torch.arange(r)
    for k in range(-n, n + 1):
        valid = j[(j + k >= 0) & (j + k < r)]
        dst.append((valid + k) * r + valid)
        src.append((k + n) * r + valid)
    return torch.cat(dst), torch.cat(src)


def band_matrix(band: torch.Tensor, n: int, r: int, index: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """B [r, r] from I^D [2n+1, r]; differentiable in ``band``."""
    dst, src = index if index is not None else band_indices(n, r)
    flat = band.new_zeros(r * r).index_copy(0, dst.to(band.device), band.reshape(-1)[src.to(band.device)])
    return flat.reshape(r, r)


class SVDBand(torch.nn.Module):
    """The learnable band of one weight; ``weight()`` returns W' = W + U B Vh."""

    def __init__(self, w: torch.Tensor, n_diag: int) -> None:
        super().__init__()
        w = w.detach().float()
        u, _, vh = torch.linalg.svd(w, full_matrices=False)
        self.r = min(w.shape)
        self.n = min(n_diag, self.r - 1)
        self.register_buffer("w", w, persistent=False)
        self.register_buffer("u", u, persistent=False)
        self.register_buffer("vh", vh, persistent=False)
        dst, src = band_indices(self.n, self.r)
        self.register_buffer("dst", dst.to(w.device), persistent=False)
        self.register_buffer("src", src.to(w.device), persistent=False)
        self.band = torch.nn.Parameter(torch.zeros(2 * self.n + 1, self.r, device=w.device))

    def matrix(self) -> torch.Tensor:
        return band_matrix(self.band, self.n, self.r, (self.dst, self.src))

    def weight(self) -> torch.Tensor:
        # (U B) Vh costs r^2 N + N r K multiply-adds, U (B Vh) r^2 K + N r K: take the cheaper.
        if self.n == 0:  # LSI: B is diagonal, U B = U * diag (bit-equal to the dense product)
            return self.w + (self.u * self.band[0]) @ self.vh
        b = self.matrix()
        if self.w.shape[0] <= self.w.shape[1]:
            return self.w + (self.u @ b) @ self.vh
        return self.w + self.u @ (b @ self.vh)
