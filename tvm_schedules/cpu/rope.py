"""RoPE on the CPU: the KV cache's ``fused_rope`` with each frequency's
cosine and sine computed once per token instead of once per element.

TVM's kernel (``relax.frontend.nn.llm.position_embedding.llama_rope_with_position_map``) splits
the fused qkv rows into q, k and v and rotates q and k, evaluating ``theta ** (2d / rotary)``
(``powf``), ``cos`` and ``sin`` for every (token, head, d): (heads + kv heads) x rotary calls
of each per token and layer, where rotary / 2 distinct frequencies exist. SmolLM2 (9 + 3 heads,
head_dim 64) makes 768 calls of each where 32 are needed, 23k per decoded token, all on one
core (the kernel is parallel over tokens only). ``fast_rope_cpu`` computes a token's
rotary / 2 cosines and sines into a table with TVM's own frequency expression
(``switch_rope_freq_func``, so llama3 scaling too), then rotates every head from it; the same
float32 operations in the same order, so the outputs equal TVM's bit for bit. Tokens run across
cores, as before.
"""

from __future__ import annotations

from typing import Any

from tvm import tirx
from tvm.relax.frontend.nn.llm.position_embedding import switch_rope_freq_func
from tvm.script import tirx as T

NAME = "fused_rope"  # the KV cache's RoPE kernel in a compiled model's IRModule

# Rope variants whose frequency depends on d only through ``2 d % rotary_dim`` (so d and
# d + rotary / 2 share one) and whose rotation pairs d with d +- rotary / 2: not gptj (pairs
# 2i, 2i + 1) nor longrope (per-dimension factors, another signature).
SUPPORTED = (None, "llama3")


def fast_rope_cpu(
    theta: float,
    scale: float,
    head_dim: int,
    num_q_heads: int,
    num_kv_heads: int,
    dtype: str,
    rope_scaling: dict[str, Any] | None = None,
    rotary_dim: int | None = None,
) -> tirx.PrimFunc | None:
    """Drop-in for ``llama_rope_with_position_map(...)``'s ``fused_rope`` (same six
    parameters: ``qkv [seq, heads + 2 kv_heads, head_dim]``, ``position_map [seq]`` int32,
    ``q``, ``k``, ``v``, ``apply_rope``), or None for a RoPE variant it does not cover."""
    rope_scaling = dict(rope_scaling or {})
    if rope_scaling.get("rope_type") not in SUPPORTED:
        return None
    rotary = head_dim if rotary_dim is None else rotary_dim
    half = rotary // 2
    if rotary % 2 or not 0 < rotary <= head_dim:
        return None
    fused_heads = num_q_heads + 2 * num_kv_heads
    freq_of = switch_rope_freq_func(rope_scaling)
    scale = tirx.const(scale, "float32")

    def rotated(x: T.Buffer, s, h, d, cos_t: T.Buffer, sin_t: T.Buffer) -> tirx.PrimExpr:
        # TVM's _rope with the table in place of cos_freq / sin_freq (index d mod rotary / 2)
        i = tirx.if_then_else(d < half, d, d - half)
        cos = cos_t[i] * x[s, h, d].astype("float32")
        sin = sin_t[i] * tirx.if_then_else(d < half, -x[s, h, d + half], x[s, h, d - half]).astype("float32")
        return (cos + sin).astype(dtype)

    def freq(pos: tirx.PrimExpr, d: tirx.PrimExpr, part: int) -> tirx.PrimExpr:
        # TVM's cos_freq (part 0) or sin_freq (1) of position pos, dimension d
        value = freq_of(pos * scale, d, rotary, theta, "float32")
        expr = value[part]
        for var, bound in value[2].items():
            expr = tirx.Let(var, bound, expr)
        return expr

    # pylint: disable=too-many-locals
    @T.prim_func(private=True, s_tir=True)
    def fused_rope(
        var_qkv: T.handle,
        var_position_map: T.handle,
        var_q: T.handle,
        var_k: T.handle,
        var_v: T.handle,
        apply_rope: T.int64,
    ):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int32()
        position_map_elem_offset = T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, fused_heads, head_dim), dtype)
        q = T.match_buffer(var_q, (seq_len, num_q_heads, head_dim), dtype)
        k = T.match_buffer(var_k, (seq_len, num_kv_heads, head_dim), dtype)
        v = T.match_buffer(var_v, (seq_len, num_kv_heads, head_dim), dtype)
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset)
        with T.sblock("root"):
            for s in T.parallel(seq_len):
                cos_t = T.alloc_buffer((half,), "float32", scope="local")
                sin_t = T.alloc_buffer((half,), "float32", scope="local")
                if apply_rope > 0:
                    for d in T.serial(half):
                        cos_t[d] = freq(position_map[s], d, 0)
                        sin_t[d] = freq(position_map[s], d, 1)
                for h, d in T.grid(fused_heads, head_dim):
                    if h < num_q_heads:
                        if apply_rope > 0 and d < rotary:
                            q[s, h, d] = rotated(qkv, s, h, d, cos_t, sin_t)
                        else:
                            q[s, h, d] = qkv[s, h, d]
                    elif h < num_q_heads + num_kv_heads:
                        if apply_rope > 0 and d < rotary:
                            k[s, h - num_q_heads, d] = rotated(qkv, s, h, d, cos_t, sin_t)
                        else:
                            k[s, h - num_q_heads, d] = qkv[s, h, d]
                    else:
                        v[s, h - (num_q_heads + num_kv_heads), d] = qkv[s, h, d]

    return fused_rope
