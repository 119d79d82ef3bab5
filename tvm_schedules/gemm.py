"""Prefill GEMM for fused dequantize-matmuls: dequantize a weight tile into shared memory.

At 512 prefill tokens a 7B projection does 2*512*4096*4096 = 17 GFLOP against 8 MiB of 4-bit
weights, so prefill is compute-bound and the weights only need to be unpacked once per
output tile, not once per output row. The schedule:

* tiles the output [M, N] into BM x BN blocks (M is the token axis, static or symbolic;
  BM shrinks for small static M such as a batch of 16 decode rows);
* per BK slice of K, the ``dequantize`` block itself runs as the fill of a float16
  shared-memory tile [BN, BK] (BK = 4 words of codes: 32 for 4-bit, 40 for 3-bit, 64 for
  2-bit), each thread unpacking whole words so a word is read once per tile; the x tile
  [BM, BK] is staged the same way with vectorised loads;
* every thread accumulates a 4 x 4 register tile from the two shared tiles.

This is a well-tiled CUDA-core GEMM. Tensor cores (fp16 ``mma`` via TVM's wmma/mma intrinsics
on sm_80+) are NOT used yet: that is the open part of this rule (see docs/schedules.md).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir.prim.expr import IntImm

from .analysis import DequantMatmul, DequantMatmulRule, static_batch


def _next_pow2(x: int) -> int:
    p = 1
    while p < x:
        p *= 2
    return p


def schedule_dequant_gemm(func: tirx.PrimFunc, info: DequantMatmul, micro: int = 4,
                          threads_n: int = 16) -> s_tir.Schedule | None:
    """Shared-memory tiled GEMM with the dequantize as the shared-tile fill."""
    sch = s_tir.Schedule(func)
    mm = _reduction_block(sch)
    producers = sch.get_producers(mm)
    deq = [p for p in producers if any(r.source.dtype == "uint32" for r in sch.get(p).reads)]
    if len(deq) != 1 or len(producers) != 1:
        return None

    batch = static_batch(info)
    threads_m = 16 if batch is None or batch > 32 else max(1, _next_pow2(batch) // micro)
    bm = threads_m * micro
    words_per_slab = 4 if info.epw != 16 else 2
    bk = words_per_slab * info.epw  # 32 (4-bit), 40 (3-bit), 32 (2-bit)

    if batch is None:
        # A symbolic token axis is padded to the tile (as dlight's Matmul does): register and
        # shared tiles then have constant shapes; the pad blocks are inlined again below.
        iters = sch.get(mm).iter_vars
        pads = [bm if not isinstance(iv.dom.extent, IntImm) else 1 for iv in iters]
        sch.pad_einsum(mm, pads)
        mm = _reduction_block(sch)
    deq = [p for p in sch.get_producers(mm)
           if any(r.source.dtype == "uint32" for r in sch.get(p).reads)][0]

    *spatial, n_loop, k_loop = sch.get_loops(mm)
    m_loop = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    mo, tm, mi = sch.split(m_loop, [None, threads_m, micro])
    no, tn, ni = sch.split(n_loop, [None, threads_n, micro])
    ko, ki = sch.split(k_loop, [None, bk])
    sch.reorder(mo, no, tm, tn, ko, ki, mi, ni)
    sch.bind(mo, "blockIdx.y")
    sch.bind(no, "blockIdx.x")
    sch.bind(tm, "threadIdx.y")
    sch.bind(tn, "threadIdx.x")

    acc = sch.cache_write(mm, 0, "local")
    sch.reverse_compute_at(acc, tn, preserve_unit_loops=True)
    consumers = sch.get_consumers(acc)
    while consumers:  # the un-pad copy and the epilogue fold into the register write-back
        consumer = consumers[0]
        nxt = sch.get_consumers(consumer)
        try:
            sch.reverse_compute_inline(consumer)
        except Exception:  # pylint: disable=broad-except
            sch.reverse_compute_at(consumer, tn, preserve_unit_loops=True)
        consumers = nxt

    # x tile [BM, BK] -> shared, vectorised along K where rows stay aligned.
    x_idx = next(i for i, r in enumerate(sch.get(mm).reads)
                 if r.source.dtype == "float16" and not _written_by(sch, deq, r.source))
    x_shared = sch.cache_read(mm, x_idx, "shared")
    for producer in sch.get_producers(x_shared):  # the pad block of a symbolic token axis
        sch.compute_inline(producer)
    sch.compute_at(x_shared, ko, preserve_unit_loops=True)
    x_loops = sch.get_loops(x_shared)[-len(spatial) - 1:]
    fused = sch.fuse(*x_loops)
    vec = 1
    for v in (8, 4, 2):
        if info.k % v == 0 and bk % v == 0:
            vec = v
            break
    _, ty_, tx_, v_ = sch.split(fused, [None, threads_m, threads_n, vec])
    sch.bind(ty_, "threadIdx.y")
    sch.bind(tx_, "threadIdx.x")
    sch.vectorize(v_)

    # weight tile [BN, BK]: the dequantize block fills shared memory, a word per thread step.
    sch.set_scope(deq, 0, "shared")  # before compute_at: shared regions span the block's threads
    sch.compute_at(deq, ko, preserve_unit_loops=True)
    dn, dk = sch.get_loops(deq)[-2:]
    dk_word, dk_code = sch.split(dk, [None, info.epw])
    fused = sch.fuse(dn, dk_word)
    _, ty_, tx_ = sch.split(fused, [None, threads_m, threads_n])
    sch.bind(ty_, "threadIdx.y")
    sch.bind(tx_, "threadIdx.x")
    sch.unroll(dk_code)
    # Row stride = 2 (mod 32) halves (17 words): lanes reading rows 4 apart at the same k hit
    # 8 banks (2-way conflict) instead of all hitting one (16-way). Interleaving a lane's
    # columns would remove the rest but makes the register tile strided (it spilled).
    sch.storage_align(deq, 0, axis=0, factor=32, offset=2)

    sch.annotate(ki, "pragma_auto_unroll_max_step", 256)
    sch.annotate(ki, "pragma_unroll_explicit", 1)
    sch.decompose_reduction(mm, ko)
    return sch


def _reduction_block(sch: s_tir.Schedule):
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    return [b for b in blocks if any(iv.iter_type == tirx.IterVar.CommReduce
                                     for iv in sch.get(b).iter_vars)][0]


def _written_by(sch: s_tir.Schedule, block, buffer) -> bool:
    return any(w.source.same_as(buffer) for w in sch.get(block).writes)


class DequantGEMM(DequantMatmulRule):
    """Prefill / batch > 8 dequantize-matmul (static or symbolic token count)."""

    def __init__(self, min_batch: int = 9):
        self.min_batch = min_batch

    def accepts(self, batch: int | None, info: DequantMatmul) -> bool:
        # N tiles are whole (true of every LLaMA projection); otherwise dlight takes it.
        return (batch is None or batch >= self.min_batch) and info.n % 64 == 0

    def schedule(self, func: tirx.PrimFunc, info: DequantMatmul) -> s_tir.Schedule | None:
        return schedule_dequant_gemm(func, info)
