"""Prefill GEMM for fused dequantize-matmuls: dequantize a weight tile into shared memory.

At 512 prefill tokens a 7B projection does 2*512*4096*4096 = 17 GFLOP against 8 MiB of 4-bit
weights, so prefill is compute-bound and the weights only need to be unpacked once per
output tile, not once per output row. Both schedules below tile the output [M, N] (M the token
axis, static or symbolic, padded to the tile) and, per K slice, let the ``dequantize`` block
itself fill a float16 shared-memory tile [BN, BK], each thread unpacking whole words (a word
is read once per tile), with the x tile [BM, BK] staged in shared memory beside it.

* ``schedule_dequant_gemm_tc`` (CUDA sm_80+, float16 operands): each warp loads 16x16
  fragments of the two shared tiles and multiplies them on tensor cores with TVM's registered
  wmma intrinsics (``wmma_load_16x16x16_f16_{a,b_trans}_shared_dyn``,
  ``wmma_sync_16x16x16_f16f16f32_trans`` or ``..._f16f16f16_trans``, ``wmma_fill`` /
  ``wmma_store``), accumulating in the dtype of the PrimFunc's reduction (float32 for our
  model). The accumulators return through shared memory; the epilogue is folded into the
  write-back.
* ``schedule_dequant_gemm`` (every other CUDA target, and shapes the tensor-core path
  declines): CUDA cores, each thread accumulating a 4 x 4 register tile.

Verified without a GPU only: the tensor-core schedule with its tensorize steps skipped runs
exactly on the CPU, the tensorized kernels compile with nvcc for sm_80 and sm_90
(tests/schedules/test_gemm_tensorcore.py). GPU speed is unmeasured.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.ir.prim.expr import IntImm
from tvm.target import Target

from .analysis import DequantMatmul, DequantMatmulRule, is_cuda, sm_version, static_batch
from .half2 import splice_half2_fill
from .intrinsics import cuda_tensor_intrinsics


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
    deq = [p for p in producers if _reads_words(sch, p)]
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
    deq = next(p for p in sch.get_producers(mm) if _reads_words(sch, p))

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
    threads = [("threadIdx.y", threads_m), ("threadIdx.x", threads_n)]
    vec = next(v for v in (8, 4, 2, 1) if info.k % v == 0 and bk % v == 0)
    _stage_x(sch, x_shared, ko, len(spatial) + 1, threads, vec)

    _dequantize_into_shared(sch, deq, ko, info.epw, "shared", threads)
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


def _reads_words(sch: s_tir.Schedule, block) -> bool:
    return any(r.source.dtype == "uint32" for r in sch.get(block).reads)


def _spread(sch: s_tir.Schedule, loop, threads: list[tuple[str, int]], vec: int | None = None) -> None:
    """Split ``loop`` over the block's threads (outermost tag first) and, with ``vec``, a
    vectorised innermost part: how both GEMMs share the work of filling a shared tile."""
    factors = [None, *(extent for _, extent in threads)] + ([vec] if vec is not None else [])
    _, *parts = sch.split(loop, factors)
    for part, (tag, _) in zip(parts, threads):
        sch.bind(part, tag)
    if vec is not None:
        sch.vectorize(parts[-1])


def _stage_x(sch: s_tir.Schedule, x_shared, ko, loops: int, threads: list[tuple[str, int]],
             vec: int) -> None:
    """The x tile [BM, BK] -> shared memory once per K slice, ``vec`` halves a load.

    The vector lanes are split off K before the row and K loops are fused: fused first, a
    lane's row index is ``(fused * vec + lane) // BK`` and the padding test ``row < rows``
    then looks lane-dependent to TVM's vectorizer, which falls back to ``vec`` scalar loads,
    each with its own test (every prefill's x fill, until 2026-11-24)."""
    sch.compute_at(x_shared, ko, preserve_unit_loops=True)
    *rows, k = sch.get_loops(x_shared)[-loops:]
    k_outer, lanes = sch.split(k, [None, vec])
    _spread(sch, sch.fuse(*rows, k_outer), threads)
    sch.vectorize(lanes)


def _dequantize_into_shared(sch: s_tir.Schedule, deq, ko, epw: int, scope: str,
                            threads: list[tuple[str, int]], whole_words: bool = True) -> None:
    """The dequantize block fills the [BN, BK] float16 shared tile, one word per thread step
    (a word is read once per tile and its ``epw`` codes unpacked in registers).

    Without ``whole_words`` (a 3-bit tile of 64 codes starts inside a word) a thread step is
    an aligned pair of codes (2m, 2m + 1): words start at multiples of 10 and groups at even
    code indices, so both codes share one word, scale and zero load. The lanes of a warp walk
    64 consecutive codes of a row, whose few words are cached loads."""
    sch.set_scope(deq, 0, scope)  # before compute_at: shared regions span the block's threads
    sch.compute_at(deq, ko, preserve_unit_loops=True)
    dn, dk = sch.get_loops(deq)[-2:]
    dk_step, dk_code = sch.split(dk, [None, epw if whole_words else 2])
    _spread(sch, sch.fuse(dn, dk_step), threads)
    sch.unroll(dk_code)



# ----------------------------------------------------------------------------- tensor cores

WARP = 32
WARPS = 4  # 128 threads a block; every tile below splits into 4 warps
# The float16 operand tiles live in dynamic shared memory and the float32 accumulator tile in
# static shared memory: in one scope, TVM 0.27 lets the accumulator reuse an operand tile's
# memory once the K loop is done and then fails to lower the wmma store (LowerAccessPtr:
# "tvm_access_ptr element type must match the source buffer", float16 vs float32).
SHARED = "shared.dyn"
ACC_SHARED = "shared"


@dataclass(frozen=True)
class TensorCoreTile:
    """A BM x BN output tile computed by ``warps_m x warps_n`` warps, each holding
    ``BM / 16 / warps_m`` x ``BN / 16 / warps_n`` 16x16 accumulator fragments; K advances
    ``bk`` (a multiple of 16 and of the codes per word) at a time."""

    bm: int
    bn: int
    bk: int
    warps_m: int

    @property
    def warps_n(self) -> int:
        return WARPS // self.warps_m

    @property
    def frags_m(self) -> int:
        return self.bm // 16 // self.warps_m

    @property
    def frags_n(self) -> int:
        return self.bn // 16 // self.warps_n


def tensor_core_tile(info: DequantMatmul) -> TensorCoreTile:
    """64 x 64 tiles (2 x 2 warps of 32 x 32) for prefill; 16 or 32 rows for a small static
    batch so a batch of 16 does not compute 48 padded rows. BK holds whole 16-wide mma steps:
    64 codes (8 words of 4-bit, 4 of 2-bit). 3-bit takes 80 (8 whole words) where that
    divides K, else 64 where that does (every LLaMA K: 4096, 11008, 576 are not multiples of
    80), so K needs no padding (see ``schedule_dequant_gemm_tc`` for why that matters)."""
    batch = static_batch(info)
    bk = 80 if info.epw == 10 and (info.k % 80 == 0 or info.k % 64) else 64
    if batch is not None and batch <= 16:
        return TensorCoreTile(bm=16, bn=64, bk=bk, warps_m=1)
    if batch is not None and batch <= 32:
        return TensorCoreTile(bm=32, bn=64, bk=bk, warps_m=2)
    return TensorCoreTile(bm=64, bn=64, bk=bk, warps_m=2)


def has_tensor_cores(target: Target) -> bool:
    """fp16 ``mma`` with float32 accumulation: sm_80 and later (sm_80/86/89/90)."""
    return is_cuda(target) and sm_version(target) >= 80


@functools.cache
def tensorize_works() -> bool:
    """Whether ``Schedule.tensorize`` can run in this process's TVM build.

    ``tensorize`` deep-copies the intrinsic's implementation through TVM's JSON serializer.
    With apache-tvm 0.27.0.post1 and apache-tvm-ffi 0.1.15.post2, serialising *any* IR node
    (even ``tvm.ir.save_json(tirx.const(1))``) segfaults in ``tvm::ffi::ToJSONGraph``; with
    apache-tvm-ffi 0.1.14.post1 it works. A segfault cannot be caught, so this probes once in
    a child process (about 4 s) and the rule keeps its CUDA-core path where it would crash.
    """
    probe = "import tvm; tvm.ir.save_json(tvm.tirx.const(1, 'int32'))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False)
    return proc.returncode == 0


def _row_axis(sch: s_tir.Schedule, block) -> int | None:
    """Index of the one token / batch axis among the spatial iters before n, or None when
    more than one of them is not 1 (never emitted by the compiler: x is [1, s, K] or
    [b, 1, K])."""
    spatial = [iv for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    if len(spatial) != 3:
        return None
    rows = [i for i in (0, 1) if not _is_one(spatial[i].dom.extent)]
    if len(rows) > 1:
        return None
    return rows[0] if rows else 1


def _is_one(extent) -> bool:
    return isinstance(extent, IntImm) and int(extent.value) == 1


def _wmma_group(out_dtype: str) -> dict[str, str]:
    """TVM's registered wmma intrinsics: A [16, 16] and B^T [16, 16] loaded from shared
    memory, the accumulator stored back to shared. Imported here, when a tensor-core build asks
    (``cuda_tensor_intrinsics`` says why that import needs care)."""
    return cuda_tensor_intrinsics().get_wmma_intrin_group(load_scope=SHARED, store_scope=ACC_SHARED,
                                 in_dtype="float16", out_dtype=out_dtype, trans_b=True)


def schedule_dequant_gemm_tc(func: tirx.PrimFunc, info: DequantMatmul, tile: TensorCoreTile,
                             tensorize: bool = True) -> s_tir.Schedule | None:
    """Tensor-core GEMM: the dequantize block fills a float16 shared tile, wmma does the math.

    Per block a ``tile.bm x tile.bn`` output tile; per ``tile.bk`` slice of K:

    * x [BM, BK] is staged in shared memory, 16-byte loads with one padding test each (see
      ``_stage_x``), rows padded by 8 halves;
    * the ``dequantize`` block itself fills the weight tile [BN, BK] in shared memory, each
      thread unpacking whole words (a word is read once per tile), as the CUDA-core path does,
      or an aligned pair of codes per step for a 3-bit BK of 64 (``tensor_core_tile``);
      where a word's codes
      share a group, in half2 pairs (``half2.splice_half2_fill``);
    * each warp loads 16x16 fragments of both tiles (``wmma.load_matrix_sync``; the weight
      tile is [n, k], i.e. B transposed) and issues ``wmma.mma_sync`` 16x16x16 into its
      accumulator fragments.

    The accumulators go back through a shared tile, from which the warp writes the output with
    the un-pad copy, cast and residual add folded in. Accumulation is in the dtype of the
    PrimFunc's reduction: float32 for our model's kernels (``matmul`` is float32(x) *
    float32(w), as MLC accumulates fp16 GEMMs where it can, since a float16 running sum of
    thousands of terms rounds at every step), float16 for an MLC-style ``NT_matmul``; ``tensorize`` only accepts the
    intrinsic whose description computes exactly the block's expression, so it cannot be
    changed silently.

    A symbolic (or ragged static) row count is padded to BM and a K that is not a multiple of
    BK is padded to it (``pad_einsum``; pad codes are 0, never read from the packed words):
    wmma needs whole 16 x 16 x 16 steps and blocks without predicates. Both at once under a
    symbolic row count do not lower in TVM 0.27 (see below), hence the 3-bit BK choice.

    ``tensorize=False`` returns the same schedule with only the five ``tensorize`` steps left
    out (fill, load_a, load_b, mma, store): identical tiling, shared tiles, dequantize fill,
    padding, fragment-shaped buffers and epilogue, written as plain loops, which
    ``cpu_check.build_cpu`` can run on the CPU. ``sch.tensorize`` verifies that the loops it
    replaces compute exactly the intrinsic's description (a 16x16 copy, a 16x16x16
    multiply-accumulate in the block's dtype); a pre-tensorize schedule that equals the
    reference plus a tensorize that succeeds is therefore the argument that the tensor-core
    kernel computes the same thing. What it cannot show is the hardware side (fragment
    layouts, alignment, barriers, speed).
    """
    sch = s_tir.Schedule(func)
    mm = _reduction_block(sch)
    producers = sch.get_producers(mm)
    if len(producers) != 1 or not _reads_words(sch, producers[0]):
        return None
    row = _row_axis(sch, mm)
    out = sch.get(mm).writes[0].source
    out_dtype = out.dtype
    operands = {r.source.dtype for r in sch.get(mm).reads if not r.source.same_as(out)}
    if row is None or operands != {"float16"} or out_dtype not in ("float16", "float32"):
        return None  # x or the dequantized weight in float32 (the llvm form): no fp16 mma
    group = _wmma_group(out_dtype) if tensorize else None

    # Whole tiles: pad the row axis to BM (symbolic or ragged) and K to BK.
    iters = sch.get(mm).iter_vars
    pads = [1] * len(iters)
    row_extent = iters[row].dom.extent
    if not isinstance(row_extent, IntImm) or int(row_extent.value) % tile.bm:
        pads[row] = tile.bm
    if info.k % tile.bk:
        if pads[row] != 1 and not isinstance(row_extent, IntImm):
            # Padding K as well under a symbolic row count: TVM 0.27's CompactBufferAllocation
            # fails on the x fill ("mismatched types. int32 vs. int64" building an LE), so
            # such shapes (3-bit with K a multiple of neither 80 nor 64, no LLaMA shape) keep
            # the CUDA-core path.
            return None
        pads[-1] = tile.bk
    if any(p != 1 for p in pads):
        sch.pad_einsum(mm, pads)
        mm = _reduction_block(sch)
    deq = _inline_into_weight_pad(sch, mm)

    # Shared tiles and fragments in a [1, rows, *] layout (the unit axis first), so every
    # 16x16 fragment is a 2-D slice of a buffer whose leading axes have extent 1, the form
    # tensorize matches. They are made from the matmul's own iterators (reindex_cache_*),
    # which also keeps their index dtypes consistent when the row count is an int64 variable.
    def x_layout(b, s, n, k):  # pylint: disable=unused-argument
        return (b, s, k) if row == 1 else (s, b, k)

    def out_layout(b, s, n, k):  # pylint: disable=unused-argument
        return (b, s, n) if row == 1 else (s, b, n)

    x_idx = next(i for i, r in enumerate(sch.get(mm).reads)
                 if r.source.dtype == "float16" and not _written_by(sch, deq, r.source))
    x_shared = sch.reindex_cache_read(mm, x_idx, SHARED, x_layout)
    for producer in sch.get_producers(x_shared):  # the pad block of the row / K axis
        sch.compute_inline(producer)
    a_frag = sch.reindex_cache_read(mm, _read_index(sch, mm, x_shared), "wmma.matrix_a",
                                    x_layout)
    b_frag = sch.cache_read(mm, _read_index(sch, mm, deq), "wmma.matrix_b")
    out_shared = sch.reindex_cache_write(mm, 0, ACC_SHARED, out_layout)
    acc = sch.reindex_cache_write(mm, 0, "wmma.accumulator", out_layout)

    loops = sch.get_loops(mm)
    unit_loop, row_loop = (loops[0], loops[1]) if row == 1 else (loops[1], loops[0])
    n_loop, k_loop = loops[2], loops[3]
    mo, wm, fm, m16 = sch.split(row_loop, [None, tile.warps_m, tile.frags_m, 16])
    no, wn, fn, n16 = sch.split(n_loop, [None, tile.warps_n, tile.frags_n, 16])
    ko, kf, k16 = sch.split(k_loop, [None, tile.bk // 16, 16])
    sch.reorder(unit_loop, mo, no, wm, wn, ko, kf, fm, fn, m16, n16, k16)
    sch.bind(mo, "blockIdx.y")
    sch.bind(no, "blockIdx.x")
    # Warps on threadIdx.z / .y (lanes are threadIdx.x): fusing the row loop (int64 when the
    # row count is symbolic) with the int32 n loop would put a cast into the bindings, which
    # blockize cannot split.
    sch.bind(wm, "threadIdx.z")
    sch.bind(wn, "threadIdx.y")
    inner = mm
    outer = sch.blockize(m16)  # the 16x16x16 step the mma intrinsic replaces

    sch.compute_at(a_frag, kf)  # fragments first: the shared fills must precede their readers
    sch.compute_at(b_frag, kf)
    threads = [("threadIdx.z", tile.warps_m), ("threadIdx.y", tile.warps_n), ("threadIdx.x", WARP)]
    _stage_x(sch, x_shared, ko, 3, threads, next(v for v in (8, 4, 2, 1) if info.k % v == 0))
    _dequantize_into_shared(sch, deq, ko, info.epw, SHARED, threads,
                            whole_words=tile.bk % info.epw == 0)
    # Rows BK + 8 halves apart: a multiple of 16 bytes (wmma's ldm rule) that spreads the rows
    # of a fragment load over the banks (BK halves alone is a multiple of 128 bytes).
    sch.storage_align(x_shared, 0, axis=-2, factor=16, offset=8)
    sch.storage_align(deq, 0, axis=-2, factor=16, offset=8)
    sch.reverse_compute_at(acc, wn)
    sch.reverse_compute_at(out_shared, wn)
    # Accumulator tile rows BN + 4 floats apart (a multiple of 16 bytes, as wmma's store needs).
    sch.storage_align(acc, 0, axis=-2, factor=16, offset=4)
    _fold_epilogue(sch, out_shared)
    init = sch.decompose_reduction(outer, ko)

    steps = [(_split_16x16(sch, a_frag), "load_a"), (_split_16x16(sch, b_frag), "load_b"),
             (_split_16x16(sch, acc), "store"),
             (sch.get_loops(sch.get_child_blocks(init)[0])[-2], "init"),
             (sch.get_loops(inner)[-3], "compute")]
    if group is not None:
        for loop, step in steps:
            sch.tensorize(loop, group[step])
    if tile.bk % info.epw == 0 and info.k % tile.bk == 0:  # whole words, K not padded
        sch = splice_half2_fill(sch, info, deq) or sch
    return sch


def _inline_into_weight_pad(sch: s_tir.Schedule, mm):
    """The block producing the matmul's weight operand, with the dequantize in it: the
    dequantize itself, or (K padded) its pad block with the dequantize inlined."""
    producers = sch.get_producers(mm)
    for producer in producers:
        if not _reads_words(sch, producer):
            for inner in sch.get_producers(producer):
                if _reads_words(sch, inner):
                    sch.compute_inline(inner)
    return next(p for p in sch.get_producers(mm) if _reads_words(sch, p))


def _read_index(sch: s_tir.Schedule, block, producer) -> int:
    written = sch.get(producer).writes[0].source
    return next(i for i, r in enumerate(sch.get(block).reads) if r.source.same_as(written))


def _fold_epilogue(sch: s_tir.Schedule, out_shared) -> None:
    """The un-pad copy, cast and residual add read the accumulator tile from shared memory and
    write the output; lanes walk n so a warp's writes are contiguous."""
    consumers = sch.get_consumers(out_shared)
    while consumers:
        nxt = sch.get_consumers(consumers[0])
        sch.reverse_compute_inline(consumers[0])
        consumers = nxt
    fused = sch.fuse(*sch.get_loops(out_shared)[-2:])
    _, tx = sch.split(fused, [None, WARP])
    sch.bind(tx, "threadIdx.x")


def _split_16x16(sch: s_tir.Schedule, block):
    """Split a fragment copy's two inner loops into 16x16 steps; the loop a wmma load / store
    replaces."""
    i, j = sch.get_loops(block)[-2:]
    i0, i1 = sch.split(i, [None, 16])
    j0, j1 = sch.split(j, [None, 16])
    sch.reorder(i0, j0, i1, j1)
    return i1


class DequantGEMM(DequantMatmulRule):
    """Prefill / batch > 8 dequantize-matmul (static or symbolic token count).

    On CUDA targets with tensor cores (sm_80+) and float16 operands it returns the wmma
    schedule (``schedule_dequant_gemm_tc``); otherwise (older GPUs, a float32 activation, an
    x with more than one non-unit row axis, or a TVM build whose ``tensorize`` crashes, see
    ``tensorize_works``) the CUDA-core tiled GEMM (``schedule_dequant_gemm``).
    ``tensor_cores=False`` forces the CUDA-core path (benchmarks compare the two).
    """

    def __init__(self, min_batch: int = 9, tensor_cores: bool = True):
        self.min_batch = min_batch
        self.tensor_cores = tensor_cores

    def accepts(self, batch: int | None, info: DequantMatmul) -> bool:
        # N tiles are whole (true of every LLaMA projection) and x tiles float16; otherwise
        # (an odd N, ``compile --dtype float32``) dlight takes it.
        return (batch is None or batch >= self.min_batch) and info.n % 64 == 0 and info.x_buffer.dtype == "float16"

    def schedule(self, func: tirx.PrimFunc, info: DequantMatmul, target: Target) -> s_tir.Schedule | None:
        """Tensor cores where the target has them and the shape fits, else CUDA cores."""
        if self.tensor_cores and has_tensor_cores(target) and tensorize_works():
            sch = schedule_dequant_gemm_tc(func, info, tensor_core_tile(info))
            if sch is not None:
                return sch
        return schedule_dequant_gemm(func, info)
