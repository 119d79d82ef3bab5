"""Prefill GEMM on the CPU: dequantize a column tile once, then a register-blocked micro-kernel.

A prefill chunk multiplies many token rows by the same weight, so the dequantize is paid once
per ``TILE_N`` output columns and amortised over every row:

* the weight tile [K, TILE_N] (transposed, so the micro-kernel reads it with unit stride) is
  dequantized into a buffer that stays in L2 (576 x 32 x 4 B = 72 KiB for SmolLM2);
* the fill unrolls a packed word's codes (constant shifts, one load per word) and writes the
  tile's ``TILE_N`` columns as one vector: it costs about what the matmul of 16 rows does, so
  a scalar fill had made short prefills 3x slower;
* rows are padded to a multiple of ``TILE_M`` (``pad_einsum``: one copy of x, one predicated
  copy out) so the inner loops carry no bounds check and unroll completely;
* the micro-kernel keeps a ``TILE_M`` x ``TILE_N`` float32 accumulator in registers
  (8 x 32 = 16 AVX-512 registers), broadcasting one x value per row and k and streaming the
  tile: the ``k`` loop does TILE_M * TILE_N / 16 FMAs per 2 vector loads;
* column tiles run in parallel; the epilogue (residual add, cast) is applied when a row tile's
  accumulator is written back.

On 2 Zen 4 cores SmolLM2's four prefill linears (qkv, o, gate_up, down; 0.91 GFLOP at 128
rows) take 8.7 ms in q4f16_1, ~100 GFLOP/s (13.3 ms before the fill was vectorised, and
5.5 GFLOP/s with the dequantize inlined into a scalar loop); at 16 rows 1.6 ms (5.5 ms).
The result is bit-identical to the unscheduled function because the per-output summation
order over k is unchanged.
"""

from __future__ import annotations

from tvm import s_tir

from ..analysis import consumer_chain
from .match import CPUMatmul, CPUMatmulRule

TILE_N = 32  # output columns per task: two AVX-512 (four AVX2) float32 vectors
TILE_M = 8  # token rows per micro-kernel call


class CPUTiledGEMM(CPUMatmulRule):
    """Matmuls whose row count is symbolic (prefill) or larger than the GEMV takes."""

    def __init__(self, max_gemv_rows: int = 1) -> None:
        self.max_gemv_rows = max_gemv_rows

    def accepts(self, static_rows: int | None) -> bool:
        return static_rows is None or static_rows > self.max_gemv_rows

    def schedule(self, info: CPUMatmul) -> s_tir.Schedule:
        return _schedule(info)


def _pad_factors(info: CPUMatmul) -> list[int] | None:
    """Padding of the block iters that makes the rows a multiple of TILE_M (None: none needed).

    Only the last non-unit row iter is padded; the fused rows are then a multiple of TILE_M.
    """
    extents = info.row_extents
    rows = info.static_rows
    if rows is not None and rows % TILE_M == 0:
        return None
    factors = [1] * (len(extents) + 2)
    for i in range(len(extents) - 1, -1, -1):
        if not (isinstance(extents[i], int) and extents[i] == 1):
            factors[i] = TILE_M
            return factors
    return None


def _schedule(info: CPUMatmul) -> s_tir.Schedule:
    sch, block = info.sch, info.block
    if info.unpack is not None:
        sch.compute_inline(info.unpack)
    pad = _pad_factors(info)
    if pad is not None:
        sch.pad_einsum(block, pad)
    *row_loops, n, k = sch.get_loops(block)
    rows = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
    n_o, n_i = sch.split(n, [None, TILE_N])
    r_o, r_i = sch.split(rows, [None, TILE_M])
    sch.reorder(n_o, r_o, k, r_i, n_i)
    sch.parallel(n_o)
    # The weight tile, transposed to [K, TILE_N], dequantized once per column block.
    sch.compute_at(info.weight, n_o)
    sch.transform_layout(info.weight, ("write", 0), lambda i, j: (j, i))
    wi, wk = sch.get_loops(info.weight)[-2:]
    sch.reorder(wk, wi)
    # The fill: a word's codes unrolled, the tile's columns as one vector (module docstring).
    if info.epw is not None:
        _, wk_code = sch.split(wk, [None, info.epw])
        sch.unroll(wk_code)
    sch.vectorize(wi)
    # Register accumulator, written back (through the epilogue) once per row tile.
    acc = sch.cache_write(block, 0, "local")
    writer = acc
    if pad is not None:
        unpad = sch.get_consumers(acc)[0]
        sch.compute_inline(acc)
        writer = unpad
    for consumer in consumer_chain(sch, writer) or []:  # match_matmul checked it is elementwise
        sch.reverse_compute_inline(consumer)
    sch.reverse_compute_at(writer, r_o)
    # Vectorize before decomposing: the update block stops being a complete reduction after.
    sch.vectorize(n_i)
    sch.unroll(r_i)
    sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(writer)[-1])
    return sch
