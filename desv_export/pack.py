"""Packing integer codes into uint32 words, MLC's symmetric quantizer, and THE dequantize.

Everything here works on one weight at a time (the exporter streams), vectorised: packing and
dequantize in numpy, the float work of quantizing in torch (one thread, blocks of rows that stay
in cache; torch converts float16 several times faster than numpy). It is the single definition
of the stored format (see ``modes`` for the layout):

* codes are packed along K, ``epw = 32 // bits`` per uint32 word, LSB first: element ``i`` of a
  row lands in word ``i // epw`` at bit ``(i % epw) * bits``; for 3 bits the top 2 bits of each
  word are unused. A row is padded to ``ngroups * G`` codes (and then to whole words) first.
* ``dequantize`` is the numpy reference every runtime check compares against.

MLC's symmetric presets (``q4f16_1``, ``q3f16_1``) are reproduced bit for bit: MLC computes in
float16 op by op, and TVM lowers ``round`` to round-half-to-even (LLVM ``nearbyint``, CUDA
``hrint``); we compute each op in float32 and round it to float16 before the next one. For +, -, * and / that double
rounding (float32 then float16) equals a single float16 rounding, because 24 >= 2 * 11 + 2.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np

from .modes import QuantMode, get_mode

# Rows are processed in blocks of about this many elements, in preallocated float32 buffers
# (2 MiB each, cache-sized, no page faults from fresh allocations): measured best on one core.
_BLOCK_ELEMS = 1 << 19


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: for cache-sized blocks its thread pool only costs (10-50x slower
    on a busy 2-core machine), and the exporter is one stream of small operations."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _row_blocks(n: int, row_elems: int) -> Iterator[tuple[int, int]]:
    rows = max(1, _BLOCK_ELEMS // max(row_elems, 1))
    for r0 in range(0, n, rows):
        yield r0, min(n, r0 + rows)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes [N, L] (values < 2**bits) into uint32 words [N, ceil(L / epw)]."""
    epw = 32 // bits
    n, length = codes.shape
    words = math.ceil(length / epw)
    c = codes
    if c.dtype != np.uint8:
        c = c.astype(np.uint8)
    if words * epw != length:
        c = np.concatenate([c, np.zeros((n, words * epw - length), np.uint8)], axis=1)
    if 8 % bits == 0:  # 2 and 4 bits: whole codes per byte; four little-endian bytes = one word
        per_byte = 8 // bits
        c = c.reshape(n, words * 4, per_byte)
        out8 = c[:, :, 0].copy()
        for j in range(1, per_byte):
            out8 |= c[:, :, j] << np.uint8(j * bits)
        return out8.view("<u4").astype(np.uint32, copy=False)
    step = bits
    if epw % 2 == 0 and 2 * bits <= 8:  # 3 bits: first pair codes into bytes (cheap uint8 work)
        c = c.reshape(n, -1, 2)
        c = c[:, :, 0] | (c[:, :, 1] << np.uint8(bits))
        epw, step = epw // 2, 2 * bits
    c = c.reshape(n, words, epw)
    out = c[:, :, 0].astype(np.uint32)
    tmp = np.empty_like(out)
    for j in range(1, epw):
        np.left_shift(c[:, :, j], np.uint32(j * step), out=tmp, dtype=np.uint32)
        np.bitwise_or(out, tmp, out=out)
    return out


def unpack_codes(words: np.ndarray, bits: int, length: int) -> np.ndarray:
    """Inverse of ``pack_codes``: uint32 [N, W] -> uint8 codes [N, length]."""
    epw = 32 // bits
    n = words.shape[0]
    shifts = (np.arange(epw, dtype=np.uint32) * bits)[None, None, :]
    codes = (words.astype(np.uint32)[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    return codes.astype(np.uint8).reshape(n, -1)[:, :length]


def quantize_sym(w: np.ndarray, mode: QuantMode) -> tuple[np.ndarray, np.ndarray]:
    """MLC's symmetric group quantizer: (codes uint8 [N, ng * G], scale float16 [N, ng]).

    Same maths as mlc_llm/quantization/group_quantization.py ``_quantize`` in float16:
    ``scale = max|w| / max_int``; ``q = clamp(round(w / scale + max_int), 0, 2 * max_int)``;
    padded columns (K not a multiple of G) are excluded from the max and get code 0, as MLC's
    ``pack_weight`` zero-pads them.

    Epsilon guard (ours; MLC has none): a group whose float16 scale is 0 (all-zero, or so small
    that max|w| / max_int underflows) would make MLC divide by zero. We give such a group the
    code ``max_int``, which dequantizes to ``(max_int - max_int) * 0 = 0``: the value MLC's
    dequantize yields there too, without the NaN-to-integer cast.
    """
    import torch

    w = np.asarray(w)
    n, k = w.shape
    g = mode.group_size
    ng = mode.num_groups(k)
    kp = ng * g
    codes = np.empty((n, kp), np.uint8)
    scale = np.empty((n, ng), np.float16)
    src = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float16))
    codes_t, scale_t = torch.from_numpy(codes), torch.from_numpy(scale)
    max_int = float(mode.max_int)
    with single_thread(), torch.no_grad():
        rows = max(1, _BLOCK_ELEMS // kp)
        x_buf = torch.zeros((rows, kp))  # padding stays 0: it never raises max|w|
        t_buf = torch.empty((rows, ng, g))
        h_buf = torch.empty((rows, ng, g), dtype=torch.float16)
        for r0, r1 in _row_blocks(n, kp):
            r = r1 - r0
            x, t, h = x_buf[:r], t_buf[:r], h_buf[:r]
            x[:, :k].copy_(src[r0:r1])
            xg = x.view(r, ng, g)
            torch.abs(xg, out=t)
            s16 = (t.amax(dim=-1) / max_int).half()
            scale_t[r0:r1] = s16
            denom = s16.float()
            denom[denom == 0] = float("inf")  # the guard: w / inf = 0 -> code max_int
            torch.div(xg, denom.unsqueeze(-1), out=t)
            h.copy_(t)  # float16 division: round the float32 quotient to float16
            t.copy_(h)
            t.add_(max_int)
            h.copy_(t)  # float16 addition
            t.copy_(h)
            t.round_().clamp_(0, 2 * max_int)  # round half to even, like TVM's round
            codes_t[r0:r1].copy_(t.view(r, kp))
    if kp != k:
        codes[:, k:] = 0
    return codes, scale


def pack(mode: QuantMode | str, codes: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Stored tensors {q_weight, q_scale(, q_zero)} of codes [N, ng * G], scale/zero [N, ng]."""
    mode = get_mode(mode) if isinstance(mode, str) else mode
    out = {
        "q_weight": pack_codes(codes, mode.bits),
        "q_scale": np.ascontiguousarray(scale, dtype=np.float16),
    }
    if not mode.symmetric:
        if zero is None:
            raise ValueError(f"{mode.name} is asymmetric: a zero point is required")
        out["q_zero"] = pack_codes(zero, mode.bits)
    return out


def quantize_pack_sym(w: np.ndarray, mode: QuantMode | str) -> dict[str, np.ndarray]:
    """An fp16 [N, K] weight -> MLC's q_weight/q_scale for ``q4f16_1`` / ``q3f16_1``."""
    mode = get_mode(mode) if isinstance(mode, str) else mode
    codes, scale = quantize_sym(w, mode)
    return pack(mode, codes, scale)


def codes_from_grid(w_hat: np.ndarray, scale: np.ndarray, zero: np.ndarray, mode: QuantMode) -> np.ndarray:
    """Recover the integer codes [N, ng * G] of a weight already on its asymmetric grid.

    ``q = round(w_hat / scale) + zero``; padded columns repeat the row's last code, as the
    calibration quantizer's padding repeats the last column. Raises ``ValueError`` unless every
    code is in range and dequantizing the codes (``float16((q - zero) * scale)``) gives back
    ``w_hat`` bit for bit.
    """
    import torch

    n, k = w_hat.shape
    g = mode.group_size
    ng = mode.num_groups(k)
    kp = ng * g
    if scale.shape != (n, ng) or zero.shape != (n, ng):
        raise ValueError(f"scale/zero shapes {scale.shape}/{zero.shape} do not match [{n}, {ng}]")
    src = torch.from_numpy(np.ascontiguousarray(w_hat, dtype=np.float16))
    s_all = torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float16))
    z_all = torch.from_numpy(np.ascontiguousarray(zero, dtype=np.uint8))
    codes = np.empty((n, kp), np.uint8)
    codes_t = torch.from_numpy(codes)
    bad = 0
    with single_thread(), torch.no_grad():
        rows = max(1, _BLOCK_ELEMS // kp)
        x_buf = torch.empty((rows, kp))
        m_buf = torch.empty((rows, ng, g))
        p_buf = torch.empty((rows, ng, g))
        h_buf = torch.empty((rows, ng, g), dtype=torch.float16)
        for r0, r1 in _row_blocks(n, kp):
            r = r1 - r0
            x, m, p, h = x_buf[:r], m_buf[:r], p_buf[:r], h_buf[:r]
            x[:, :k].copy_(src[r0:r1])
            if kp != k:
                x[:, k:] = x[:, k - 1 : k]
            xg = x.view(r, ng, g)
            s = s_all[r0:r1].float().unsqueeze(-1)
            torch.div(xg, s, out=m).round_()  # q - zero
            torch.mul(m, s, out=p)
            h.copy_(p)  # the float16 dequantize of the recovered codes
            back = h.view(r, kp)[:, :k].view(torch.int16)
            bad += int(torch.ne(back, src[r0:r1].view(torch.int16)).sum())
            m.add_(z_all[r0:r1].float().unsqueeze(-1))  # q
            lo, hi = torch.aminmax(m)
            if lo < 0 or hi > mode.qmax:
                raise ValueError(f"codes fall outside [0, {mode.qmax}]: the weight is not on its {mode.name} grid")
            codes_t[r0:r1].copy_(m.view(r, kp))
    if bad:
        raise ValueError(f"{bad} weights do not dequantize back to themselves: not on the {mode.name} grid")
    return codes


def _dequantize_codes(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray | float, k: int, mode: QuantMode) -> np.ndarray:
    """(codes - offset) * scale in float32, rounded once to float16: a float16 multiply."""
    n = codes.shape[0]
    ng = scale.shape[1]
    q = codes[:, : ng * mode.group_size].astype(np.float32).reshape(n, ng, mode.group_size)
    off = offset[..., None] if isinstance(offset, np.ndarray) else np.float32(offset)
    w = (q - off) * scale.astype(np.float32)[..., None]
    with np.errstate(over="ignore"):  # a float16 kernel overflows to inf there as well
        return w.reshape(n, -1)[:, :k].astype(np.float16)


def dequantize(mode: QuantMode | str, tensors: dict[str, np.ndarray], k: int) -> np.ndarray:
    """THE reference dequantize: stored tensors (by suffix) -> float16 weight [N, K].

    ``tensors`` holds ``q_weight`` and ``q_scale`` (and ``q_zero`` for asymmetric modes), or
    ``weight`` for ``q0f16``. Symmetric: ``w = (q - max_int) * scale``; asymmetric:
    ``w = (q - zero) * scale``; both one float16 multiply of an exact small integer.
    """
    mode = get_mode(mode) if isinstance(mode, str) else mode
    if not mode.quantized:
        return np.asarray(tensors["weight"], np.float16)[:, :k]
    scale = np.asarray(tensors["q_scale"])
    n, ng = scale.shape
    codes = unpack_codes(np.asarray(tensors["q_weight"]), mode.bits, ng * mode.group_size)
    if mode.symmetric:
        offset: np.ndarray | float = float(mode.max_int)
    else:
        offset = unpack_codes(np.asarray(tensors["q_zero"]), mode.bits, ng).astype(np.float32)
    return _dequantize_codes(codes, scale, offset, k, mode)
