"""Fast llvm (CPU) replacements for the paged KV cache's ragged / paged prefill and decode attention.

Why: on llvm, ``TIRPagedKVCache`` adds ``_attention_prefill_ragged_cpu`` (global
``batch_prefill_ragged_kv``) and ``_attention_prefill_cpu`` (``batch_prefill_paged_kv_cpu``),
which are plain serial scalar loops: one thread, no SIMD, and with ``causal=1`` every masked
key is still scored (then overwritten by the mask constant). For SmolLM2-135M and a 128-token
prompt they took about half of the prefill (3.6 ms per layer).

What makes these faster (SmolLM2's shapes, 128 tokens, causal, TVM_NUM_THREADS=2 on a 2-core
host busy with other work: ragged 2.6 -> 0.66 ms, 0.44 ms on one thread; paged 9.6 -> ~1.0 ms):

* one ``T.parallel`` loop over (query token, q head) pairs; a work unit is one query token and
  the few q heads that share a KV head (3 for SmolLM2), so each loaded key and value vector
  feeds several FMA chains. Rows are taken in zigzag order (0, n-1, 1, n-2, ...): TVM's CPU
  runtime hands each thread a contiguous range of the parallel loop, and this gives every range
  about the same causal work;
* every per-unit buffer (query rows, score rows, accumulators) is allocated inside the parallel
  body, so it is thread-private;
* keys are first copied, transposed to ``[kv_head, head_dim, token]`` float32 (RoPE applied
  once per key there when ``rotary_mode == 1``, not once per (query, head, key)), so the scores
  of 64 consecutive keys accumulate over head_dim in registers with unit-stride vector FMAs;
  ``P @ V`` is vectorised over head_dim (unit stride in ``v`` / the pages);
* masked-out keys are skipped: with causal masking a query only visits the keys it may see.

Semantics kept (results agree with TVM's kernels to float32 rounding): the same parameter list,
dtypes, buffer shapes / symbolic vars; scores ``(q.k * float32(log2 e)) * sm_scale`` with
float32 accumulation; the ragged kernel's single max subtraction (max starts at -5e4, the
denominator starts at ``1.0 * exp2(-5e4 - m)``, weights ``exp2(s - m) / d``, ``P @ V``
accumulated in key order) and the paged kernel's per-key online softmax (m = -5e4, d = 1.0);
``lse = m + log2(d)`` in log2 units; the ``rotary_mode == 1`` (inline RoPE) branch, built from
the wheel's own ``_rope`` helper; ``exp2`` / ``log2`` are libm's, as in the originals.
Masked keys are not computed, but their contribution in the originals (score ``-5e4 * log2 e *
sm_scale`` in the ragged kernel, ``-5e4`` in the paged one, whose ``exp2`` underflows to 0 in
any realistic row) is still added analytically, so a row that sees no key at all gives what the
ragged original gives (the paged original reads an uninitialised max there). With up to 64
visible keys the ragged kernel's results are bit-identical to TVM's; beyond that the softmax
sum is added in a different order (last-bit differences).

The decode kernel (``_attention_decode_cpu``, ``batch_decode_paged_kv_cpu``) is replaced the
same way (see ``fast_attention_decode_cpu``): SmolLM2, one sequence, host ``-mcpu``,
TVM_NUM_THREADS=2: 94 -> 11.5 us at 128 tokens of context, 753 -> 53 us at 1024 (Zen 5).
Reworked on 2026-12-03, 2.6-2.8x (Zen 4, TVM_NUM_THREADS=2, ``benchmarks/cpu_attention.py
--baseline`` with the previous version, the two alternating; median us): 17.7 -> 6.8 at 128
keys, 33.2 -> 11.9 at 256, 132 -> 48 at 1,024, 578 -> 210 at 4,096
(``benchmarks/results/cpu_attention_amd_epyc_znver4.md``). Three changes, each seen in the
disassembly: the q.k dot product is one expression folded by subvector shuffles
(``_dot``), P @ V adds 8 keys per store of its accumulators (``_add_weighted_values``), and
exp2 is a polynomial that vectorises (``_exp2_poly``; libm's was called once per lane).

In a model the KV cache is not in the caches when a layer's decode attention runs (the
weights stream through them in between): with the pages cold the kernel took 4-5x its
in-cache time (256 keys: 8.4 -> 33.9 us), which is what a decode step measured (~35 us per
layer). So decode prefetches each key and value row a page ahead (``_prefetch_row``), and
past ``_PART_KEYS`` keys splits every unit's keys into parts of whole pages, merged by their
softmax sums (``_merge_key_splits``, flash-decoding's split-K), because SmolLM2's 3 units left
one of 2 cores idle half the time. Cold pages (rotating page pools larger than the L3, old
and new kernel interleaved; a script not kept in the repo; Zen 4, 2 threads): 128 keys 28.2 ->
23.8 us, 256 51.5 -> 40.9, 1,024 205 -> 127, 4,096 558 -> 432; in cache (two runs of
``benchmarks/cpu_attention.py --baseline``, the second in its results file) 0.88-0.91x at 128
keys, 1.06-1.24x at 1,024, 1.14x at 4,096: the prefetches cost when nothing is missed. SmolLM2
q4f16_1 decode, old and new library alternating: 13.25 -> 12.42 ms/token at a 1,500-token
prompt, within noise at 128 (9.31 / 9.26). The parts' sum drops the originals' virtual initial
element (m = -5e4, d = 1) from all but the first part, so it is counted once, as unsplit.

``UseFastCPUAttention`` swaps the kernels, and ``rope.py``'s RoPE, into a compiled model's IRModule.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import tvm
from tvm import IRModule, tirx
from tvm.relax.frontend.nn.llm._kernel_common import _rope
from tvm.script import tirx as T

# absolute: benchmarks/cpu_attention.py loads an old copy of this file on its own, as a baseline
from tvm_schedules.cpu.rope import NAME as ROPE_NAME
from tvm_schedules.cpu.rope import fast_rope_cpu

logger = logging.getLogger(__name__)

_LOG2E = math.log2(math.exp(1))  # the originals' factor, 1.4426950408889634
_NEG = -5e4  # the originals' "minus infinity": initial max, and the paged kernel's masked score
_PAD = -3.0e38  # score of a padding lane of a key block: never the max, exp2(_PAD - m) == 0
_EXP2_ZERO = -150.0  # exp2f(x) == 0 for x < -150: 2^x is under half the smallest denormal
_REG_FLOATS = 256  # floats of accumulators per work unit: 16 AVX-512 registers
_PV_KEYS = 8  # keys per store of the P @ V accumulators
_LANES = 16  # float32 lanes of the decode kernel's partial dot products (one AVX-512 register)
# decode key splits: a part per _PART_KEYS keys (at most _MAX_PARTS) while the batch has fewer
# than _SPLIT_BELOW_UNITS work units; a part costs ~0.7 us of its own, and parts of 128 or 256
# keys were slower than none up to 256 / 512 keys (in cache, 2 threads)
_PART_KEYS = 512
_PREFETCH_KEYS = 16  # keys ahead that the decode kernel prefetches (one page)
_MAX_PARTS = 8
_SPLIT_BELOW_UNITS = 16

RAGGED_NAME = "batch_prefill_ragged_kv"
PAGED_NAME = "batch_prefill_paged_kv_cpu"
DECODE_NAME = "batch_decode_paged_kv_cpu"


def _exp2_or_zero(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``exp2(x)``, bit for bit, without calling libm's slow underflow path when it is 0."""
    return T.if_then_else(x < T.float32(_EXP2_ZERO), T.float32(0), T.exp2(x))


def _initial_weight(decode: bool, first) -> tirx.PrimExpr:
    """The weight of the originals' initial (m, d) = (-5e4, 1) in a unit's softmax sum: 1, but
    in decode only in a key split's ``first`` part, so that the parts' sum counts it once."""
    return T.if_then_else(first, T.float32(1), T.float32(0)) if decode else T.float32(1)


def _page_slot(
    page_values: tirx.Buffer, j: tirx.PrimExpr, vbase: tirx.PrimExpr, page_size: int, kv: int, hk: tirx.PrimExpr
) -> list:
    """Leading indices into the pages ``[page, kv, hk, slot]`` of key ``j``'s key (``kv`` 0) or
    value (1) row, for a sequence whose pages start at ``page_values[vbase]``."""
    page = tirx.BufferLoad(page_values, [vbase + tirx.floordiv(j, page_size)])
    return [page, kv, hk, tirx.floormod(j, page_size)]


def _value(
    vsrc: tirx.Buffer, page_values: tirx.Buffer, j: tirx.PrimExpr, vbase: tirx.PrimExpr, hk: tirx.PrimExpr,
    i: tirx.PrimExpr, page_size: int, paged: bool,
) -> tirx.PrimExpr:
    """Element ``i`` of key ``j``'s value row, float32: from its page (``paged``) or from the
    ragged ``v[vbase + j, hk]``."""
    if paged:
        value = tirx.BufferLoad(vsrc, [*_page_slot(page_values, j, vbase, page_size, 1, hk), i])
    else:
        value = tirx.BufferLoad(vsrc, [vbase + j, hk, i])
    return tirx.Cast("float32", value)


def _prefetch_row(
    pages: tirx.Buffer, page_values: tirx.Buffer, j: tirx.PrimExpr, vbase: tirx.PrimExpr, hk: tirx.PrimExpr,
    kv: int, page_size: int, d: int,
) -> None:
    """Prefetch the key (``kv`` 0) or value (1) row of key ``j`` into the caches.

    Why: a KV head's rows of one page are 4 KB at most, and consecutive pages are anywhere in
    the pool, so the hardware prefetcher starts again at every page; in a model the KV cache
    is not in the caches (the weights stream through them between layers), and the decode
    kernel then waited on memory (4-5x its in-cache time)."""
    row = _page_slot(page_values, j, vbase, page_size, kv, hk)
    line = 64 * 8 // tvm.DataType(pages.dtype).bits  # elements per 64-byte cache line
    for c in range(0, d, line):
        address = T.address_of(tirx.BufferLoad(pages, [*row, c]))
        T.evaluate(tirx.call_intrin("void", "tirx.prefetch", address, 0, 3, 1))


def _add_weighted_values(
    o: tirx.Buffer,
    s: tirx.Buffer,
    vsrc: tirx.Buffer,
    page_values: tirx.Buffer,
    g: tirx.PrimExpr,
    i: tirx.PrimExpr,
    j0: tirx.PrimExpr,
    count: int,
    vbase: tirx.PrimExpr,
    hk: tirx.PrimExpr,
    page_size: int,
    paged: bool,
) -> tirx.PrimExpr:
    """``o[g, i]`` plus the values of keys ``j0 .. j0 + count - 1`` weighted by ``s[g, j]``,
    added in key order (the same sum, rounding for rounding, as one key at a time).

    Why one expression for several keys: the accumulators live in a workspace buffer (TVM
    allocates a parallel body's buffers through the runtime), so LLVM stores every one of
    them back after each key; this stores them once per ``count`` keys.
    """
    acc = tirx.BufferLoad(o, [g, i])
    for t in range(count):
        value = _value(vsrc, page_values, j0 + t, vbase, hk, i, page_size, paged)
        acc = acc + value * tirx.BufferLoad(s, [g, j0 + t])
    return acc


def _dot(q_loc: tirx.Buffer, g: tirx.PrimExpr, key: tirx.Buffer, prefix: tuple, d: int) -> tirx.PrimExpr:
    """``q_loc[g, :] . key[*prefix, :]`` in float32 as one expression: ``_LANES``-wide products
    summed over head_dim in order, then the lanes added pairwise by halves (``vectorlow`` /
    ``vectorhigh``: LLVM subvector shuffles).

    Why an expression: accumulated in a local buffer and folded in place, the partial sums
    were stored to memory after every FMA and each half reloaded from the stack, forwarded
    one float at a time: ~70 instructions and 22 stores per key and KV head, where this is
    the loads, the FMAs and 8 shuffles / adds per q head.
    """
    acc = None
    for c in range(d // _LANES):
        ramp = tirx.Ramp(c * _LANES, 1, _LANES)
        k = tirx.BufferLoad(key, [*prefix, ramp])
        if key.dtype != "float32":
            k = tirx.Cast(f"float32x{_LANES}", k)
        term = tirx.BufferLoad(q_loc, [g, ramp]) * k
        acc = term if acc is None else acc + term
    lanes = _LANES
    while lanes > 2:
        lanes //= 2
        acc = T.vectorlow(f"float32x{lanes}", acc) + T.vectorhigh(f"float32x{lanes}", acc)
    return tirx.Shuffle([acc], [0]) + tirx.Shuffle([acc], [1])


# Cephes' exp2f: 2^f = 1 + f * P(f) on [-0.5, 0.5], relative error under 2e-7
_EXP2_P = (1.535336188319500e-4, 1.339887440266574e-3, 9.618437357674640e-3,
           5.550332471162809e-2, 2.402264791363012e-1, 6.931472028550421e-1)


def _exp2_poly(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``2^x`` for ``x <= 0`` in arithmetic LLVM vectorises: ``2^round(x)`` built in the exponent
    bits, times Cephes' polynomial of the rest; 0 below -126 (where exp2f is denormal or 0,
    against a softmax sum of at least 1)."""
    n = T.round(x)
    f = x - n
    p = T.float32(_EXP2_P[0])
    for c in _EXP2_P[1:]:
        p = p * f + T.float32(c)
    scale = T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))
    return T.Select(x < T.float32(-126), T.float32(0), (T.float32(1) + f * p) * scale)


@T.macro
def _sequence_of(seq: T.Buffer, indptr: T.Buffer, batch_size: T.int32, x: T.int32):
    """``seq[0]`` = the sequence whose ``indptr`` range holds ``x`` (``batch_size``: none)."""
    seq[0] = 0
    for bb in range(batch_size):
        if indptr[bb + 1] <= x:
            seq[0] = seq[0] + 1


def _unit_heads(p: tirx.PrimExpr, units: int, n_sub: int, group_size: int, gs: int):
    """(KV head, first q head) of work unit ``p``: ``gs`` q heads that share one KV head."""
    hk = p % units // n_sub
    return hk, hk * group_size + p % n_sub * gs


def _zigzag_row(ordinal: tirx.PrimExpr, n: tirx.PrimExpr) -> tirx.PrimExpr:
    """Rows 0, n-1, 1, n-2, ...: TVM hands each thread a contiguous range of the parallel
    loop, and this gives every range about the same causal work."""
    return T.if_then_else(ordinal % 2 == 0, ordinal // 2, n - 1 - ordinal // 2)


def _paged_len(p_beg: tirx.PrimExpr, p_end: tirx.PrimExpr, page_size: int, last: tirx.PrimExpr):
    """Keys of a sequence holding pages [p_beg, p_end) whose last page holds ``last``."""
    return T.if_then_else(p_beg != p_end, (p_end - p_beg - 1) * page_size + last, 0)


def _visible(causal, k_n, q_n, pos) -> tirx.PrimExpr:
    """Keys query ``pos`` (of ``q_n``) may see: a prefix, as _causal_mask's
    ``col < kv_len - qo_len + row + 1``."""
    return T.if_then_else(causal > 0, T.min(T.max(k_n - q_n + pos + 1, 0), k_n), k_n)


def _tiling(group_size: int, d_v: int) -> tuple[int, int]:
    """(q heads per work unit, keys per score block).

    The q heads of a unit share one KV head, so each loaded key / value vector feeds that many
    FMA chains; the unit's score block (heads x keys) and output rows (heads x d_v) must stay in
    registers. A lone head gets 128-key blocks (8 independent FMA chains) instead of 64.
    """
    heads = 1
    for g in range(min(group_size, 4), 0, -1):
        if group_size % g == 0 and g * max(64, d_v) <= _REG_FLOATS:
            heads = g
            break
    return heads, 128 if heads == 1 else 64


def _attention_unit(
    paged: bool,
    gs: int,
    kb: int,
    d_qk: int,
    d_v: int,
    dtype: str,
    page_size: int,
    rope_scaling: dict[str, Any],
    decode: bool = False,
) -> Any:
    """The per-unit body shared by the kernels: ``gs`` q heads ``hbase..`` of one query row.

    ``kt[hk, :, kbase + j]`` is visible key ``j`` (transposed, float32), ``n`` keys are visible
    out of ``k_n``; value rows come from ``v[vbase + j, hk]`` (ragged) or from the pages
    (``page_values[vbase + j // page_size]``). Static ``paged`` picks each kernel's numerics.

    With static ``decode`` (paged, one query that sees all its keys) there is no ``kt``: a key
    is used by one unit only, so transposing it would cost more than the scores themselves.
    Each key row is read straight from the pages (unit stride over head_dim; RoPE'd once into a
    local row, at position ``k_pos0 + j``, when ``rotary_mode == 1``) and dotted with the
    ``gs`` query rows in ``_LANES``-wide partial sums, folded by halves at the end (so
    ``d_qk`` must be a multiple of ``_LANES``; ``fast_attention_decode_cpu`` checks).
    """
    # decode: a polynomial that vectorises (libm's exp2f is called once per lane, ~15 % of the
    # kernel); prefill keeps libm's, bit for bit
    exp2 = _exp2_poly if decode else T.exp2

    @T.macro
    def score_blocks(q_loc, kt, s, hk, n, kbase, sm_scale):
        # prefill: scores of the visible keys, kb at a time, kept in registers over head_dim;
        # padding lanes of the last block get _PAD
        for jb in range((n + kb - 1) // kb):
            acc = T.alloc_buffer((gs, kb), "float32", scope="local")
            for g in T.unroll(gs):
                for j in T.vectorized(kb):
                    acc[g, j] = T.float32(0)
            for dd in range(d_qk):
                for g in T.unroll(gs):
                    for j in T.vectorized(kb):
                        acc[g, j] = acc[g, j] + q_loc[g, dd] * kt[hk, dd, kbase + jb * kb + j]
            for g in T.unroll(gs):
                for j in T.vectorized(kb):
                    if paged:
                        s[g, jb * kb + j] = T.Select(jb * kb + j < n, acc[g, j] * (sm_scale * _LOG2E), T.float32(_PAD))
                    else:
                        s[g, jb * kb + j] = T.Select(jb * kb + j < n, acc[g, j] * _LOG2E * sm_scale, T.float32(_PAD))

    # pylint: disable=too-many-arguments,too-many-locals
    @T.macro
    def unit(
        q, q_rope_position, kt, vsrc, page_values, output, lse,
        row, hk, hbase, n, k_n, kbase, vbase, s_len, k_pos0,
        rotary_mode, rope_scale, rope_theta, sm_scale,
        part_o=None, part_m=None, part_den=None, part=None, first=True, whole=True,
    ):
        q_loc = T.alloc_buffer((gs, d_qk), "float32")
        if rotary_mode == 1:
            for g, dd in T.grid(gs, d_qk):
                q_loc[g, dd] = T.Cast(
                    "float32",
                    _rope(
                        q, q_rope_position[row], d_qk, rope_theta, rope_scale, (row, hbase + g, dd), dtype,
                        rope_scaling,
                    ),
                )
        else:
            for g in range(gs):
                for dd in T.vectorized(d_qk):
                    q_loc[g, dd] = T.Cast("float32", q[row, hbase + g, dd])

        s = T.alloc_buffer((gs, s_len), "float32")
        if decode:
            # the scores in key order; padding up to whole kb blocks gets _PAD
            for j in range(n):
                page: T.let[T.int32] = page_values[vbase + j // page_size]
                if rotary_mode == 1:
                    k_loc = T.alloc_buffer((d_qk,), "float32", scope="local")
                    for dd in range(d_qk):
                        k_loc[dd] = T.Cast(
                            "float32",
                            _rope(
                                vsrc, k_pos0 + j, d_qk, rope_theta, rope_scale, (page, 0, hk, j % page_size, dd),
                                dtype, rope_scaling,
                            ),
                        )
                    for g in T.unroll(gs):
                        s[g, j] = _dot(q_loc, g, k_loc, (), d_qk) * (sm_scale * _LOG2E)
                    # in both branches: after the if, TIR's common subexpression pass bound a
                    # key-row offset in one branch and used it in the other
                    _prefetch_row(vsrc, page_values, T.min(j + _PREFETCH_KEYS, n - 1), vbase, hk, 0, page_size, d_qk)
                else:
                    for g in T.unroll(gs):
                        s[g, j] = _dot(q_loc, g, vsrc, (page, 0, hk, j % page_size), d_qk) * (sm_scale * _LOG2E)
                    _prefetch_row(vsrc, page_values, T.min(j + _PREFETCH_KEYS, n - 1), vbase, hk, 0, page_size, d_qk)
            for g, j in T.grid(gs, (n + kb - 1) // kb * kb - n):
                s[g, n + j] = T.float32(_PAD)
        else:
            score_blocks(q_loc, kt, s, hk, n, kbase, sm_scale)

        # per head: max, exp2(s - m) in place, denominator; the masked keys' share analytically
        m = T.alloc_buffer((gs,), "float32", scope="local")
        den = T.alloc_buffer((gs,), "float32", scope="local")
        e_masked = T.alloc_buffer((gs,), "float32", scope="local")
        for g in range(gs):
            mx = T.alloc_buffer((kb,), "float32", scope="local")
            for j in T.vectorized(kb):
                mx[j] = T.float32(_NEG)
            for jb in range((n + kb - 1) // kb):
                for j in T.vectorized(kb):
                    mx[j] = T.max(mx[j], s[g, jb * kb + j])
            if paged:
                m[g] = T.float32(_NEG)  # a masked key leaves the online max as it is
            else:
                m[g] = T.if_then_else(n < k_n, T.max(T.float32(_NEG), _NEG * _LOG2E * sm_scale), T.float32(_NEG))
            for j in range(kb):
                m[g] = T.max(m[g], mx[j])
            ps = T.alloc_buffer((kb,), "float32", scope="local")
            for j in T.vectorized(kb):
                ps[j] = T.float32(0)
            # whole blocks vectorised; the tail apart, so no padding lane goes through exp2
            for jb in range(n // kb):
                for j in T.vectorized(kb):
                    s[g, jb * kb + j] = exp2(s[g, jb * kb + j] - m[g])
                    ps[j] = ps[j] + s[g, jb * kb + j]
            for j in range(n % kb):
                s[g, n // kb * kb + j] = _exp2_or_zero(s[g, n // kb * kb + j] - m[g])
                ps[j] = ps[j] + s[g, n // kb * kb + j]
            tot = T.alloc_buffer((1,), "float32", scope="local")
            tot[0] = T.float32(0)
            for j in range(kb):
                tot[0] = tot[0] + ps[j]
            if paged:
                e_masked[g] = T.if_then_else(n < k_n, _exp2_or_zero(T.float32(_NEG) - m[g]), T.float32(0))
            else:
                e_masked[g] = T.if_then_else(n < k_n, _exp2_or_zero(_NEG * _LOG2E * sm_scale - m[g]), T.float32(0))
            den[g] = _initial_weight(decode, first) * _exp2_or_zero(T.float32(_NEG) - m[g]) + (
                tot[0] + T.Cast("float32", k_n - n) * e_masked[g]
            )
            if not paged:
                # the ragged kernel weighs each value by exp2(s - m) / d
                for jb in range((n + kb - 1) // kb):
                    for j in T.vectorized(kb):
                        s[g, jb * kb + j] = s[g, jb * kb + j] / den[g]

        # P @ V in key order, vectorised over head_dim, each value row used by all gs heads;
        # _PV_KEYS keys per store of the accumulators (see _add_weighted_values)
        o = T.alloc_buffer((gs, d_v), "float32", scope="local")
        for g in T.unroll(gs):
            for i in T.vectorized(d_v):
                o[g, i] = T.float32(0)
        for jb in range(n // _PV_KEYS):
            if decode:
                for t in range(_PV_KEYS):
                    _prefetch_row(
                        vsrc, page_values, T.min(jb * _PV_KEYS + t + _PREFETCH_KEYS, n - 1), vbase, hk, 1, page_size, d_v
                    )
            for g in T.unroll(gs):
                for i in T.vectorized(d_v):
                    o[g, i] = _add_weighted_values(
                        o, s, vsrc, page_values, g, i, jb * _PV_KEYS, _PV_KEYS, vbase, hk, page_size, paged
                    )
        for j in range(n % _PV_KEYS):
            for g in T.unroll(gs):
                for i in T.vectorized(d_v):
                    o[g, i] = _add_weighted_values(
                        o, s, vsrc, page_values, g, i, n // _PV_KEYS * _PV_KEYS + j, 1, vbase, hk, page_size, paged
                    )
        for g in range(gs):
            if e_masked[g] > T.float32(0):  # only when no key is visible or scores are ~ -5e4
                for j in range(k_n - n):
                    for i in T.vectorized(d_v):
                        # the paged kernel divides by den at the end, the ragged one weighs each value
                        o[g, i] = o[g, i] + _value(vsrc, page_values, n + j, vbase, hk, i, page_size, paged) * (
                            e_masked[g] if paged else e_masked[g] / den[g]
                        )
            if whole:
                for i in T.vectorized(d_v):
                    if paged:
                        output[row, hbase + g, i] = T.Cast(dtype, o[g, i] / den[g])
                    else:
                        output[row, hbase + g, i] = T.Cast(dtype, o[g, i])
                lse[row, hbase + g] = m[g] + T.log2(den[g])
            else:  # decode, one part of a key split: merged by _merge_key_splits
                for i in T.vectorized(d_v):
                    part_o[part, g, i] = o[g, i]
                part_m[part, g] = m[g]
                part_den[part, g] = den[g]

    return unit


def fast_attention_prefill_ragged_cpu(
    h_kv: int, h_q: int, d_qk: int, d_v: int, dtype: str, rope_scaling: dict[str, Any] | None = None
) -> tirx.PrimFunc:
    """Drop-in for ``_attention_prefill_ragged_cpu(h_kv, h_q, d_qk, d_v, dtype, rope_scaling)``.

    Same 14 parameters and buffers (``q [qo_len, h_q, d_qk]``, ``q_indptr [batch_size + 1]``,
    ``k [kv_len, h_kv, d_qk]``, ``v [kv_len, h_kv, d_v]``, ``kv_indptr``, ``q_rope_position
    [qo_len]``, ``k_rope_pos_offset [batch_size]``, ``output [qo_len, h_q, d_v]``, ``lse
    [qo_len, h_q]`` float32, then ``causal, rotary_mode, rope_scale, rope_theta, sm_scale``).
    """
    rope_scaling = dict(rope_scaling or {})
    group_size = h_q // h_kv
    gs, kb = _tiling(group_size, d_v)
    n_sub = group_size // gs
    units = h_kv * n_sub  # work units per query row
    unit = _attention_unit(False, gs, kb, d_qk, d_v, dtype, 1, rope_scaling)

    # pylint: disable=too-many-locals,too-many-statements
    @T.prim_func(s_tir=True)
    def batch_prefill_ragged_kv(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_k: T.handle,
        var_v: T.handle,
        var_kv_indptr: T.handle,
        var_q_rope_position: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_output: T.handle,
        var_lse: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        batch_size = T.int32()
        qo_len = T.int32()
        kv_len = T.int32()
        q_indptr_elem_offset = T.int32()
        kv_indptr_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()

        q = T.match_buffer(var_q, (qo_len, h_q, d_qk), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        k = T.match_buffer(var_k, (kv_len, h_kv, d_qk), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d_v), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_elem_offset)
        q_rope_position = T.match_buffer(
            var_q_rope_position, (qo_len,), "int32", elem_offset=q_rope_position_elem_offset
        )
        k_rope_pos_offset = T.match_buffer(
            var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_pos_offset_elem_offset
        )
        output = T.match_buffer(var_output, (qo_len, h_q, d_v), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")

        # K transposed to [kv head, dim, token], float32, RoPE'd once here when inline; kb zero
        # columns so that a score block may run past the last key
        kt = T.alloc_buffer((h_kv, d_qk, kv_len + kb), "float32")
        for t in T.parallel(kv_len):
            if rotary_mode == 1:
                seq = T.alloc_buffer((1,), "int32", scope="local")
                _sequence_of(seq, kv_indptr, batch_size, t)
                if seq[0] < batch_size:
                    for hk, dd in T.grid(h_kv, d_qk):
                        kt[hk, dd, t] = T.Cast(
                            "float32",
                            _rope(
                                k, k_rope_pos_offset[seq[0]] + t - kv_indptr[seq[0]], d_qk, rope_theta, rope_scale,
                                (t, hk, dd), dtype, rope_scaling,
                            ),
                        )
                else:
                    for hk, dd in T.grid(h_kv, d_qk):
                        kt[hk, dd, t] = T.Cast("float32", k[t, hk, dd])
            else:
                for hk, dd in T.grid(h_kv, d_qk):
                    kt[hk, dd, t] = T.Cast("float32", k[t, hk, dd])
        for hk, dd in T.grid(h_kv, d_qk):
            for j in T.vectorized(kb):
                kt[hk, dd, kv_len + j] = T.float32(0)

        for p in T.parallel(qo_len * units):
            row: T.let[T.int32] = _zigzag_row(p // units, qo_len)
            hk: T.let[T.int32] = _unit_heads(p, units, n_sub, group_size, gs)[0]
            hbase: T.let[T.int32] = _unit_heads(p, units, n_sub, group_size, gs)[1]
            seq = T.alloc_buffer((1,), "int32", scope="local")
            _sequence_of(seq, q_indptr, batch_size, row)
            b: T.let[T.int32] = seq[0]
            if b < batch_size and q_indptr[T.min(b, batch_size - 1)] <= row:
                q_n: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                k_n: T.let[T.int32] = kv_indptr[b + 1] - kv_indptr[b]
                n: T.let[T.int32] = _visible(causal, k_n, q_n, row - q_indptr[b])
                unit(
                    q, q_rope_position, kt, v, q_indptr, output, lse,
                    row, hk, hbase, n, k_n, kv_indptr[b], kv_indptr[b], kv_len + kb, 0,
                    rotary_mode, rope_scale, rope_theta, sm_scale,
                )

    return batch_prefill_ragged_kv


def fast_attention_prefill_cpu(
    h_kv: int,
    h_q: int,
    d: int,
    dtype: str,
    rope_scaling: dict[str, Any] | None = None,
    page_size: int = 16,
) -> tirx.PrimFunc:
    """Drop-in for ``_attention_prefill_cpu(h_kv, h_q, d, dtype, False, rope_scaling, page_size)``.

    Same 15 parameters and buffers (``q [total_len, h_q, d]``, ``q_indptr``, ``pages
    [max_num_pages, 2, h_kv, page_size, d]``, ``page_indptr``, ``page_values [nnz_pages]``,
    ``length_info [batch_size]`` (last page lengths), ``k_rope_pos_offset``,
    ``q_rope_position``, ``output``, ``lse``, then the five scalars). Keys are gathered once
    from the pages into a transposed float32 copy indexed by page-slot, where sequence ``b``'s
    key ``j`` sits at ``page_indptr[b] * page_size + j``. The sliding-window variant
    (``batch_prefill_paged_kv_cpu_sliding_window``) keeps TVM's kernel: our models do not use it.
    """
    rope_scaling = dict(rope_scaling or {})
    group_size = h_q // h_kv
    gs, kb = _tiling(group_size, d)
    n_sub = group_size // gs
    units = h_kv * n_sub
    unit = _attention_unit(True, gs, kb, d, d, dtype, page_size, rope_scaling)

    # pylint: disable=too-many-locals,too-many-statements
    @T.prim_func(s_tir=True)
    def batch_prefill_paged_kv_cpu(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_pages: T.handle,
        var_page_indptr: T.handle,
        var_page_values: T.handle,
        var_length_info: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_q_rope_position: T.handle,
        var_output: T.handle,
        var_lse: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        batch_size = T.int32()
        total_len = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        q_indptr_elem_offset = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        q = T.match_buffer(var_q, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        pages = T.match_buffer(var_pages, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_indptr = T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", elem_offset=page_indptr_elem_offset)
        page_values = T.match_buffer(var_page_values, (nnz_pages,), "int32", elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(
            var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_pos_offset_elem_offset
        )
        q_rope_position = T.match_buffer(
            var_q_rope_position, (total_len,), "int32", elem_offset=q_rope_position_elem_offset
        )
        output = T.match_buffer(var_output, (total_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), "float32")
        length_info = T.match_buffer(var_length_info, (batch_size,), "int32", elem_offset=length_info_elem_offset)

        # keys of every listed page slot, transposed to [kv head, dim, slot] in float32
        kt = T.alloc_buffer((h_kv, d, nnz_pages * page_size + kb), "float32")
        for f in T.parallel(nnz_pages * page_size):
            page: T.let[T.int32] = page_values[f // page_size]
            if rotary_mode == 1:
                seq = T.alloc_buffer((1,), "int32", scope="local")
                _sequence_of(seq, page_indptr, batch_size, f // page_size)
                if seq[0] < batch_size:
                    for hk, dd in T.grid(h_kv, d):
                        kt[hk, dd, f] = T.Cast(
                            "float32",
                            _rope(
                                pages, k_rope_pos_offset[seq[0]] + f - page_indptr[seq[0]] * page_size, d,
                                rope_theta, rope_scale, (page, 0, hk, f % page_size, dd), dtype, rope_scaling,
                            ),
                        )
                else:
                    for hk, dd in T.grid(h_kv, d):
                        kt[hk, dd, f] = T.Cast("float32", pages[page, 0, hk, f % page_size, dd])
            else:
                for hk, dd in T.grid(h_kv, d):
                    kt[hk, dd, f] = T.Cast("float32", pages[page, 0, hk, f % page_size, dd])
        for hk, dd in T.grid(h_kv, d):
            for j in T.vectorized(kb):
                kt[hk, dd, nnz_pages * page_size + j] = T.float32(0)

        for p in T.parallel(total_len * units):
            row: T.let[T.int32] = _zigzag_row(p // units, total_len)
            hk: T.let[T.int32] = _unit_heads(p, units, n_sub, group_size, gs)[0]
            hbase: T.let[T.int32] = _unit_heads(p, units, n_sub, group_size, gs)[1]
            seq = T.alloc_buffer((1,), "int32", scope="local")
            _sequence_of(seq, q_indptr, batch_size, row)
            b: T.let[T.int32] = seq[0]
            if b < batch_size and q_indptr[T.min(b, batch_size - 1)] <= row:
                q_n: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                p_beg: T.let[T.int32] = page_indptr[b]
                p_end: T.let[T.int32] = page_indptr[b + 1]
                k_n: T.let[T.int32] = _paged_len(p_beg, p_end, page_size, length_info[b])
                n: T.let[T.int32] = _visible(causal, k_n, q_n, row - q_indptr[b])
                unit(
                    q, q_rope_position, kt, pages, page_values, output, lse,
                    row, hk, hbase, n, k_n, p_beg * page_size, p_beg, nnz_pages * page_size + kb, 0,
                    rotary_mode, rope_scale, rope_theta, sm_scale,
                )

    return batch_prefill_paged_kv_cpu


def fast_attention_decode_cpu(
    h_kv: int,
    h_q: int,
    d: int,
    dtype: str,
    rope_scaling: dict[str, Any] | None = None,
    page_size: int = 16,
) -> tirx.PrimFunc:
    """Drop-in for ``_attention_decode_cpu(h_kv, h_q, d, dtype, False, rope_scaling, page_size)``.

    Why: TVM's decode kernel walks every (sequence, q head, key) serially with scalar loops and
    re-reads (and re-RoPEs) each key once per q head; it grew to ~90 us per layer per token for
    SmolLM2 at 128 tokens of context. Same 13 parameters and buffers (``Q [B, h_q, d]``, ``pages
    [max_num_pages, 2, h_kv, page_size, d]``, ``page_table_indptr [B + 1]``, ``page_table_values
    [nnz_pages]``, ``length_info [B]`` (last page lengths), ``k_rope_pos_offset [B]``,
    ``q_rope_position [B]``, ``output [B, h_q, d]``, ``lse [B, h_q]`` float32, then
    ``rotary_mode, rope_scale, rope_theta, sm_scale``).

    A decode step is a paged prefill with one query per sequence that sees all its keys, so
    this is the paged prefill's work unit (``_attention_unit`` with ``decode=True``) in one
    ``T.parallel`` loop over (sequence, group of q heads sharing a KV head): each key row is
    read from its page once (unit stride over head_dim) and scored against all the group's
    q heads; no transposed key copy, since every key is used by one unit only (copying it
    cost more than the scores). The numerics are the paged kernel's (scores ``q.k * (sm_scale
    * log2 e)``, m = -5e4, d = 1.0, ``exp2(s - m)``, ``lse = m + log2(d)``), which are the
    decode kernel's too: its per-key online softmax is the same sum, rounded differently.
    The sliding-window variant (``batch_decode_paged_kv_cpu_sliding_window``) keeps TVM's
    kernel: our models do not use it.
    """
    rope_scaling = dict(rope_scaling or {})
    group_size = h_q // h_kv
    gs, kb = _tiling(group_size, d)
    n_sub = group_size // gs
    units = h_kv * n_sub
    unit = _attention_unit(True, gs, kb, d, d, dtype, page_size, rope_scaling, decode=True)

    # pylint: disable=too-many-locals
    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv_cpu(
        Q_handle: T.handle,
        pages_handle: T.handle,
        page_table_indptr_handle: T.handle,
        page_table_values_handle: T.handle,
        var_length_info: T.handle,
        k_rope_pos_offset_handle: T.handle,
        q_rope_position_handle: T.handle,
        output_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        B = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        Q = T.match_buffer(Q_handle, (B, h_q, d), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_table_indptr = T.match_buffer(
            page_table_indptr_handle, (B + 1,), "int32", elem_offset=page_indptr_elem_offset
        )
        page_table_values = T.match_buffer(
            page_table_values_handle, (nnz_pages,), "int32", elem_offset=page_values_elem_offset
        )
        k_rope_pos_offset = T.match_buffer(
            k_rope_pos_offset_handle, (B,), "int32", elem_offset=k_rope_pos_offset_elem_offset
        )
        q_rope_position = T.match_buffer(
            q_rope_position_handle, (B,), "int32", elem_offset=q_rope_position_elem_offset
        )
        output = T.match_buffer(output_handle, (B, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (B, h_q), "float32")
        length_info = T.match_buffer(var_length_info, (B,), "int32", elem_offset=length_info_elem_offset)

        # parts per (sequence, unit): split the keys when the units alone are too few for the cores
        longest = T.alloc_buffer((1,), "int32", scope="local")
        longest[0] = 0
        for b in range(B):
            longest[0] = T.max(
                longest[0], _paged_len(page_table_indptr[b], page_table_indptr[b + 1], page_size, length_info[b])
            )
        parts: T.let[T.int32] = T.if_then_else(
            B * units >= _SPLIT_BELOW_UNITS,
            1,
            T.min(_MAX_PARTS, T.max(1, (longest[0] + _PART_KEYS - 1) // _PART_KEYS)),
        )
        part_o = T.alloc_buffer((B * units * _MAX_PARTS, gs, d), "float32")
        part_m = T.alloc_buffer((B * units * _MAX_PARTS, gs), "float32")
        part_den = T.alloc_buffer((B * units * _MAX_PARTS, gs), "float32")

        for p in T.parallel(B * units * parts):
            u: T.let[T.int32] = p // parts
            b: T.let[T.int32] = u // units
            hk: T.let[T.int32] = _unit_heads(u, units, n_sub, group_size, gs)[0]
            hbase: T.let[T.int32] = _unit_heads(u, units, n_sub, group_size, gs)[1]
            p_beg: T.let[T.int32] = page_table_indptr[b]
            k_n: T.let[T.int32] = _paged_len(p_beg, page_table_indptr[b + 1], page_size, length_info[b])
            # part p % parts: keys [start, start + n) in whole pages
            span: T.let[T.int32] = ((k_n + parts - 1) // parts + page_size - 1) // page_size * page_size
            start: T.let[T.int32] = p % parts * span
            n: T.let[T.int32] = T.max(0, T.min(span, k_n - start))
            unit(
                Q, q_rope_position, pages, pages, page_table_values, output, lse,
                b, hk, hbase, n, n, 0, p_beg + start // page_size, nnz_pages * page_size + kb,
                k_rope_pos_offset[b] + start, rotary_mode, rope_scale, rope_theta, sm_scale,
                part_o, part_m, part_den, p, p % parts == 0, parts == 1,
            )
        if parts > 1:
            for u in range(B * units):
                _merge_key_splits(
                    part_o, part_m, part_den, output, lse, u, parts, u // units,
                    _unit_heads(u, units, n_sub, group_size, gs)[1], gs, d, dtype,
                )

    return batch_decode_paged_kv_cpu


@T.macro
def _merge_key_splits(part_o, part_m, part_den, output, lse, u, parts, row, hbase, gs: int, d: int, dtype: str):
    """Unit ``u``'s parts ``u * parts ..``: each part's softmax sum and unnormalised ``P @ V``
    rescaled to the common max, then divided once (log2 units, as the parts' ``m``)."""
    for g in range(gs):
        top = T.alloc_buffer((1,), "float32", scope="local")
        top[0] = part_m[u * parts, g]
        for s in range(1, parts):
            top[0] = T.max(top[0], part_m[u * parts + s, g])
        w = T.alloc_buffer((_MAX_PARTS,), "float32", scope="local")
        den = T.alloc_buffer((1,), "float32", scope="local")
        den[0] = T.float32(0)
        for s in range(parts):
            w[s] = T.exp2(part_m[u * parts + s, g] - top[0])
            den[0] = den[0] + part_den[u * parts + s, g] * w[s]
        o = T.alloc_buffer((d,), "float32", scope="local")
        for i in T.vectorized(d):
            o[i] = T.float32(0)
        for s in range(parts):
            for i in T.vectorized(d):
                o[i] = o[i] + part_o[u * parts + s, g, i] * w[s]
        for i in T.vectorized(d):
            output[row, hbase + g, i] = T.Cast(dtype, o[i] / den[0])
        lse[row, hbase + g] = top[0] + T.log2(den[0])


# --- the pass ------------------------------------------------------------------------------------


def _int_dims(shape) -> list[int | None]:
    """Constant dims as ints, symbolic ones as None."""
    return [int(x) if isinstance(x, tirx.IntImm) else None for x in shape]


def _param_sig(param: tirx.Var) -> tuple:
    """("buffer", dtype, constant dims) for a buffer parameter, ("scalar", dtype) otherwise."""
    ty = param.ty
    if isinstance(ty, tirx.BufferType):
        return ("buffer", str(ty.dtype), tuple(_int_dims(ty.shape)))
    return ("scalar", str(ty))


def _buffer_dims(func: tirx.PrimFunc, n_params: int, ranks: dict[int, int]) -> list | None:
    """The parameters' signatures, or None unless there are ``n_params`` and the given buffer
    parameters have the given ranks."""
    if len(func.params) != n_params:
        return None
    sigs = [_param_sig(p) for p in func.params]
    for i, rank in ranks.items():
        if sigs[i][0] != "buffer" or len(sigs[i][2]) != rank:
            return None
    return sigs


def _build_ragged(func: tirx.PrimFunc, rope_scaling: dict[str, Any]) -> tirx.PrimFunc | None:
    sigs = _buffer_dims(func, 14, {0: 3, 2: 3, 3: 3})
    if sigs is None:
        return None
    (_, h_q, d_qk), (_, h_kv, d_k), (_, _, d_v) = (sigs[i][2] for i in (0, 2, 3))
    if None in (h_q, d_qk, h_kv, d_v) or d_k != d_qk or h_q % h_kv:
        return None
    return fast_attention_prefill_ragged_cpu(h_kv, h_q, d_qk, d_v, sigs[0][1], rope_scaling)


def _build_paged(func: tirx.PrimFunc, rope_scaling: dict[str, Any]) -> tirx.PrimFunc | None:
    sigs = _buffer_dims(func, 15, {0: 3, 2: 5, 5: 1})
    if sigs is None:
        return None
    (_, h_q, d), (_, two, h_kv, page_size, d_k) = (sigs[i][2] for i in (0, 2))
    if None in (h_q, d, h_kv, page_size) or two != 2 or d_k != d or h_q % h_kv:
        return None
    return fast_attention_prefill_cpu(h_kv, h_q, d, sigs[0][1], rope_scaling, page_size)


def _build_decode(func: tirx.PrimFunc, rope_scaling: dict[str, Any]) -> tirx.PrimFunc | None:
    # Q [B, h_q, d], pages [max_num_pages, 2, h_kv, page_size, d], length_info [B]: the
    # sliding-window kernel's length_info is [3, B] (and its name differs), so it never matches
    sigs = _buffer_dims(func, 13, {0: 3, 1: 5, 4: 1})
    if sigs is None:
        return None
    (_, h_q, d), (_, two, h_kv, page_size, d_k) = (sigs[i][2] for i in (0, 1))
    if None in (h_q, d, h_kv, page_size) or two != 2 or d_k != d or h_q % h_kv or d % _LANES:
        return None
    return fast_attention_decode_cpu(h_kv, h_q, d, sigs[0][1], rope_scaling, page_size)


@tvm.transform.module_pass(opt_level=0, name="UseFastCPUAttention")
class UseFastCPUAttention:
    """Swap ``batch_prefill_ragged_kv`` / ``batch_prefill_paged_kv_cpu`` /
    ``batch_decode_paged_kv_cpu`` for the fast kernels (not the sliding-window ones), and, given
    ``rope_theta``, the KV cache's RoPE (``fused_rope``) for ``rope.fast_rope_cpu``.

    Head counts, head_dim, page size and dtype are read off the existing PrimFunc's buffers; the
    original's attrs (``global_symbol``, ``target``, ...) are kept and ``tirx.noalias`` and
    ``tirx.is_scheduled`` added, so no schedule rule touches the kernel afterwards. A function
    that does not have the expected signature is left as it is, as is everything else in the
    module; this pass never fails a compilation.

    ``rope_scaling`` must be what the model gave ``TIRPagedKVCache`` (so must ``rope_theta``,
    ``rope_scale`` and ``rotary_dim``, None for head_dim); the attention kernels use it only for
    ``rotary_mode == 1`` (``RopeMode.INLINE``); RoPE is applied before the cache otherwise.
    """

    def __init__(self, rope_scaling: dict[str, Any] | None = None, rope_theta: float | None = None,
                 rope_scale: float = 1.0, rotary_dim: int | None = None) -> None:
        self.rope_scaling = dict(rope_scaling or {})
        self.rope = (rope_theta, rope_scale, rotary_dim)

    def _build_rope(self, func: tirx.PrimFunc) -> tirx.PrimFunc | None:
        # qkv [seq, h_q + 2 h_kv, d], position_map [seq], q [seq, h_q, d], k, v [seq, h_kv, d]
        theta, scale, rotary_dim = self.rope
        sigs = _buffer_dims(func, 6, {0: 3, 1: 1, 2: 3, 3: 3, 4: 3})
        if theta is None or sigs is None:
            return None
        (_, fused, d), (_, h_q, d_q), (_, h_kv, _) = (sigs[i][2] for i in (0, 2, 3))
        if None in (fused, d, h_q, h_kv) or d_q != d or fused != h_q + 2 * h_kv:
            return None
        return fast_rope_cpu(theta, scale, d, h_q, h_kv, sigs[0][1], self.rope_scaling, rotary_dim)

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        builders = {name: (lambda func, build=build: build(func, self.rope_scaling))
                    for name, build in ((RAGGED_NAME, _build_ragged), (PAGED_NAME, _build_paged),
                                        (DECODE_NAME, _build_decode))}
        builders[ROPE_NAME] = self._build_rope
        swaps: dict[str, tirx.PrimFunc] = {}
        for gv, func in mod.functions_items():
            build = builders.get(gv.name_hint)
            if build is None or not isinstance(func, tirx.PrimFunc):
                continue
            try:
                new = build(func)
                if new is None or [_param_sig(p) for p in new.params] != [_param_sig(p) for p in func.params]:
                    logger.warning("UseFastCPUAttention: %s kept (a signature or variant the fast kernel does not cover)", gv.name_hint)
                    continue
                for key, value in (func.attrs or {}).items():
                    new = new.with_attr(key, value)
                swaps[gv.name_hint] = new.with_attr("tirx.noalias", True).with_attr("tirx.is_scheduled", True)
            except Exception:  # noqa: BLE001 - a kernel we cannot build: keep TVM's
                logger.warning("UseFastCPUAttention: could not build %s; kept", gv.name_hint, exc_info=True)
        if not swaps:
            return mod
        mod = mod.clone()  # the caller's module stays as it was
        for name, func in swaps.items():
            mod[mod.get_global_var(name)] = func
        return mod
