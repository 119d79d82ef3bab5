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
    """[N, K] weight of a quantized linear or embedding, from its stored tensors.

    ``dtype="float32"`` (the llvm build) gives the same values computed in float32 with one
    rounding to float16: ``q - zero`` is an integer below 2^4 in magnitude and the float16
    scale has an 11-bit significand, so their float32 product is exact, and rounding it to
    float16 is what the float16 multiply does. The result is bit-identical to the float16 form,
    but a CPU without float16 arithmetic pays one float16 round trip per code instead of
    three (the subtraction and both conversions would each round through float16).
    """
    n = q_weight.shape[0]
    g = mode.group_size
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dequantize to {dtype}: float16 or float32 only")

    if dtype == "float32":
        # Codes as a stage of their own, which the CPU GEMV may run as a phase of its own
        # (tvm_schedules/cpu/gemv.py); every other schedule inlines it.
        codes = te.compute((n, k), lambda i, j: unpack_code(q_weight, i, j, mode.bits).astype(dtype),
                           name="unpack")

    def weight(i, j):
        if dtype == "float32":
            q = codes[i, j]
        else:
            q = unpack_code(q_weight, i, j, mode.bits).astype(dtype)
        if mode.symmetric:
            zero = tirx.const(mode.max_int, dtype)
        else:
            zero = unpack_code(q_zero, i, j // g, mode.bits).astype(dtype)
        w = (q - zero) * q_scale[i, j // g].astype(dtype)
        return w if dtype == "float16" else w.astype("float16").astype(dtype)

    return te.compute((n, k), weight, name="dequantize")
