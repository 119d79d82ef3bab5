"""Decode GEMV on the CPU: a table-lookup dequantize, fused with the dot product.

At one token row every packed weight is used once, so the cost is the instructions spent per
code. Dequantizing by arithmetic (shift, mask, int->float, subtract the zero, multiply by the
scale, round through float16, FMA: ~13 instructions per 16 codes, and 3-bit groups needing
per-lane scales) kept the old kernel at 2-8 GB/s of packed weights, compute-bound. On AVX-512
(``LutGEMV``) the kernel instead builds, per output row and quantization group, the group's
whole dequantize table in one register, ``table[j] = float16((j - zero) * scale)`` for the
2^bits codes j (16 float32 lanes at 4 bits; at 3 and 2 bits a register holds the tables of
2 or 4 groups). A 16-code vector then costs a broadcast load of its words (load port), one
shift by a constant vector, one ``vpermps`` (the table entry of every lane's code; it reads
the low 4 bits of the index, so no mask while the vector is in one group) and one FMA. The
table is computed with the expressions of ``desv_export/model/dequantize.py`` (float16
rounding included), so results equal the unscheduled function's up to float32 summation
order; ``LutGEMV.match`` checks those expressions and declines anything else.

Layout: a vector's lanes run over the words of a chunk (lane l: word l % WORDS, one code of
it), so a chunk is one broadcast load and every chunk has the same shifts; x is permuted into
that lane order once per call and zero-padded past K, which also silences the padding codes.
3-bit: 8 words (80 codes) per chunk, 5 vectors. Groups of 64 and 128 (``shared_tables``): each
group's table is built once per row (and lcm(group, 80)-code block) in a register of its own
and read by every chunk it covers; such a chunk's vectors 0-3 each take 4 codes of 4 words
(``Chunk.quads``: 3 broadcast loads a chunk), so that in a chunk across two groups at most 3 of
its 5 vectors are too; those read both tables, merged by a constant lane mask (a masked
``vpermps``). Groups of 128 keep 2 accumulators per row. Groups of 40 (q3f16_1: a chunk is 2
whole groups) build one register of both tables per chunk, the group in index bit 3; groups of
32 (3 a chunk) two such registers, read with ``vpermt2ps``. The scale is broadcast straight
from its float16 in memory (``vpbroadcastw`` + ``vcvtph2ps``), measured 2x faster on q4f16_1
than a scalar load, convert and broadcast, which had made the table build the bottleneck.
``ROWS`` rows share each x vector, ``TILES`` row tiles share one accumulator allocation (TVM
allocates a local buffer in a parallel loop with a workspace call; one per 4-row tile measured
0-30 % slower), tasks of rows run across cores.

Measured on 2 shared Zen 5 cores (AMD EPYC, AVX-512), 2026-11-23,
``TVM_NUM_THREADS=2 python benchmarks/cpu_kernels.py --baseline <old gemv.py>``: the old rule
and this one interleaved call by call, weights rotated past the L3; other jobs kept the load
average at 3.0-3.6 (benchmarks/results/cpu_kernels_amd_epyc_znver5.md). Min ms per call:

    SmolLM2 linear            q4f16_1         q3f16_1         q3f16_g128asym  q2f16_g128asym
    gate_up 3072x576          0.241 -> 0.076  0.560 -> 0.083  0.708 -> 0.084  0.232 -> 0.063
    lm_head 49152x576         3.82 -> 1.30    4.66 -> 0.67    11.6 -> 1.38    1.93 -> 0.53
    GEMVs of a decode step    15.6 -> 5.1     38.5 -> 5.7     51.4 -> 6.0     15.8 -> 4.3

2.2-10x per kernel (every mode and linear). 3-bit, 2.5-3x slower than 4-bit before, is now
within 10-20 % of it per step (faster on lm_head, where memory decides; its 5-vector chunks
then needed a table per chunk, see the shared tables below); 2-bit is the fastest. An earlier
run of the same kernels on a quieter machine: q4f16_1's step 10.4 -> 3.4 ms, lm_head 1.84 ->
0.62 ms (23 GB/s, about what the two cores read). A model's decode step, old and new library
alternating in one process (machine shared, median): q4f16_1 33.3 -> 21.1 ms, q3f16_g128asym
87.5 -> 23.9 ms, q2f16_g128asym 32.1 -> 17.0 ms.

Shared tables (3-bit groups of 64 and 128; the same command, old = the per-chunk tables, load
average 1.0-1.2, 2026-11-23), min ms per call, 4-bit of the same group size for comparison:

    SmolLM2 linear            q3f16_g128asym    q4f16_g128asym  q3f16_g64asym     q4f16_g64asym
    qkv 960x576               0.0145 -> 0.0112  0.0107          0.0146 -> 0.0137  0.0121
    gate_up 3072x576          0.0432 -> 0.0338  0.0324          0.0454 -> 0.0423  0.0371
    down 576x1536             0.0188 -> 0.0151  0.0144          0.0204 -> 0.0190  0.0176
    lm_head 49152x576         0.70 -> 0.55      0.58            0.70 -> 0.66      0.59
    GEMVs of a decode step    3.25 -> 2.56      2.51            3.39 -> 3.17      2.82

q3f16_g128asym 1.2-1.3x (3-5 % behind 4-bit, lm_head ahead), q3f16_g64asym 1.03-1.1x
(still 8-19 % behind 4-bit: every chunk crosses a group, 3 vectors of 5 read two
tables). Other modes compile to the same kernel as before. Tried and slower: the two periodic
tables read with ``vpermt2ps`` (K = 576 2-6 % slower than the per-chunk tables, in-cache, one
thread; only K = 1536 faster), blended per chunk into one register with the group in index bit
3 (``vshuff64x2`` + ``vpternlogd``: 7 % slower; fewer table builds did not pay, the kernel is
bound by its shifts, permutes and ternary logic and by the FMA chains), shared tables for groups
of 32 (8 % slower), ``ROWS`` 2, 3 or 6 (6-20 % slower). In-cache the masked permutes cost
q3f16_g128asym ~20 %: without them (wrong results) it was faster than 4-bit.

AVX2 (``lut_lanes`` 8: most laptop and desktop x86 CPUs, AMD Zen 2/3) gets the same kernel in
8-lane registers, since 2026-12-06. ``vpermps ymm`` reads the index's low 3 bits, so a 3-bit
table is one register and needs no mask, a 2-bit table one register, periodic; a 4-bit table
is two registers (codes 0-7, 8-15), two ``vpermps`` and a blend on the code's bit 3. A chunk is
one word at 2 and 4 bits (1 and 2 vectors, always in one group) and four words at 3 bits (40
codes, 5 vectors of 2 codes a word): a q3f16_1 chunk is one group, and where a vector of the
straddling 3-bit modes meets two groups it blends their two lookups by a constant lane mask.
Each group's table is built once per row and block. Measured on 2 shared Zen 3 cores
(``znver3``, no AVX-512), old = the schedule form below, interleaved, weights rotated
(``benchmarks/results/cpu_kernels_amd_epyc_znver3.md``), median ms of SmolLM2's gate_up
3072x576: q4f16_1 0.269 -> 0.222, q4f16_g128asym 0.333 -> 0.234, q3f16_1 0.562 -> 0.114,
q3f16_g128asym 0.455 -> 0.136, q2f16_g128asym 0.385 -> 0.111; the GEMVs of a decode step
q4f16_1 19.1 -> 16.7, q3f16_1 47.3 -> 9.1, q3f16_g128asym 38.1 -> 11.1, q2f16_g128asym
29.7 -> 9.0. So on AVX2 3-bit and 2-bit now run ahead of 4-bit, where they had trailed it.
The model's decode (``benchmarks/decode_ab.py``, old and new library alternating): q4f16_1
37.3 -> 45.3 tok/s, q3f16_1 16.8 -> 67.2, q3f16_g128asym 31.8 -> 72.0, q2f16_g128asym 36.1
-> 76.5. 4-bit stays the slowest: 7 instructions per 8 codes (two permutes and the blend)
against 4 at 2 and 3 bits; ``ROWS`` 2 or 3 was no faster there.

Targets without AVX2 and any dequantize of another form keep the schedule below
(``_schedule``): dequantize inline, 16-lane ``rfactor`` partial sums, ``ROWS`` rows
interleaved, rows across cores, 3-bit groups that straddle words unpacked in a phase of their
own.

A float16 weight (q0f16, and the float16 embedding that the asymmetric modes keep as their
tied lm_head) costs two instructions per 16 weights, so it is bound by memory, and there the
row interleave hurt: 4 rows read side by side are 4 forward streams of one row each (1152
bytes at K = 576), too short for the hardware prefetcher to follow. ``_schedule_streamed``
reads the rows one after another, one forward stream per core, with two 16-lane FMA chains a
row. Zen 4 VM, 2 threads, 2026-12-03, old and new library alternating in one process: a q0f16
SmolLM2 decode step 19.1 -> 10.6 ms (median of 8 rounds; a second run 23.5 -> 19.5 while
another tenant loaded the memory), the step of q4f16_g128asym with its float16 lm_head 10.6 ->
8.4 ms, of q2f16_g128asym 9.6 -> 7.2 ms; in ``perf``, q0f16's gate_up went from 32 % of the
step's samples to 19 %. ``benchmarks/cpu_kernels.py --modes q0f16`` gives the lm_head 4.29 ->
1.90 ms (13 -> 30 GB/s) but the four small linears 0.75-1.08x: called back to back on rotated
copies they read at 35-75 GB/s, faster than this machine's DRAM, so that loop does not show
how they run between the model's other kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.sym import Analyzer
from tvm.ir import prim
from tvm.ir.expr import Var
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T
from tvm.target import Target, codegen

from ..analysis import seq_stmt, u32, with_root_body
from .match import CPUMatmul, CPUMatmulRule, is_llvm, match_matmul

ROWS = 4  # output rows sharing each x vector
STREAM_LANES = 32  # float weights: partial sums per row, two 16-lane FMA chains
LANES = 16  # float32 lanes of one AVX-512 register
AVX2_LANES = 8  # of an AVX2 one
TILES = 8  # row tiles per parallel task: one accumulator allocation per task, not per tile
# codes per word -> words per chunk (one broadcast load), by vector lanes
WORDS = {LANES: {8: 2, 10: 8, 16: 1}, AVX2_LANES: {8: 1, 10: 4, 16: 1}}
PERMUTE = "llvm.x86.avx512.permvar.sf.512"  # vpermps: table[index & 15]
PERMUTE2 = "llvm.x86.avx512.vpermi2var.ps.512"  # vpermt2ps: two tables, index & 31
PERMUTE_AVX2 = "llvm.x86.avx2.permps"  # vpermps ymm: table[index & 7]


class CPUVectorGEMV(CPUMatmulRule):
    """Matmuls with one static token row (the decode step and the last-token lm_head)."""

    def __init__(self, max_rows: int = 1) -> None:
        self.max_rows = max_rows

    def accepts(self, static_rows: int | None) -> bool:
        return static_rows is not None and static_rows <= self.max_rows

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        """The table-lookup kernel where the target has AVX-512 and the dequantize is the
        model's; the schedule form otherwise (the base class's ``apply`` has no target)."""
        if not is_llvm(target):
            return None
        info = match_matmul(func)
        if info is None or not self.accepts(info.static_rows):
            return None
        lanes = lut_lanes(target)
        if lanes:
            lut = LutGEMV.match(info, lanes)
            if lut is not None:
                return lut.schedule(info)
        return self.schedule(info)

    def schedule(self, info: CPUMatmul) -> s_tir.Schedule:
        return _schedule(info)


# ----------------------------------------------------------------------------- LUT kernel


def lut_lanes(target: Target) -> int | None:
    """Vector lanes of the table-lookup kernel on ``target``: 16 with AVX-512, 8 with AVX2
    (and the F16C and FMA every AVX2 CPU has), None without a variable permute."""
    if codegen.target_has_features("avx512f", target):
        return LANES
    if all(codegen.target_has_features(f, target) for f in ("avx2", "f16c", "fma")):
        return AVX2_LANES
    return None


@dataclass(frozen=True)
class Chunk:
    """Lane geometry: a vector's lane ``l`` holds code ``v * per + l // words`` of word
    ``l % words`` of the chunk, so every vector of a chunk comes from one broadcast load."""

    epw: int  # codes per word
    words: int  # words per chunk
    quads: bool = False  # 3-bit shared tables: vectors 0-3 from 4 words each (see ``code``)
    lanes: int = LANES

    @property
    def per(self) -> int:
        """Codes of one word in one vector."""
        return self.lanes // self.words

    @property
    def vectors(self) -> int:
        return self.epw // self.per

    @property
    def codes(self) -> int:
        return self.words * self.epw

    def code(self, v: int, lane: int) -> int:
        """Code (offset in the chunk) that lane ``lane`` of vector ``v`` multiplies. With
        ``quads`` (8 words of 10 codes), vectors 0-3 take codes 4 (v % 2) .. + 3 of words
        4 (v // 2) .. + 3 (lane: word lane % 4) and vector 4 codes 8, 9 of all 8 words, so
        that a chunk across two groups has at most 3 vectors across both."""
        if self.quads and v < 4:
            return (4 * (v // 2) + lane % 4) * self.epw + 4 * (v % 2) + lane // 4
        return (lane % self.words) * self.epw + v * self.per + lane // self.words


def _const_vector(values: list, dtype: str) -> tirx.PrimExpr:
    return tirx.Shuffle([tirx.const(v, dtype) for v in values], list(range(len(values))))


def _splat(buf: Var, indices: list, lanes: int) -> tirx.PrimExpr:
    """``buf[indices]`` in all lanes as a stride-0 vector load (a broadcast load; LLVM turns a
    scalar load + broadcast of a float16 into three ops, this into one)."""
    return buf[(*indices[:-1], tirx.Ramp(indices[-1], 0, lanes))]


@dataclass(frozen=True)
class LutGEMV:
    """A decode matmul whose weight is ``float16((code - zero) * scale)`` as
    ``desv_export/model/dequantize.py`` writes it; the buffers and facts the kernel needs."""

    x: Var
    q_weight: Var
    q_scale: Var
    q_zero: Var | None  # asym: packed zero codes; sym: None, the zero is ``zero_const``
    zero_const: float
    out: Var  # the reduction's output [1..., n]
    n: int
    k: int
    bits: int
    group: int
    lanes: int = LANES  # AVX-512's 16, or AVX2's 8

    @property
    def epw(self) -> int:
        return 32 // self.bits

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def groups(self) -> int:
        return math.ceil(self.k / self.group)

    @property
    def words(self) -> int:
        return int(self.q_weight.ty.shape[1])

    @property
    def chunk(self) -> Chunk:
        return Chunk(self.epw, WORDS[self.lanes][self.epw], quads=self.shared_tables(),
                     lanes=self.lanes)

    def vec(self, dtype: str) -> str:
        return f"{dtype}x{self.lanes}"

    @staticmethod
    def match(info: CPUMatmul, lanes: int = LANES) -> LutGEMV | None:
        """The facts, if the unpack, dequantize and reduction are exactly the expected
        expressions (compared after simplification with expressions rebuilt here); else None,
        and the rule keeps the schedule form, which computes whatever the function says."""
        if info.unpack is None or info.epw not in WORDS[lanes] or info.group is None:
            return None
        sch = info.sch
        unpack, weight, block = sch.get(info.unpack), sch.get(info.weight), sch.get(info.block)
        q_weight, codes = unpack.reads[0].source, unpack.writes[0].source
        w = weight.writes[0].source
        side = [r.source for r in weight.reads if not r.source.same_as(codes)]
        q_scale = next((b for b in side if b.dtype == "float16"), None)
        q_zero = next((b for b in side if b.dtype == "uint32"), None)
        x = next((r.source for r in block.reads if not r.source.same_as(w)), None)
        out = block.writes[0].source
        if q_scale is None or x is None or x.dtype != "float32" or out.dtype != "float32":
            return None
        bits = 32 // info.epw
        lut = LutGEMV(x=x, q_weight=q_weight, q_scale=q_scale, q_zero=q_zero,
                      zero_const=float(2 ** (bits - 1) - 1), out=out, n=info.n, k=info.k,
                      bits=bits, group=info.group, lanes=lanes)
        if lut.groups_per_chunk() > max(1, 2 * (lanes >> bits)):
            return None  # more tables than a chunk reads (AVX-512: the two registers of
            # vpermt2ps; AVX2: one group a chunk at 4 bits, two at 3)
        i, j = (iv.var for iv in unpack.iter_vars)
        wi, wj = (iv.var for iv in weight.iter_vars)
        *rows, n, k = (iv.var for iv in block.iter_vars)
        expected = (
            (unpack.body.value, lut._code(q_weight, i, j, info.epw).astype("float32")),
            (weight.body.value, lut._dequantize(codes[wi, wj], wi, wj)),
            (block.body.value, out[(*rows, n)] + x[(*rows, k)] * w[n, k]),
        )
        ana = Analyzer()
        if all(prim.expr_deep_equal(ana.simplify(a), ana.simplify(b)) for a, b in expected):
            return lut
        return None

    def groups_per_chunk(self) -> int:
        """Most quantization groups that one chunk's codes fall in."""
        codes = self.epw * WORDS[self.lanes][self.epw]  # self.chunk's (its geometry asks us)
        return max(len({(start + c) // self.group for c in range(codes)})
                   for start in range(0, math.lcm(self.group, codes), codes))

    def _code(self, packed: Var, row, col, epw: int) -> tirx.PrimExpr:
        """Code ``col`` of ``packed`` row ``row`` (the model's ``unpack_code``)."""
        shift = (tirx.floormod(col, epw) * self.bits).astype("uint32")
        return (packed[row, tirx.floordiv(col, epw)] >> shift) & u32(self.mask)

    def _dequantize(self, code, row, col) -> tirx.PrimExpr:
        zero = (tirx.const(self.zero_const, "float32") if self.q_zero is None else
                self._code(self.q_zero, row, tirx.floordiv(col, self.group), self.epw)
                .astype("float32"))
        scale = self.q_scale[row, tirx.floordiv(col, self.group)].astype("float32")
        return ((code - zero) * scale).astype("float16").astype("float32")

    # -- the kernel -------------------------------------------------------------------

    def schedule(self, info: CPUMatmul) -> s_tir.Schedule:
        """The matched function with its dequantize and reduction replaced by the kernel;
        the epilogue loops stay as they were."""
        sch = info.sch
        sch.compute_inline(info.unpack)
        sch.compute_inline(info.weight)
        nest = sch.get(sch.get_loops(info.block)[0])
        func = sch.mod["main"]
        root = func.body.block
        body = list(root.body.seq) if isinstance(root.body, tirx.SeqStmt) else [root.body]
        body = [self.kernel() if s.same_as(nest) else s for s in body]
        return s_tir.Schedule(with_root_body(func, seq_stmt(body)))

    def kernel(self) -> tirx.Stmt:
        """x permuted once, then tasks of TILES x ROWS output rows across cores."""
        chunk = self.chunk
        nchunks = math.ceil(self.groups * self.group / chunk.codes)
        tiles = self.n // ROWS
        acc_type = (ROWS * self.chains,), self.vec("float32")
        with IRBuilder() as ib:
            with T.sblock("lut_gemv"):
                xt = T.sblock_alloc_buffer((nchunks * chunk.codes,), "float32")
                self._permute_x(xt, nchunks)
                with T.parallel(0, math.ceil(tiles / TILES)) as task:
                    acc = T.alloc_local(*acc_type)
                    with T.serial(0, TILES) as i:
                        with T.If(task * TILES + i < tiles):
                            with T.Then():
                                self._rows(xt, acc, (task * TILES + i) * ROWS, ROWS)
                if self.n % ROWS:
                    acc = T.alloc_local(*acc_type)
                    self._rows(xt, acc, tiles * ROWS, self.n % ROWS)
        return ib.get()

    def _x(self, k) -> tirx.PrimExpr:
        return self.x[(*[0] * (len(self.x.ty.shape) - 1), k)]

    def _permute_x(self, xt: Var, nchunks: int) -> None:
        """xt[chunk, v, lane] = x[the code that lane multiplies], 0 past K."""
        chunk = self.chunk
        with T.serial(0, nchunks) as c:
            for v in range(chunk.vectors):
                for lane in range(self.lanes):
                    src = c * chunk.codes + chunk.code(v, lane)
                    value = tirx.Select(src < self.k, self._x(tirx.min(src, self.k - 1)),
                                        tirx.const(0, "float32"))
                    T.buffer_store(xt, value, [c * chunk.codes + v * self.lanes + lane])

    def _rows(self, xt: Var, acc: Var, n0, rows: int) -> None:
        """Output rows n0 .. n0 + rows: accumulate, then sum the lanes into ``out``."""
        for r in range(rows * self.chains):
            T.buffer_store(acc, tirx.Broadcast(tirx.const(0, "float32"), self.lanes), [r])
        chunk = self.chunk
        block = math.lcm(self.group, chunk.codes)  # codes of a chunk/group pattern period
        total = self.groups * self.group
        full = total // block
        if full:
            with T.serial(0, full) as b:
                self._chunks(xt, acc, n0, rows, b * block, range(block // chunk.codes))
        tail = math.ceil((total - full * block) / chunk.codes)
        if tail:
            self._chunks(xt, acc, n0, rows, full * block, range(tail),
                         last_group=self.groups - 1 - full * block // self.group)
        for r in range(rows):
            sum_r = acc[r * self.chains]
            for i in range(1, self.chains):
                sum_r = sum_r + acc[r * self.chains + i]
            total = tirx.call_llvm_pure_intrin("float32", "llvm.vector.reduce.fadd",
                                               tirx.const(0, "float32"), sum_r)
            T.buffer_store(self.out, total, [*[0] * (len(self.out.ty.shape) - 1), n0 + r])

    def _chunks(self, xt: Var, acc: Var, n0, rows: int, base, chunks: range,
                last_group: float = math.inf) -> None:
        """Chunks ``base / chunk.codes + c`` for c in ``chunks`` (static), all rows. In the
        row's tail chunk, lanes past the last group (x is 0 there) read ``last_group``'s table
        (relative to the group of ``base``), not a scale past the row."""
        chunk, lanes = self.chunk, self.lanes
        shared, bound = self.shared_tables(), {}
        avx2 = lanes == AVX2_LANES
        for c in chunks:
            start = c * chunk.codes  # static offset of the chunk from ``base``
            # Static group of every (vector, lane), relative to the group of ``base``.
            lane_group = [[min((start + chunk.code(v, lane)) // self.group, last_group)
                           for lane in range(lanes)] for v in range(chunk.vectors)]
            groups = sorted({g for gs in lane_group for g in gs})
            x_vecs = [xt[tirx.Ramp(base + start + v * lanes, 1, lanes)]
                      for v in range(chunk.vectors)]
            per_row = []
            for r in range(rows):
                n = n0 + r
                if avx2:  # each group's table (4-bit: 2 registers), bound where first read
                    for g in groups:
                        if (r, g) not in bound:
                            bound[r, g] = [T.bind(t) for t in
                                           self._avx2_table(n, base // self.group + g)]
                    tables = {g: bound[r, g] for g in groups}
                elif shared:  # one periodic table per group, bound (T.bind) where first read
                    for g in groups:
                        if (r, g) not in bound:
                            bound[r, g] = T.bind(self._table(n, [base // self.group + g]))
                    tables = [bound[r, g] for g in groups]
                else:
                    tables = self._tables(n, [base // self.group + g for g in groups])
                word = (base + start) // self.epw
                per_row.append((tables, [self._words(n, word, v) for v in range(chunk.vectors)]))
            # Shared tables: the rows' vectors interleaved (0-4 % faster there; with the
            # per-chunk tables q3f16_g64asym was 1.35x slower).
            order = ([(r, v) for v in range(chunk.vectors) for r in range(rows)] if shared
                     else [(r, v) for r in range(rows) for v in range(chunk.vectors)])
            for r, v in order:
                tables, words = per_row[r]
                words = words[v]
                shifts = [self.bits * (chunk.code(v, lane) % self.epw) for lane in range(lanes)]
                index = words >> _const_vector(shifts, "uint32")
                if avx2:  # a vector across two groups (3-bit) blends their lookups
                    first, *second = sorted(set(lane_group[v]))
                    w = self._avx2_lookup(tables[first], index)
                    if second:
                        w = tirx.Select(_const_vector([g != first for g in lane_group[v]], "bool"),
                                        self._avx2_lookup(tables[second[0]], index), w)
                elif shared and len(groups) > 1:  # both groups' tables; LLVM makes the select
                    # a masked vpermps (vpermt2ps, or a blend into one register, was slower)
                    index = index.astype("int32x16")
                    second = [g == groups[1] for g in lane_group[v]]
                    w = tirx.Select(
                        _const_vector(second, "bool"),
                        tirx.call_llvm_pure_intrin("float32x16", PERMUTE, tables[1], index),
                        tirx.call_llvm_pure_intrin("float32x16", PERMUTE, tables[0], index))
                else:
                    if len(groups) > 1:  # the code's low bits, then its group's table slot
                        slot = [groups.index(g) << self.bits for g in lane_group[v]]
                        index = (index & tirx.Broadcast(u32(self.mask), LANES)) | (
                            _const_vector(slot, "uint32"))
                    index = index.astype("int32x16")
                    if len(tables) == 1:
                        w = tirx.call_llvm_pure_intrin("float32x16", PERMUTE, tables[0], index)
                    else:
                        w = tirx.call_llvm_pure_intrin("float32x16", PERMUTE2, tables[0],
                                                       index, tables[1])
                a = r * self.chains + (c * chunk.vectors + v) % self.chains
                T.buffer_store(acc, acc[a] + x_vecs[v] * w, [a])

    def _avx2_table(self, n, g) -> list:
        """Group ``g``'s table in 8-lane registers: at 3 bits one, exactly (``vpermps`` reads
        the index's low 3 bits); at 2 bits one, periodic (a neighbour's bit in bit 2 picks the
        same entry); at 4 bits two, codes 0-7 and 8-15."""
        return [self._table(n, [g], first) for first in range(0, 1 << self.bits, AVX2_LANES)]

    def _avx2_lookup(self, tables: list, index: tirx.PrimExpr) -> tirx.PrimExpr:
        """The table entry of every lane's code (``index``: uint32, the code in its low bits):
        one ``vpermps``, at 4 bits two and a blend on the code's bit 3. (The bit is tested on
        the uint32 index: an int32 ``&`` trips TVM 0.27's ForceNarrowIndexToInt32.)"""
        lanes = AVX2_LANES
        signed = index.astype("int32x8")
        lookups = [tirx.call_llvm_pure_intrin("float32x8", PERMUTE_AVX2, t, signed) for t in tables]
        if len(lookups) == 1:
            return lookups[0]
        high = (index & tirx.Broadcast(u32(lanes), lanes)) != tirx.Broadcast(u32(0), lanes)
        return tirx.Select(high, lookups[1], lookups[0])

    @property
    def chains(self) -> int:
        """Accumulators (independent FMA chains) per row: 2 for 3-bit groups of 128 (3-7 %
        faster in-cache there); elsewhere the extra registers spilled (q3f16_g64asym with the
        old tables 1.2x slower, with shared tables 3 % slower)."""
        return 2 if self.shared_tables() and self.group > self.chunk.codes else 1

    def shared_tables(self) -> bool:
        """3-bit groups of 64 and 128 (a chunk of 80 codes spans at most 2): each group's table
        in a register of its own (periodic, so no mask), built once per row and block and read
        by every chunk it covers. Not for groups of 32 (3 groups a chunk: 3 permutes per
        vector, 8 % slower than two pair registers and vpermt2ps) nor 40 (q3f16_1: a chunk is
        2 whole groups, no table to share)."""
        return (self.lanes == LANES and self.epw == 10 and self.groups_per_chunk() <= 2
                and self.group % LANES == 0)

    def _words(self, n, word, v: int = 0) -> tirx.PrimExpr:
        """The words of vector ``v`` of the chunk, lane l holding its word (l % chunk.words but
        with ``quads``): one broadcast load."""
        chunk = self.chunk
        if chunk.words == 1:
            return _splat(self.q_weight, [n, word], self.lanes)
        # The last chunk of a row may hold fewer words: lanes past the row repeat its last word
        # (their x is 0); a static count, since only the static tail chunk can be short.
        have = min(chunk.words, self.words - word) if isinstance(word, int) else chunk.words
        lanes = [chunk.code(v, lane) // chunk.epw for lane in range(self.lanes)]
        first = min(min(lanes), have - 1)  # quads: load only the 4 words the vector reads
        count = min(max(lanes) + 1, have) - first
        if count == 1:
            return _splat(self.q_weight, [n, word + first], self.lanes)
        loaded = self.q_weight[n, tirx.Ramp(word + first, 1, count)]
        return tirx.Shuffle([loaded] * math.ceil(self.lanes / count),
                            [min(w, have - 1) - first for w in lanes])

    def _tables(self, n, groups: list) -> list:
        """One or two table registers holding the tables of ``groups`` (consecutive slots of
        2^bits lanes; a single group fills all 16 lanes periodically)."""
        size = 1 << self.bits
        slots = self.lanes // size
        tables = []
        for first in range(0, len(groups), slots):
            tables.append(self._table(n, groups[first:first + slots]))
        return tables

    def _table(self, n, members: list, first_code: int = 0) -> tirx.PrimExpr:
        """float16((j - zero) * scale) in every lane, j = first_code + lane % 2^bits; with
        several groups, lanes [i * 2^bits, (i + 1) * 2^bits) hold member i's table."""
        size, lanes = 1 << self.bits, self.lanes
        codes = _const_vector([float(first_code + (lane & self.mask)) for lane in range(lanes)],
                              "float32")

        def per_lane(value_of):
            value = value_of(members[-1])
            for i in range(len(members) - 2, -1, -1):
                inside = [lane // size == i for lane in range(lanes)]
                value = tirx.Select(_const_vector(inside, "bool"), value_of(members[i]), value)
            return value

        scale = per_lane(lambda g: _splat(self.q_scale, [n, g], lanes).astype(self.vec("float32")))
        if self.q_zero is None:
            zero = tirx.Broadcast(tirx.const(self.zero_const, "float32"), lanes)
        else:
            zero = per_lane(self._zero_vector(n))
        return ((codes - zero) * scale).astype(self.vec("float16")).astype(self.vec("float32"))

    def _zero_vector(self, n):
        lanes = self.lanes

        def zero(g):
            word = _splat(self.q_zero, [n, tirx.floordiv(g, self.epw)], lanes)
            shift = tirx.Broadcast((tirx.floormod(g, self.epw) * self.bits).astype("uint32"),
                                   lanes)
            return ((word >> shift) & tirx.Broadcast(u32(self.mask), lanes)).astype(
                self.vec("float32"))
        return zero


# ------------------------------------------------------------------ schedule (no AVX-512)


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


def _schedule(info: CPUMatmul) -> s_tir.Schedule:
    if staged(info):
        return _schedule_staged(info)
    if info.epw is None:
        return _schedule_streamed(info)
    sch, block = info.sch, info.block
    if info.unpack is not None:
        sch.compute_inline(info.unpack)
    sch.compute_inline(info.weight)
    partial, n_o, n_i, k_o, k_i = _partial_sums(sch, block, lanes_for(info.epw))
    sch.reorder(n_o, k_o, n_i, k_i)
    sch = _finish(info, partial, n_o, k_o, k_i)
    sch.unroll(n_i)  # ROWS independent FMA chains
    return sch


def _schedule_streamed(info: CPUMatmul) -> s_tir.Schedule:
    """A float weight, row after row: each core reads its rows as one forward stream (see the
    module docstring); a K that is not a multiple of two chains keeps one."""
    sch, block = info.sch, info.block
    sch.compute_inline(info.weight)
    lanes = STREAM_LANES if info.k % STREAM_LANES == 0 else LANES
    partial, n_o, n_i, k_o, k_i = _partial_sums(sch, block, lanes)
    sch.reorder(n_o, n_i, k_o, k_i)
    return _finish(info, partial, n_o, k_o, k_i)


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
