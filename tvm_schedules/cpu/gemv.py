"""Decode GEMV on the CPU: dequantize in vector registers, fused with the dot product.

At one token row the weight is used once, so nothing is gained by materialising it: each
output row streams its packed words, unpacks ``LANES`` codes at a time with a vector of shifts
(one uint32 word broadcast to 8 or 16 lanes for 4- and 2-bit, 10 lanes for 3-bit's 10 codes a
word, so a vector never straddles two words), applies the group's scale and zero and
accumulates into a ``LANES``-wide float32 partial sum (``rfactor``). The lanes are summed once
per output. ``ROWS`` outputs are interleaved to keep independent FMA chains in flight, and the
output rows are split across cores.

Measured on 2 Zen 4 cores (SmolLM2 lm_head, 49152 x 576, q4f16_1): 4.0 ms per call against
28.7 ms with the dequantize inlined into a scalar loop. Partial sums change the summation
order: results agree with the unscheduled function to float32 rounding (~1e-6 relative).
"""

from __future__ import annotations

from tvm import s_tir

from .match import CPUMatmul, CPUMatmulRule

ROWS = 4  # output rows interleaved per core step
LANES = 16  # float32 lanes of one AVX-512 register


def lanes_for(epw: int | None) -> int:
    """Vector lanes of the partial sum: whole words per vector (3-bit: one 10-code word)."""
    return 10 if epw == 10 else LANES


def staged(info: CPUMatmul) -> bool:
    """Unpack in a phase of its own when a word's codes can straddle a group: 3-bit (10 codes
    a word) with groups of 32/64/128. In one fused loop each lane would then need its own
    scale and zero (gathers); staged, the words are unpacked 10 codes to a vector and the
    scale is applied to group-aligned 16-lane vectors (1.6x on q3f16_g128asym, 3072 x 576:
    0.35 ms vs 0.58 ms on 2 cores). q3f16_1's groups of 40 are whole words: fused is faster."""
    return (info.unpack is not None and info.epw == 10 and info.group is not None
            and info.group % 10 != 0 and info.group % LANES == 0)


class CPUVectorGEMV(CPUMatmulRule):
    """Matmuls with one static token row (the decode step and the last-token lm_head)."""

    def __init__(self, max_rows: int = 1) -> None:
        self.max_rows = max_rows

    def accepts(self, static_rows: int | None) -> bool:
        return static_rows is not None and static_rows <= self.max_rows

    def schedule(self, info: CPUMatmul) -> s_tir.Schedule:
        return _schedule(info)


def _schedule(info: CPUMatmul) -> s_tir.Schedule:
    if staged(info):
        return _schedule_staged(info)
    sch, block = info.sch, info.block
    if info.unpack is not None:
        sch.compute_inline(info.unpack)
    sch.compute_inline(info.weight)
    partial, n_o, n_i, k_o, k_i = _partial_sums(sch, block, lanes_for(info.epw))
    sch.reorder(n_o, k_o, n_i, k_i)
    sch = _finish(info, partial, n_o, k_o, k_i)
    sch.unroll(n_i)  # ROWS independent FMA chains
    return sch


def _schedule_staged(info: CPUMatmul) -> s_tir.Schedule:
    """Per output row: unpack its words into codes, dequantize them, then the dot product, all
    in row-sized local buffers (576 floats for SmolLM2: L1)."""
    sch, block = info.sch, info.block
    partial, n_o, n_i, k_o, k_i = _partial_sums(sch, block, LANES)
    sch.reorder(n_o, n_i, k_o, k_i)
    for stage, lanes in ((info.weight, LANES), (info.unpack, info.epw)):
        sch.compute_at(stage, n_i)
        sch.set_scope(stage, 0, "local")
        _, inner = sch.split(sch.get_loops(stage)[-1], [None, lanes])
        sch.vectorize(inner)
    return _finish(info, partial, n_o, k_o, k_i)


def _partial_sums(sch: s_tir.Schedule, block, lanes: int):
    """rfactor the reduction into ``lanes`` partial sums; outputs split by ROWS, run in parallel."""
    *_rows, _n, k = sch.get_loops(block)
    _k_o, k_i = sch.split(k, [None, lanes])
    partial = sch.rfactor(k_i, 0)
    *_rows, n, k_o, k_i = sch.get_loops(partial)
    n_o, n_i = sch.split(n, [None, ROWS])
    sch.parallel(n_o)
    return partial, n_o, n_i, k_o, k_i


def _finish(info: CPUMatmul, partial, n_o, k_o, k_i) -> s_tir.Schedule:
    sch, block = info.sch, info.block
    acc = sch.cache_write(partial, 0, "local")
    sch.reverse_compute_at(acc, n_o)
    sch.vectorize(k_i)  # before decomposing, while the block is still a complete reduction
    sch.decompose_reduction(partial, k_o)
    # Lane sum and the epilogue per output tile.
    sch.reverse_compute_at(block, n_o)
    for consumer in info.epilogues:
        sch.reverse_compute_at(consumer, n_o)
    return sch
