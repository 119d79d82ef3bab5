"""Decode GEMV (batch 1) and low-batch GEMV (batch 2..8) for fused dequantize-matmuls.

Decode is bound by reading the packed weights once, so the schedule is organised around the
uint32 words, not the float16 codes (dlight's GEMV tiles the code axis and leaves the packing
to chance):

* a warp owns a weight row; lane ``t`` reads words ``[t*V, t*V+V)`` of each 32*V-word slab, so
  a warp issues one coalesced 32*V*4-byte load per row and step (V = 4: 16-byte ``uint4``
  loads; V shrinks to 2 or 1 only when the row stride in words is not a multiple of 4, which
  happens for 3-bit rows whose padded length is not a multiple of 40 codes);
* the V words land in registers (a ``local`` cache) and are unpacked there by the fully
  unrolled code loop: shifts and masks of a register, no re-reads. 3-bit rows are read as
  words, 10 codes each, so no load is wasted on the 2 spare bits' neighbours;
* the group scale (and packed zero) a chunk needs is read into registers once per chunk; a
  chunk never spans more than two groups;
* the matching slice of x is read into registers once and reused for the ``TILE_N`` rows a
  warp owns (decode) or the weight registers are reused for the ``B`` rows of x (low batch);
* partial sums are reduced across the warp with shuffles (TVM lowers the thread-bound
  reduction to ``__shfl_down_sync``), and blocks of ``TY`` warps keep enough blocks in flight
  (4096 rows -> 512 blocks of 4 warps for a 7B projection).

Partial sums live in registers in the reduction block's dtype: float32 for the kernels our model
emits (``desv_export/model/quantized.py``), float16 for MLC-style ``NT_matmul``; the scheduled
and unscheduled functions agree up to summation order.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir.prim.expr import IntImm
from tvm.target import Target

from .analysis import DequantMatmul, DequantMatmulRule, read_buffer
from .half2 import half2_applies, splice_half2_dot, straddles, words_per_step

WARP = 32


def _words_per_load(words: int, max_vec: int = 4) -> int:
    """Widest load (in words) that keeps every row's start aligned to it."""
    for v in (4, 2, 1):
        if v <= max_vec and words % v == 0:
            return v
    return 1


def _aligned_vec(chunk: int, elem_bytes: int, max_bytes: int = 16) -> int:
    """Largest vector (elements) dividing ``chunk`` whose loads stay aligned at chunk starts."""
    vec = max(1, max_bytes // elem_bytes)
    while vec > 1 and (chunk % vec != 0):
        vec //= 2
    return vec


def _read_index(sch: s_tir.Schedule, block, buffer: tirx.Buffer) -> int | None:
    for i, region in enumerate(sch.get(block).reads):
        if region.source.same_as(buffer):
            return i
    return None


def schedule_dequant_gemv(info: DequantMatmul, tile_n: int, ty: int) -> s_tir.Schedule:
    """Schedule ``info`` (dequantize inlined) as a warp-per-row GEMV over the rows of x."""
    sch, mm = info.sch, info.block
    batch = info.batch if isinstance(info.batch, int) else 1
    # The x slice of every batch row lives in registers: cap it at 128 halves (64 registers),
    # narrowing the weight load for big batches of 2-bit codes rather than spilling.
    max_vec = 4
    while max_vec > 1 and batch * max_vec * info.epw > 128:
        max_vec //= 2
    words_per_load = _words_per_load(info.words, max_vec)
    step = words_per_load  # words one lane handles per step of the K loop
    # With a static number of rows the register-level work is done in half2 pairs
    # (tvm_schedules/half2.py): at one row about 5 instructions per code instead of 7.6 at 2
    # and 4 bits, 7-8 instead of 14-22 at 3 bits.
    half2 = isinstance(info.batch, int) and half2_applies(info)
    if half2:
        step = words_per_step(info, words_per_load, max_vec)
        words_per_load = _words_per_load(info.words, step)
    chunk = step * info.epw  # codes one lane handles per step

    *spatial, n_loop, k_loop = sch.get_loops(mm)
    b_loop = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    ko, tx, w, e = sch.split(k_loop, [None, WARP, step, info.epw])
    bx, tyl, tn = sch.split(n_loop, [None, ty, tile_n])
    sch.reorder(bx, tyl, tx, ko, tn, b_loop, w, e)
    rf = sch.rfactor(tx, factor_axis=0)
    bx, tyl, tx = sch.get_loops(rf)[:3]
    # Binding must precede decompose_reduction (it needs a complete reduction block).
    sch.bind(bx, "blockIdx.x")
    sch.bind(tyl, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")

    # Register caches at the slab loop: packed words, scales, zeros and the x slice.
    caches = []  # (role, source buffer, cache block)
    sources = {"weight": info.weight_buffer, "scale": read_buffer(sch, rf, "scale"),
               "zero": read_buffer(sch, rf, "zero"), "x": info.x_buffer}
    for role, buffer in sources.items():
        if buffer is None:
            continue
        if half2 and straddles(info) and role in ("scale", "zero"):
            continue  # the half2 body reads the lane's two groups itself, once per step
        idx = _read_index(sch, rf, buffer)
        if idx is None:
            continue
        cache = sch.cache_read(rf, idx, "local")
        sch.compute_at(cache, sch.get_loops(rf)[3])
        caches.append((role, buffer, cache))
    for _, buffer, cache in caches:
        own = sch.get_loops(cache)[4:]  # the cache's own loops, below the slab loop
        if not own:
            continue
        inner = own[-1]
        extent = sch.get(inner).extent
        if not isinstance(extent, IntImm):
            continue
        if buffer.same_as(info.weight_buffer):
            vec = words_per_load if int(extent) == step else 1
        elif buffer.same_as(info.x_buffer):
            vec = _aligned_vec(int(extent), 2) if int(extent) == chunk else 1
        else:
            vec = 1
        if vec > 1:
            _, v = sch.split(inner, [None, vec])
            sch.vectorize(v)
        else:
            sch.unroll(inner)

    rf_loops = sch.get_loops(rf)
    for loop in rf_loops[4:]:
        sch.unroll(loop)

    # Cross-lane reduction: the original block now sums the WARP partials of each output.
    sch.reverse_compute_at(mm, tyl, preserve_unit_loops=True)
    lane, *outs = sch.get_loops(mm)[2:]
    sch.reorder(*outs, lane)
    sch.bind(lane, "threadIdx.x")
    if info.epilogues:
        # The cast / residual add run right after the warp reduction, on the reduced value
        # kept in registers (every lane holds it after the shuffle broadcast).
        first, *rest = info.epilogues
        sch.reverse_compute_at(first, tyl, preserve_unit_loops=True)
        sch.set_scope(mm, 0, "local")
        for ep in rest:
            sch.reverse_compute_inline(ep)
    sch.decompose_reduction(rf, rf_loops[3])
    sch.set_scope(rf, 0, "local")
    if half2:
        read = {role: buffer for role, buffer in sources.items() if buffer is not None}
        read.update({role: sch.get(cache).writes[0].source for role, _, cache in caches})
        sch = splice_half2_dot(sch, info, rf, read, step, tile_n, ty) or sch
    return sch


class DecodeGEMV(DequantMatmulRule):
    """Batch-1 dequantize-GEMV (the decode step): one warp per weight row, 2 rows per warp."""

    def __init__(self, tile_n: int = 2, warps: int = 4):
        self.tile_n = tile_n
        self.warps = warps

    def accepts(self, batch: int | None, info: DequantMatmul) -> bool:
        return batch == 1

    def schedule(self, func: tirx.PrimFunc, info: DequantMatmul, target: Target) -> s_tir.Schedule | None:
        tile_n = self.tile_n if info.n % (self.tile_n * self.warps) == 0 else 1
        return schedule_dequant_gemv(info, tile_n, self.warps)


class LowBatchGEMV(DequantMatmulRule):
    """Batch 2..8 dequantize-GEMV: the unpacked weights of a row are reused for every row of x,
    so the weights are still read once, whatever the batch."""

    def __init__(self, max_batch: int = 8, warps: int = 4):
        self.max_batch = max_batch
        self.warps = warps

    def accepts(self, batch: int | None, info: DequantMatmul) -> bool:
        return batch is not None and 2 <= batch <= self.max_batch

    def schedule(self, func: tirx.PrimFunc, info: DequantMatmul, target: Target) -> s_tir.Schedule | None:
        return schedule_dequant_gemv(info, 1, self.warps)
