"""The fused dequantize kernels our rules schedule, built the way the compile pipeline builds them.

``desv_export/model/quantized.py`` emits each quantized linear as one tensor-expression op,
the structure MLC-LLM reaches only after its FuseDequantize* passes:

* ``dequantize`` [N, K] float16: the expression of ``desv_export.model.dequantize``;
* ``matmul`` [B, S, N] += float32(x[B, S, K]) * float32(dequantize[N, K]);
* ``cast`` to float16 (and, when FuseOps folded it in, an elementwise epilogue such as the
  residual add).

Decode has x [1, 1, K]; batched decode x [b, 1, K]; prefill x [1, s, K]; ``b`` / ``s`` may be
symbolic (``tirx.Var``) as in the compiled model, or static as in tests and benchmarks. MLC's
float16-accumulating ``NT_matmul`` is available too (``accum_dtype="float16"``). The embedding
is ``dequantize`` + ``take`` gathering rows of the packed table. ``q0f16`` gives the float16
weight, cast to float32 in a ``dequantize`` block for the llvm build's float32 x, as the model
emits it. Building the same structure
here lets tests and benchmarks exercise the rules without compiling a whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from desv_export.model.dequantize import dequantize_weight
from desv_export.modes import QuantMode, get_mode
from desv_export.pack import pack_codes

Dim = int | tirx.Var


@dataclass(frozen=True)
class LinearShape:
    """One quantized linear of a model: ``out = x @ W.T`` with W [n, k]."""

    name: str
    n: int
    k: int


def llama_shapes(hidden: int, intermediate: int, vocab: int, heads: int = 0,
                 kv_heads: int = 0) -> list[LinearShape]:
    """The five linears of a LLaMA block plus lm_head, fused as MLC fuses them."""
    head_dim = hidden // heads if heads else 0
    qkv = hidden + 2 * kv_heads * head_dim if heads else 3 * hidden
    return [
        LinearShape("qkv_proj", qkv, hidden),
        LinearShape("o_proj", hidden, hidden),
        LinearShape("gate_up_proj", 2 * intermediate, hidden),
        LinearShape("down_proj", hidden, intermediate),
        LinearShape("lm_head", vocab, hidden),
    ]


LLAMA_7B = llama_shapes(4096, 11008, 32000, 32, 32)
LLAMA_13B = llama_shapes(5120, 13824, 32000, 40, 40)


def weight_placeholders(mode: QuantMode, n: int, k: int) -> list[te.Tensor]:
    """q_weight, q_scale (, q_zero) placeholders with the shapes of modes.QuantMode.shapes;
    q0f16's float16 ``weight``."""
    if not mode.quantized:
        return [te.placeholder((n, k), "float16", name="weight")]
    shapes = mode.shapes(n, k)
    out = [
        te.placeholder(shapes["q_weight"], "uint32", name="q_weight"),
        te.placeholder(shapes["q_scale"], "float16", name="q_scale"),
    ]
    if not mode.symmetric:
        out.append(te.placeholder(shapes["q_zero"], "uint32", name="q_zero"))
    return out


def dequant_matmul(mode: QuantMode | str, n: int, k: int, batch: Dim = 1, seq: Dim = 1,
                   epilogue: str | None = None, accum_dtype: str = "float32",
                   out_dtype: str = "float16", x_dtype: str = "float16") -> tirx.PrimFunc:
    """[batch, seq, n] = x [batch, seq, k] @ dequantize(W) [n, k]^T, x float16.

    ``x_dtype="float32"`` (with ``out_dtype="float32"``) is the llvm build's form: the weight
    is dequantized straight to float32 (float16-exact values, see ``dequantize_weight``), as
    ``desv_export/model/quantized.py`` emits it for float32 activations.

    The default is what ``desv_export/model/quantized.py`` emits: ``dequantize`` (float16),
    ``matmul`` accumulating in float32, then ``cast`` to ``out_dtype`` (no cast when it is
    float32, as for lm_head logits). ``accum_dtype="float16"`` gives MLC-LLM's ``NT_matmul``
    that accumulates in float16. ``epilogue="add"`` appends a residual add, the elementwise op
    FuseOps folds into o_proj / down_proj.
    """
    mode = get_mode(mode) if isinstance(mode, str) else mode
    params = weight_placeholders(mode, n, k)
    x = te.placeholder((batch, seq, k), x_dtype, name="x")
    if mode.quantized:
        q_zero = params[2] if len(params) == 3 else None
        w = dequantize_weight(mode, params[0], params[1], q_zero, k, x_dtype)
    elif x_dtype != "float16":  # q0f16 as quantized.py emits it: the cast a block of its own
        w = te.compute((n, k), lambda i, j: params[0][i, j].astype(x_dtype), name="dequantize")
    else:
        w = params[0]
    r = te.reduce_axis((0, k), name="k")
    if accum_dtype == "float16":
        out = te.compute((batch, seq, n), lambda b, s, j: te.sum(x[b, s, r] * w[j, r], axis=r),
                         name="NT_matmul")
    else:
        out = te.compute(
            (batch, seq, n),
            lambda b, s, j: te.sum(x[b, s, r].astype(accum_dtype) * w[j, r].astype(accum_dtype),
                                   axis=r),
            name="matmul",
        )
    if out.dtype != out_dtype:
        acc = out
        out = te.compute(acc.shape, lambda *i: acc[i].astype(out_dtype), name="cast")
    args = [x, *params]
    if epilogue == "add":
        res = te.placeholder((batch, seq, n), out_dtype, name="residual")
        prev = out
        out = te.compute((batch, seq, n), lambda b, s, j: prev[b, s, j] + res[b, s, j],
                         name="T_add")
        args.append(res)
    elif epilogue is not None:
        raise ValueError(f"unknown epilogue {epilogue!r}")
    func = te.create_prim_func([*args, out])
    return func.with_attr("global_symbol", "main")


def dequant_take(mode: QuantMode | str, vocab: int, hidden: int,
                 seq: Dim = 1) -> tirx.PrimFunc:
    """``take`` [seq, hidden] = dequantize(table)[ids] (int32 ids, read as int64 indices), the
    ``dequantize`` still a block of its own as the model emits it; the rule inlines it."""
    mode = get_mode(mode) if isinstance(mode, str) else mode
    params = weight_placeholders(mode, vocab, hidden)
    q_zero = params[2] if len(params) == 3 else None
    ids = te.placeholder((seq,), "int32", name="input_ids")
    w = dequantize_weight(mode, params[0], params[1], q_zero, hidden, "float16")
    out = te.compute((seq, hidden), lambda i, j: w[ids[i].astype("int64"), j], name="take")
    func = te.create_prim_func([ids, *params, out])
    return func.with_attr("global_symbol", "main")


# ----------------------------------------------------------------------------- test data
# The numpy reference these are checked against is desv_export.pack.dequantize (contract 3).


def random_quantized(mode: QuantMode | str, n: int, k: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random packed tensors for a [n, k] weight of ``mode`` (codes, scales, zeros in range).

    Padding codes (columns >= k) are random too: kernels must never read them into results.
    """
    mode = get_mode(mode) if isinstance(mode, str) else mode
    shapes = mode.shapes(n, k)
    epw = mode.elems_per_word

    def codes(words: int) -> np.ndarray:
        return pack_codes(rng.integers(0, 2**mode.bits, (n, words * epw)), mode.bits)

    out = {
        "q_weight": codes(shapes["q_weight"][1]),
        "q_scale": (rng.uniform(0.5, 1.5, shapes["q_scale"]) / 2**mode.bits).astype("float16"),
    }
    if not mode.symmetric:
        out["q_zero"] = codes(shapes["q_zero"][1])
    return out
