"""Dequantize expressions in TVM TE: the one definition every compiled kernel inlines.

The formula is the one in ``desv_export/modes.py``; the numpy twin is
``desv_export.pack.dequantize``. Arithmetic is float16 like MLC-LLM's: ``q - zero`` is a small
integer (exact in float16) and the product with the float16 scale is rounded once, so the
result equals the calibrated checkpoint's weights bit for bit. The schedule rules in
``tvm_schedules/`` match the PrimFuncs that inlining this into a matmul or a gather produces.
"""

from __future__ import annotations

from tvm import te, tirx

from ..modes import QuantMode


def unpack_code(packed: te.Tensor, row, col, bits: int):
    """Code ``col`` of row ``row`` from uint32 words packed LSB first, ``32 // bits`` per word."""
    epw = 32 // bits
    shift = ((col % epw) * bits).astype("uint32")
    return (packed[row, col // epw] >> shift) & tirx.const((1 << bits) - 1, "uint32")


def dequantize_weight(
    mode: QuantMode,
    q_weight: te.Tensor,
    q_scale: te.Tensor,
    q_zero: te.Tensor | None,
    k: int,
    dtype: str = "float16",
) -> te.Tensor:
    """[N, K] weight of a quantized linear or embedding, from its stored tensors."""
    n = q_weight.shape[0]
    g = mode.group_size

    def weight(i, j):
        q = unpack_code(q_weight, i, j, mode.bits).astype(dtype)
        if mode.symmetric:
            zero = tirx.const(mode.max_int, dtype)
        else:
            zero = unpack_code(q_zero, i, j // g, mode.bits).astype(dtype)
        return (q - zero) * q_scale[i, j // g].astype(dtype)

    return te.compute((n, k), weight, name="dequantize")
