"""Decode GEMV on tensor cores: the weights dequantized in half2 pairs straight into the A
fragment of ``mma.sync.m16n8k16``, x in B (experimental; not in ``cuda_rules()``).

Why: ``DecodeGEMV`` spends about 4.8 SASS instructions per weight code at 2 and 4 bits, and
three of them are the float32 widening of the weight and of x and the FMA (static audit in
``docs/schedules.md``). On an H200 that is more than the issue rate allows at 2 bits. An mma
does the products and the sum of 16 x 16 codes in one instruction, so what a code costs is
its dequantize, two codes per ``LOP3`` + ``LEA.HI`` + ``HSUB2`` + ``HMUL2``: about 2 per code.

The fragment map (PTX ISA, ``m16n8k16`` with f16 A/B and f32 C; lane ``l``, ``g = l / 4``,
``t = l % 4``): A's 32-bit registers hold (row ``g``, k ``2t, 2t+1``), (row ``g + 8``, same k),
(row ``g``, k ``2t+8, 2t+9``), (row ``g + 8``, same k); B's hold k ``2t, 2t+1`` and
``2t+8, 2t+9`` of column ``g``; C's (row ``g``, n ``2t, 2t+1``) and (row ``g + 8``, same n).
A lane therefore holds the same k in A and in B, and a dot product does not care which code
a k stands for as long as A and B agree. So:

* a block owns 16 weight rows; lane ``l`` reads rows ``g`` and ``g + 8``, words
  ``[4 t, 4 t + 4)`` of each 16-word step (16-byte loads), and puts the half2 pairs of those
  words (``tvm_schedules/half2.py``: codes ``j`` and ``j + epw / 2`` of a word) into A, the
  lane's pair ``2m`` and ``2m + 1`` into mma ``m``'s two k halves. A 3-bit word holds 5 pairs,
  so its pairs run on across words; where a lane's pair count is odd the last mma's second
  half is zero in A and in B;
* a row whose word count is not a whole number of steps ends in a tail step of ``4 T`` words
  (``T`` = 1, 2 or 3 a lane), done once by one warp after the loop;
* B holds x at exactly those codes, in every one of its 8 columns. Every column of C is then
  the same y: ``c0`` is y[g] and ``c2`` is y[g + 8], and no warp reduction is needed;
* x is staged once per block in shared memory in pair order (``xs[w epw + 2j + h] =
  x[w epw + j + h epw / 2]``), so a lane's B registers are one 8-byte shared load;
* K is split over the block's warps (16 rows a warp would give a 4096-row projection 256
  warps, 2 per SM, too few loads in flight); their partial sums meet in shared memory, where
  16 threads add them and run the function's epilogue (cast, residual add) on the result.

Scope: one row of x (decode), float16 x, float32 accumulation (our model's kernels), 2-, 3-
and 4-bit words whose groups hold whole words (all 2- and 4-bit modes and MLC's q3f16_1; not
the 3-bit modes whose 10-code words straddle 32/64/128-code groups), N a multiple of 16, words
per row a multiple of 4 (every LLaMA and SmolLM2 shape; rows padded to whole groups meet
x = 0), sm_80 and later.

Checked without a GPU: with ``emulate=True`` the same code is built with each lane computing
every lane's fragments and the mma from the map above (``a_position``, ``b_position``,
``c_position``; the tests compare A's and C's with TVM's own ldmatrix layout), so a CPU run of
the serialised threads checks the fill order, the dequantize and the reduction; the real
kernel's CUDA source is compiled with nvcc. Not checked: the hardware mma (its rounding of the
float32 sum included) and speed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.ir import Range
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T
from tvm.target import Target

from .analysis import (DequantMatmul, DequantMatmulRule, read_buffer, seq_stmt, sm_version,
                       with_root_body)
from .half2 import _group_zero, _Pairs, _replace, only_if

WARP = 32
ROWS = 16  # m of m16n8k16: the weight rows of a block
K_LANES = 4  # lanes t = l % 4 split a row's 16 k of one mma
MMA_K = 16
LANE_WORDS = 4  # words of a row a lane loads per step: one 16-byte load
BITS = (2, 3, 4)  # word widths the kernel unpacks (3 bits only where groups hold whole words)


def takes(bits: int, group: int) -> bool:
    """Whether the kernel is written for a packing: its words never straddle groups."""
    return bits in BITS and group % (32 // bits) == 0


def a_position(i, j):
    """(lane, half index) of A[i, j] in the m16n8k16 f16 A fragment (PTX ISA); ints or TIR
    expressions (``//`` and ``%`` are floor division and modulo on both)."""
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + 2 * (i // 8) + j % 2


def b_position(k, n):
    """(lane, half index) of B[k, n] in the m16n8k16 f16 B fragment (PTX ISA)."""
    return 4 * n + (k % 8) // 2, 2 * (k // 8) + k % 2


def c_position(i, n):
    """(lane, float index) of C[i, n] in the m16n8k16 f32 C fragment (PTX ISA)."""
    return 4 * (i % 8) + (n % 8) // 2, 2 * (i // 8) + n % 2


@dataclass(frozen=True)
class MmaPlan:
    """How a matched decode GEMV is tiled: ``steps`` steps of ``LANE_WORDS`` words of two rows
    a lane, split over ``warps`` warps, then a tail step of ``tail_words`` words a lane."""

    n: int
    k: int
    padded_k: int  # codes per packed row (K, or K padded to whole groups)
    epw: int
    group: int
    warps: int

    @property
    def bits(self) -> int:
        return 32 // self.epw

    @property
    def words(self) -> int:
        """Words per weight row: K / epw, or more where rows are padded to whole groups."""
        return self.padded_k // self.epw

    @property
    def steps(self) -> int:
        return self.words // (K_LANES * LANE_WORDS)

    @property
    def tail_words(self) -> int:
        return self.words % (K_LANES * LANE_WORDS) // K_LANES

    @staticmethod
    def of(info: DequantMatmul, warps: int) -> MmaPlan | None:
        if not takes(info.bits, info.group) or info.n % ROWS or info.words % K_LANES:
            return None
        steps = info.words // (K_LANES * LANE_WORDS)
        while warps > 1 and warps > steps:
            warps //= 2
        return MmaPlan(info.n, info.k, info.words * info.epw, info.epw, info.group, warps)


def _mma_count(plan: MmaPlan, v: int) -> int:
    """mmas of a step of ``v`` words a lane: two of its pairs a row each."""
    return -(-v * (plan.epw // 2) // 2)


class _Lane:
    """One lane's operands for one step: its ``v`` words of rows ``g`` and ``g + 8`` from word
    ``base + t v`` on, in registers, dequantized per pair on demand, and its x pairs from the
    shared tile. Pair ``p`` of the lane is pair ``p % half`` of word ``p / half``; the tile
    holds each word's pairs in order, so its x sit at ``col epw + 2 p`` for every width."""

    def __init__(self, plan: MmaPlan, bufs: dict, row0, lane, base, v: int, xs: tirx.Buffer):
        self.plan, self.bufs, self.xs, self.v = plan, bufs, xs, v
        self.pairs = _Pairs(plan.bits, plan.epw)
        self.col = base + tirx.floormod(lane, K_LANES) * v
        self.rows = [row0 + tirx.floordiv(lane, K_LANES) + 8 * r for r in (0, 1)]
        self.words = T.alloc_local((2 * v,), "uint32")
        for r, row in enumerate(self.rows):
            # one load a row (16 bytes in a whole step); 3 words are 3 loads, as no uint32x3 is
            for at, width in ([(0, v)] if v in (1, 2, 4) else [(i, 1) for i in range(v)]):
                index = tirx.Ramp(self.col + at, 1, width) if width > 1 else self.col + at
                dest = r * v + at
                T.buffer_store(self.words, bufs["weight"][row, index],
                               [tirx.Ramp(dest, 1, width) if width > 1 else dest])
        self.count = v * self.pairs.half  # the lane's pairs of a row
        self._spread: dict = {}
        self._group: dict = {}

    def _spread_word(self, r: int, w: int):
        if (r, w) not in self._spread:
            self._spread[(r, w)] = T.bind(self.pairs.spread(self.words[r * self.v + w]))
        return self._spread[(r, w)]

    def _group_of(self, r: int, w: int):
        """(1024 + zero, scale) of word ``w`` of row ``r``, bound once per group and row.
        ``col`` is a multiple of ``v`` and groups start every ``group / epw`` words, so runs of
        their gcd words from ``col`` never cross a group boundary."""
        plan = self.plan
        key = (r, w // math.gcd(self.v, plan.group // plan.epw))
        if key not in self._group:
            row, g = self.rows[r], tirx.floordiv((self.col + w) * plan.epw, plan.group)
            zero = _group_zero(self.bufs.get("zero"), row, g, self.pairs)
            self._group[key] = (T.bind(zero), T.bind(self.bufs["scale"][row, g]))
        return self._group[key]

    def weight_pair(self, r: int, p: int) -> tirx.PrimExpr:
        """half2 weights of the lane's pair ``p`` of row ``r``: ``(1024 + q - (1024 + zero)) *
        scale``, the model's float16 values exactly; zero past the lane's last pair."""
        if p >= self.count:
            return tirx.Broadcast(tirx.const(0, "float16"), 2)
        w, j = divmod(p, self.pairs.half)
        zero, scale = self._group_of(r, w)
        pair = self.pairs.pair(self._spread_word(r, w), j)
        return (pair - tirx.Broadcast(zero, 2)) * tirx.Broadcast(scale, 2)

    def x_pair(self, p: int) -> tirx.PrimExpr:
        """x at the codes of pair ``p`` (zero past the lane's last pair: 0 x 0, never 0 x x)."""
        if p >= self.count:
            return tirx.Broadcast(tirx.const(0, "float16"), 2)
        return self.xs[tirx.Ramp(self.col * self.plan.epw + 2 * p, 1, 2)]

    def x_quad(self, m: int) -> tirx.PrimExpr | None:
        """x at the codes of pairs ``2m`` and ``2m + 1`` (B's k halves) as one 8-byte load,
        where that is aligned and whole: always at 2 and 4 bits; at 3 bits where ``v`` is even
        (None elsewhere: two ``x_pair`` loads)."""
        if 2 * m + 1 < self.count and (self.plan.epw * self.v) % 4 == 0:
            return self.xs[tirx.Ramp(self.col * self.plan.epw + 4 * m, 1, 4)]
        return None


def _fill(lane: _Lane, m: int, a: tirx.Buffer, a_off, b: tirx.Buffer, b_off) -> None:
    """Lane's A and B fragments of mma ``m``: pair ``2m`` in registers 0-1 (row g) and 2-3
    (row g + 8), pair ``2m + 1`` in 4-5 and 6-7; B's 0-3 hold x at the same codes."""
    for s in (0, 1):
        for r in (0, 1):
            T.buffer_store(a, lane.weight_pair(r, 2 * m + s), [tirx.Ramp(a_off + 4 * s + 2 * r, 1, 2)])
    quad = lane.x_quad(m)
    if quad is not None:
        T.buffer_store(b, quad, [tirx.Ramp(b_off, 1, 4)])
        return
    for s in (0, 1):  # (a Shuffle of the two would be one store, but TVM 0.27's CUDA is wrong)
        T.buffer_store(b, lane.x_pair(2 * m + s), [tirx.Ramp(b_off + 2 * s, 1, 2)])


def _emulated_mma(a_all: tirx.Buffer, b_all: tirx.Buffer, acc: tirx.Buffer, lane) -> None:
    """``acc`` (lane ``lane``'s C) += A @ B, A and B read out of every lane's fragments
    ([32 x 8] and [32 x 4] halves) by the PTX map: what the hardware mma computes, up to the
    order and rounding of its float32 sum."""
    with T.serial(0, ROWS) as i, T.serial(0, 8) as n:
        c_lane, c_reg = c_position(i, n)
        with T.If(lane == c_lane):
            with T.Then():
                with T.serial(0, MMA_K) as kk:
                    (al, ar), (bl, br) = a_position(i, kk), b_position(kk, n)
                    product = (a_all[al * 8 + ar].astype("float32")
                               * b_all[bl * 4 + br].astype("float32"))
                    T.buffer_store(acc, acc[c_reg] + product, [c_reg])


def _rowwise(sch: s_tir.Schedule, info: DequantMatmul) -> bool:
    """Every epilogue block is indexed ``[0, ..., 0, n]`` (what the model emits)."""
    for ep in info.epilogues:
        *lead, last = sch.get(ep).iter_vars
        if any(int(iv.dom.extent) != 1 for iv in lead) or int(last.dom.extent) != info.n:
            return False
    return True


def _epilogue_realizes(sch: s_tir.Schedule, info: DequantMatmul, row) -> list:
    """The function's epilogue blocks (cast, residual add) realized at output row ``row``, in
    order (``_rowwise`` holds)."""
    out = []
    for ep in info.epilogues:
        block = sch.get(ep)
        *lead, last = block.iter_vars
        values = [tirx.const(0, iv.var.ty.dtype) for iv in lead] + [row.astype(last.var.ty.dtype)]
        out.append(s_tir.stmt.SBlockRealize(values, True, block))
    return out


def build_tensor_core_gemv(info: DequantMatmul, plan: MmaPlan, emulate: bool = False
                           ) -> s_tir.Schedule | None:
    """``info``'s function with its matmul (and epilogue loops) replaced by the kernel."""
    sch, x = info.sch, info.x_buffer
    mm = sch.get(info.block).writes[0].source
    bufs = {"weight": info.weight_buffer, "scale": read_buffer(sch, info.block, "scale")}
    zero = read_buffer(sch, info.block, "zero")
    if zero is not None:
        bufs["zero"] = zero
    if (bufs["scale"] is None or x.dtype != "float16" or mm.dtype != "float32"
            or any(int(d) != 1 for d in (*x.ty.shape[:-1], *mm.ty.shape[:-1]))
            or not _rowwise(sch, info)):
        return None
    # Intermediates (the float32 sum, the cast) live in the registers of the thread that
    # finishes a row; the last epilogue writes the function's output. set_scope makes new
    # buffers, so the sum's is read again.
    for block in [info.block, *info.epilogues][:len(info.epilogues)]:
        sch.set_scope(block, 0, "local")
    mm = sch.get(info.block).writes[0].source
    epw, half, k, w = plan.epw, plan.epw // 2, plan.k, plan.warps
    x_lead = [0] * (len(x.ty.shape) - 1)
    threads = w * WARP

    def thread_loops():
        stack = contextlib.ExitStack()
        ty = stack.enter_context(T.thread_binding(0, w, "threadIdx.y"))
        tx = stack.enter_context(T.thread_binding(0, WARP, "threadIdx.x"))
        return stack, ty, tx

    with IRBuilder() as ib:
        with T.sblock("tensor_core_gemv"):
            # Declared, not detected: detection would list the kernel's own register arrays.
            params = [p for p in sch.mod["main"].params if isinstance(p.ty, tirx.BufferType)]
            T.reads(*[_whole(b) for b in params[:-1]])
            T.writes(_whole(params[-1]))
            xs = T.sblock_alloc_buffer((plan.padded_k,), "float16", scope="shared")
            partial = T.sblock_alloc_buffer((w, ROWS), "float32", scope="shared")
            with T.thread_binding(0, plan.n // ROWS, "blockIdx.x") as bx:
                row0 = bx * ROWS
                # x into shared memory in pair order, a word's codes a thread.
                stack, ty, tx = thread_loops()
                with stack:
                    words = plan.words
                    with T.serial(0, -(-words // threads)) as it:
                        word = it * threads + ty * WARP + tx
                        with only_if(word < words if words % threads else None):
                            for j in range(half):
                                for h in (0, 1):
                                    code = word * epw + j + h * half
                                    value = x[(*x_lead, code)]
                                    if plan.padded_k > k:  # padded codes meet x = 0
                                        value = tirx.if_then_else(code < k, value,
                                                                  tirx.const(0, "float16"))
                                    T.buffer_store(xs, value, [word * epw + 2 * j + h])
                # The warps' K slices: an mma per two pairs of each lane.
                stack, ty, tx = thread_loops()
                with stack:
                    acc = T.alloc_local((4,), "float32")
                    for i in range(4):
                        T.buffer_store(acc, tirx.const(0, "float32"), [i])
                    step_body = _emulated_step if emulate else _mma_step
                    if plan.steps:
                        with T.serial(0, -(-plan.steps // w)) as ko:
                            step = ko * w + ty
                            with only_if(step < plan.steps if plan.steps % w else None):
                                step_body(plan, bufs, row0, tx, step * K_LANES * LANE_WORDS,
                                          LANE_WORDS, xs, acc)
                    if plan.tail_words:  # by a warp with one step fewer where there is one
                        with only_if(ty == plan.steps % w if w > 1 else None):
                            step_body(plan, bufs, row0, tx, plan.steps * K_LANES * LANE_WORDS,
                                      plan.tail_words, xs, acc)
                    with T.If(tirx.floormod(tx, K_LANES) == 0):
                        with T.Then():
                            for r in (0, 1):  # c0 = y[g], c2 = y[g + 8] (all of C's columns agree)
                                T.buffer_store(partial, acc[2 * r],
                                               [ty, tirx.floordiv(tx, K_LANES) + 8 * r])
                # The warps' partial sums added, then the epilogue, one thread a row.
                stack, ty, tx = thread_loops()
                with stack:
                    with T.If(tirx.all(ty == 0, tx < ROWS)):
                        with T.Then():
                            total = partial[0, tx]
                            for i in range(1, w):
                                total = total + partial[i, tx]
                            row = row0 + tx
                            T.buffer_store(mm, total, [*([0] * (len(mm.ty.shape) - 1)), row])
                            realizes = _epilogue_realizes(sch, info, row)
                            T.evaluate(_EPILOGUE_HERE)  # the IRBuilder cannot take a Stmt
    kernel = _replace(ib.get(), _is_epilogue_mark, seq_stmt(realizes))
    return s_tir.Schedule(with_root_body(sch.mod["main"], kernel))


_EPILOGUE_HERE = -7201  # a marker the kernel's epilogue blocks replace


def _is_epilogue_mark(stmt: tirx.Stmt) -> bool:
    return (isinstance(stmt, tirx.Evaluate) and isinstance(stmt.value, tirx.IntImm)
            and int(stmt.value.value) == _EPILOGUE_HERE)


def _mma_step(plan: MmaPlan, bufs: dict, row0, tx, base, v: int, xs, acc) -> None:
    lane = _Lane(plan, bufs, row0, tx, base, v, xs)
    a = T.alloc_local((8,), "float16")
    b = T.alloc_local((4,), "float16")
    for m in range(_mma_count(plan, v)):
        _fill(lane, m, a, 0, b, 0)
        T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "fp16", "fp16", "fp32",
                                    a.data, 0, b.data, 0, acc.data, 0, False, dtype="float32"))


def _emulated_step(plan: MmaPlan, bufs: dict, row0, tx, base, v: int, xs, acc) -> None:
    a_all = T.alloc_local((WARP * 8,), "float16")
    b_all = T.alloc_local((WARP * 4,), "float16")
    for m in range(_mma_count(plan, v)):
        with T.serial(0, WARP) as other:
            _fill(_Lane(plan, bufs, row0, other, base, v, xs), m, a_all, other * 8, b_all,
                  other * 4)
        _emulated_mma(a_all, b_all, acc, tx)


def _whole(buffer: tirx.Buffer) -> tirx.BufferRegion:
    return tirx.BufferRegion(buffer, [Range.from_min_extent(0, d) for d in buffer.ty.shape])


class TensorCoreGEMV(DequantMatmulRule):
    """Batch-1 dequantize-GEMV on tensor cores (experimental: not in ``cuda_rules()`` until a
    GPU has checked its numerics and timed it against ``DecodeGEMV``)."""

    def __init__(self, warps: int = 8, emulate: bool = False):
        self.warps = warps
        self.emulate = emulate

    def accepts(self, batch: int | None, info: DequantMatmul) -> bool:
        return batch == 1

    def schedule(self, func: tirx.PrimFunc, info: DequantMatmul, target: Target) -> s_tir.Schedule | None:
        if not self.emulate and sm_version(target) < 80:
            return None
        plan = MmaPlan.of(info, self.warps)
        return None if plan is None else build_tensor_core_gemv(info, plan, self.emulate)
