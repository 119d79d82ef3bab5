"""The float16 linear of the llvm build (q0f16, and the float16 embedding the asymmetric modes
keep as their tied lm_head), as ``desv_export/model/quantized.py`` emits it: the weight cast
to float32 in a ``dequantize`` block of its own, then the float32 matmul. The quantized forms
are ``tvm_schedules.workloads.dequant_matmul``; this one only the CPU rules see in this shape
(the CUDA build keeps float16 activations)."""

from __future__ import annotations

from tvm import te, tirx


def float16_matmul(n: int, k: int, epilogue: str | None = None) -> tirx.PrimFunc:
    """[1, 1, n] = x [1, 1, k] (float32) @ float32(W [n, k] float16)^T, optionally ``+ residual``."""
    x = te.placeholder((1, 1, k), "float32", name="x")
    w = te.placeholder((n, k), "float16", name="weight")
    wf = te.compute((n, k), lambda i, j: w[i, j].astype("float32"), name="dequantize")
    r = te.reduce_axis((0, k), name="k")
    out = te.compute((1, 1, n), lambda b, s, j: te.sum(x[b, s, r] * wf[j, r], axis=r),
                     name="matmul")
    args = [x, w]
    if epilogue == "add":
        res = te.placeholder((1, 1, n), "float32", name="residual")
        prev = out
        out = te.compute((1, 1, n), lambda b, s, j: prev[b, s, j] + res[b, s, j], name="T_add")
        args.append(res)
    elif epilogue is not None:
        raise ValueError(f"unknown epilogue {epilogue!r}")
    return te.create_prim_func([*args, out]).with_attr("global_symbol", "main")
