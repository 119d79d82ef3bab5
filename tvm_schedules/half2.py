"""Dequantizing in half2 pairs: two codes per bit operation and per float16 op (the GEMVs'
inner work, and the GEMM's shared-tile fill).

Per weight code, the scalar form the model's dequantize gives costs shift, mask, int->float16
convert, subtract the zero, multiply the scale (float16), widen and FMA: 7-8 SASS instructions,
which bounds a 2-bit decode GEMV at about a third of an H100's memory bandwidth (see
``docs/schedules.md``, "Static audit"). Codes ``j`` and ``j + epw / 2`` of a word are paired:

* 4- and 2-bit words hold them at bits ``bits * j`` and ``bits * j + 16``, so::

      pair = reinterpret<half2>(((word >> bits * j) & 0x000F000F) | 0x64006400)   # 4-bit

  holds ``(1024 + q_j, 1024 + q_{j+epw/2})``: no convert, one shift and two ``LOP3`` for two
  codes.
* 3-bit words hold codes 5..9 at bits 15..29, one short of the upper half. Once per word,
  ``(word & 0x7FFF) | ((word << 1) & 0x7FFF0000)`` moves them up by one bit, and the pairs
  ``(j, j + 5)`` come out as above with the mask ``0x00070007``.

``(pair - (1024 + zero)) * scale`` is then one ``HSUB2`` and one ``HMUL2`` for two codes and
gives exactly the model's ``float16(q - zero) * scale`` (1024 + q and 1024 + zero are integers in
[1024, 2048), where float16 steps by 1, so the subtraction is exact and the product rounds once,
as before). Widening and the float32 FMA stay per code.

Where a group holds whole words (2 and 4 bits, MLC's q3f16_1 with 40-code groups) a word's codes
share one scale and zero. Our 3-bit modes with 32/64/128-code groups do not: a 10-code word
straddles groups at an offset that depends on the lane. There the schedule gives each lane two
words per step, so a warp step is 640 codes, a whole number of groups: lane ``t``'s offset in
its group, ``20 t mod G``, is the same at every step, and its 20 codes meet at most two groups.
The body reads the two groups' scales and zeros once per step and row (half2 bit patterns ``A``
and ``B``), and gives each pair its ``(A & ~m) | (B & m)``, one ``LOP3``, where the lane mask
``m`` depends only on the lane, so it is computed once, before the K loop.

``splice_half2_dot`` replaces the unrolled register-level loops of the GEMV rules' rfactor
block (rows of the warp x rows of x x words of the lane x codes) by this body; the caches, the
warp reduction and the epilogue of the schedule stay. With several rows of x (``LowBatchGEMV``)
a pair is dequantized once and used for every row. ``splice_half2_fill`` does the same for
the unrolled word loop that fills ``DequantGEMM``'s shared weight tile. TVM writes float16x2
arithmetic lane by lane in CUDA C, and nvcc pairs it back into ``HSUB2`` / ``HMUL2`` (checked
on the SASS by ``tests/schedules/test_half2.py``).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T
from tvm.sym import Analyzer

from .analysis import DequantMatmul, read_buffer, u32

WARP = 32
_MAGIC = 0x6400  # float16 1024.0: OR a code below 1024 into its mantissa to get 1024 + code
STRADDLE_WORDS = 2  # words per lane and step where words straddle groups (see the docstring)
# Widening the lane's x slice to float32 once per step (not once per row) holds one register
# per code: for the 20-code chunks of straddling 3-bit words it cuts 10 -> 7.8 instructions per
# code for 70 -> 95 registers; for 32-64-code chunks ptxas either recomputes the widening
# anyway or needs up to 128 registers, which would cost the occupancy a memory-bound GEMV needs.
X_F32_MAX_CODES = 20


def half2_applies(info: DequantMatmul) -> bool:
    """Every packing our modes use: 2-, 3- and 4-bit words."""
    return info.bits in (2, 3, 4)


def straddles(info: DequantMatmul) -> bool:
    """Words cross group boundaries (3-bit codes in 32/64/128-code groups)."""
    return info.group % info.epw != 0


def words_per_step(info: DequantMatmul, widest_load: int, max_words: int) -> int:
    """Words a lane handles per step of the K loop for the half2 body: the widest aligned load,
    except where words straddle groups: there a step must be a whole number of groups for the
    warp and at most one group boundary for a lane (module docstring), two words where the x
    registers allow (``max_words``), else one where that still fits the groups."""
    if not straddles(info):
        return widest_load
    fits = [s for s in (STRADDLE_WORDS, 1)
            if (WARP * s * info.epw) % info.group == 0 and s * info.epw <= info.group]
    within = [s for s in fits if s <= max_words]
    return (within or fits or [widest_load])[0]


@dataclass(frozen=True)
class _Pairs:
    """Where the two codes of a pair sit, and how a word is made to hold them 16 bits apart."""

    bits: int
    epw: int

    @property
    def half(self) -> int:
        return self.epw // 2

    @property
    def mask(self) -> tirx.PrimExpr:
        m = (1 << self.bits) - 1
        return u32(m | (m << 16))

    def spread(self, word: tirx.PrimExpr) -> tirx.PrimExpr:
        """``word`` with codes ``half..epw-1`` starting at bit 16 (a no-op at 2 and 4 bits)."""
        low = self.bits * self.half
        if low == 16:
            return word
        low_mask = (1 << low) - 1
        return (word & u32(low_mask)) | ((word << u32(16 - low)) & u32(low_mask << 16))

    def pair(self, spread: tirx.PrimExpr, j: int) -> tirx.PrimExpr:
        """half2 ``(1024 + q_j, 1024 + q_{j + half})``.

        Written mask-then-shift-and-add, ``((spread & mask << s) >> s) + magic``: ptxas makes
        the shift and the add one ``LEA.HI``, so a pair costs a ``LOP3`` and a ``LEA.HI``. The
        shift-mask-or form costs a shift and two ``LOP3``s (a ``LOP3`` takes one immediate, and
        ptxas does not keep the magic in a register to merge the AND and the OR)."""
        m = (1 << self.bits) - 1
        shift = j * self.bits
        magic = u32(_MAGIC | (_MAGIC << 16))
        if shift == 0:
            return tirx.reinterpret("float16x2", (spread & self.mask) | magic)
        field = spread & u32(((m << 16) | m) << shift)
        return tirx.reinterpret("float16x2", (field >> u32(shift)) + magic)


def _half_bits(value: tirx.PrimExpr) -> tirx.PrimExpr:
    """The uint32 bit pattern of the half2 ``(value, value)`` for a float16 scalar."""
    return tirx.reinterpret("uint16", value).astype("uint32") * u32(0x00010001)


def _group_zero(zero: tirx.Buffer | None, n, g, pairs: _Pairs) -> tirx.PrimExpr:
    """``1024 + zero point`` of group ``g`` of row ``n`` (float16); without packed zeros
    (MLC's symmetric modes) the fixed ``2^(bits-1) - 1``."""
    if zero is None:
        return tirx.const(1024 + (1 << (pairs.bits - 1)) - 1, "float16")
    return _zero_magic(zero, n, tirx.floordiv(g, pairs.epw),
                       tirx.floormod(g, pairs.epw) * pairs.bits, pairs.bits)


def _zero_magic(zero: tirx.Buffer, n, word, shift, bits: int) -> tirx.PrimExpr:
    """The packed zero point at (``word``, bit ``shift``) of row ``n`` as the float16
    ``1024 + zero``: the same magic offset the unpacked codes carry, so ``pair - zero``
    cancels it exactly."""
    code = (zero[n, word] >> shift.astype("uint32")) & u32((1 << bits) - 1)
    return tirx.reinterpret("float16", (code | u32(_MAGIC)).astype("uint16"))


@contextlib.contextmanager
def only_if(condition: tirx.PrimExpr | None):
    """The IRBuilder statements of the ``with`` body under ``if condition``; unconditional
    where ``condition`` is None (a test the shape proved unnecessary)."""
    if condition is None:
        yield
        return
    with T.If(condition), T.Then():
        yield


def _replace(stmt: tirx.Stmt, target, new: tirx.Stmt) -> tirx.Stmt | None:
    """``stmt`` with ``target`` (a statement, or a predicate on statements: the first match)
    replaced by ``new``; None if ``target`` is not below it through the statement kinds a
    scheduled GEMV is made of (the 0.27 wheel exposes no TIR mutator to Python)."""
    if target(stmt) if callable(target) else stmt.same_as(target):
        return new
    if isinstance(stmt, tirx.IfThenElse):
        then = _replace(stmt.then_case, target, new)
        if then is not None:
            return tirx.IfThenElse(stmt.condition, then, stmt.else_case)
        other = None if stmt.else_case is None else _replace(stmt.else_case, target, new)
        return None if other is None else tirx.IfThenElse(stmt.condition, stmt.then_case, other)
    if isinstance(stmt, tirx.For):
        body = _replace(stmt.body, target, new)
        return None if body is None else tirx.For(
            stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding,
            stmt.annotations)
    if isinstance(stmt, tirx.SeqStmt):
        seq = list(stmt.seq)
        for i, s in enumerate(seq):
            got = _replace(s, target, new)
            if got is not None:
                return tirx.SeqStmt(seq[:i] + [got] + seq[i + 1:])
        return None
    if isinstance(stmt, s_tir.stmt.SBlockRealize):
        b = stmt.block
        body = _replace(b.body, target, new)
        if body is None:
            return None
        block = s_tir.stmt.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, body, b.init,
                                  b.alloc_buffers, b.match_buffers, b.annotations)
        return s_tir.stmt.SBlockRealize(stmt.iter_values, stmt.predicate, block)
    return None


def splice_half2_dot(sch: s_tir.Schedule, info: DequantMatmul, rf_block, buffers: dict,
                     step: int, tile_n: int, ty: int) -> s_tir.Schedule | None:
    """``sch`` (a scheduled ``DecodeGEMV`` or ``LowBatchGEMV``) with the rfactor block's
    register-level loops replaced by the half2 body; None where that does not apply (the
    caller keeps ``sch``).

    ``buffers`` maps "weight", "scale", "zero" (asym only) and "x" to what the body reads: the
    local caches (which still have their source's shape and indices; buffer compaction shrinks
    them later), or, where words straddle groups, the global scale and zero buffers. ``step``
    is the words a lane handles per step of the K loop.
    """
    stmt = sch.get(rf_block)
    bx, tyl, tx, ko, tn_loop = (sch.get(lp) for lp in sch.get_loops(rf_block)[:5])
    if not half2_applies(info) or info.n % (tile_n * ty):
        return None
    epw, group, k_total = info.epw, info.group, info.k
    lane_codes = step * epw
    slab = WARP * lane_codes  # codes a warp covers per step of the K loop
    if slab % group or (straddles(info) and lane_codes > group):
        return None
    pairs = _Pairs(info.bits, epw)
    # The rows of x (batch x sequence, each a static extent where this body applies).
    x_rows = list(itertools.product(*(range(int(d)) for d in buffers["x"].ty.shape[:-1])))
    rf_buffer = stmt.writes[0].source
    lane_first = tx.loop_var * lane_codes  # the lane's first code within the slab
    ngroups = buffers["scale"].ty.shape[-1]

    x_f32: list[tirx.Buffer] = []  # the lane's x slice widened once per step, for all rows

    def x_at(row: tuple, k, code: int, guarded: bool) -> tirx.PrimExpr:
        """x at row ``row`` and K index ``k`` (lane code ``code``) as float32."""
        value = x_f32[0][code] if x_f32 else buffers["x"][(*row, k)].astype("float32")
        if guarded:  # the last word of a row whose codes run past K (padding)
            value = tirx.if_then_else(k < k_total, value, tirx.const(0, "float32"))
        return value

    def widen_x() -> None:
        """With two or more weight rows a warp (and one row of x), widen the lane's x slice to
        float32 once per step rather than once per weight row (one instruction per code and
        row less)."""
        x_f32.append(T.sblock_alloc_buffer((lane_codes,), "float32", scope="local"))
        for c in range(lane_codes):
            k = ko.loop_var * slab + lane_first + c
            T.buffer_store(x_f32[0], buffers["x"][(*x_rows[0], k)].astype("float32"), [c])

    def dot_word(n, w, word_index, dequant, guarded: bool) -> None:
        """Word ``w`` of the lane's step times x, for weight row ``n`` and every row of x: the
        pair is dequantized once and its two codes widened once for all rows of x."""
        spread = T.bind(pairs.spread(buffers["weight"][n, word_index]))
        for j in range(pairs.half):
            d = dequant(w * epw + j, pairs.pair(spread, j))  # nvcc computes it once
            lo, hi = (tirx.Shuffle([d], [h]).astype("float32") for h in (0, 1))
            code = w * epw + j
            k = ko.loop_var * slab + lane_first + code
            for row in x_rows:
                acc_index = [tx.loop_var, *row, n]
                acc = rf_buffer[tuple(acc_index)]
                acc = acc + x_at(row, k, code, guarded) * lo
                acc = acc + x_at(row, k + pairs.half, code + pairs.half, guarded) * hi
                T.buffer_store(rf_buffer, acc, acc_index)

    def word_dequant(n, w):
        """(lane code of a pair's first code, pair) -> half2 weights, for word ``w``."""
        if straddles(info):
            return straddle_dequant(n)
        lane_code = lane_first + w * epw
        # Group and zero-word indices in the split form of the scheduled block (slab part +
        # lane part), which lets buffer compaction see the small static region each lane caches.
        g = ko.loop_var * (slab // group) + tirx.floordiv(lane_code, group)
        scale = tirx.Broadcast(buffers["scale"][n, g], 2)
        if "zero" in buffers:
            if slab % (group * epw) == 0:
                zword = (ko.loop_var * (slab // (group * epw))
                         + tirx.floordiv(lane_code, group * epw))
                shift = tirx.floormod(tirx.floordiv(lane_code, group), epw) * pairs.bits
            else:
                zword = tirx.floordiv(ko.loop_var * slab + lane_code, group * epw)
                shift = tirx.floormod(g, epw) * pairs.bits
            zero = _zero_magic(buffers["zero"], n, zword, shift, pairs.bits)
        else:
            zero = _group_zero(None, n, g, pairs)
        return lambda _i, pair: (pair - tirx.Broadcast(zero, 2)) * scale

    # Straddling words: lane t's codes start at offset 20 t mod G in their group at every step
    # (the slab is a whole number of groups), so which of the two groups a code falls in is a
    # per-lane constant: one 32-bit mask per pair, computed before the K loop.
    lane_offset = tirx.floormod(lane_first, group)

    masks: dict[int, tirx.PrimExpr] = {}  # lane code of a pair -> its mask
    mask_buffer = tirx.decl_buffer((step * pairs.half,), "uint32", "lane_masks", scope="local")

    def lane_mask(i: int) -> tirx.PrimExpr:
        """0xFFFF where pair ``i``'s first code is in the second group, 0xFFFF0000 where its
        second is. Stored before the K loop in a register array (a bound variable would be
        substituted back into the loop by TVM's simplifier), so it costs a register."""
        if i not in masks:
            lo = tirx.Select(lane_offset + i >= group, u32(0xFFFF), u32(0))
            hi = tirx.Select(lane_offset + i + pairs.half >= group, u32(0xFFFF0000), u32(0))
            masks[i] = lo | hi
        return mask_buffer[list(masks).index(i)]

    straddle_cache: dict = {}

    def straddle_dequant(n):
        if n not in straddle_cache:  # the two groups' half2 patterns, once per row and step
            first = ko.loop_var * (slab // group) + tirx.floordiv(lane_first, group)
            g_a = tirx.min(first, ngroups - 1)  # lanes past the row's end read in bounds
            g_b = tirx.min(first + 1, ngroups - 1)
            scales = [T.bind(_half_bits(buffers["scale"][n, g])) for g in (g_a, g_b)]
            zeros = [T.bind(_half_bits(_group_zero(buffers["zero"], n, g, pairs)))
                     for g in (g_a, g_b)]
            straddle_cache[n] = (scales, zeros)
        (s_a, s_b), (z_a, z_b) = straddle_cache[n]

        def dequant(i: int, pair):
            m = lane_mask(i)
            pick = lambda a, b: tirx.reinterpret("float16x2", (a & ~m) | (b & m))  # noqa: E731
            return (pair - pick(z_a, z_b)) * pick(s_a, s_b)
        return dequant

    def rows(tail: bool) -> None:
        """The warp's rows for one step; ``tail``: the step K ends in, tested the cheapest
        exact way: once per lane where the lanes' chunks divide K, else once per word, and
        per code (on x) only in the word that K cuts."""
        lane_in_k = (ko.loop_var * WARP + tx.loop_var) * lane_codes < k_total
        with only_if(lane_in_k if tail and k_total % lane_codes == 0 else None):
            for tn in range(tile_n):
                n = (bx.loop_var * ty + tyl.loop_var) * tile_n + tn
                straddle_cache.clear()
                for w in range(step):
                    word_index = (ko.loop_var * WARP + tx.loop_var) * step + w
                    args = (n, w, word_index, word_dequant(n, w))
                    if not tail or k_total % lane_codes == 0:
                        dot_word(*args, guarded=False)
                        continue
                    with T.If((word_index + 1) * epw <= k_total):
                        with T.Then():
                            dot_word(*args, guarded=False)
                        if k_total % epw:
                            with T.Else(), T.If(word_index * epw < k_total), T.Then():
                                dot_word(*args, guarded=True)

    whole_steps = k_total // slab  # the steps before K's tail need no test at all
    with IRBuilder() as ib:
        with T.sblock("dequant_dot_half2"):
            if tile_n > 1 and len(x_rows) == 1 and lane_codes <= X_F32_MAX_CODES:
                widen_x()
            if k_total % slab == 0:
                rows(tail=False)
            elif whole_steps == 0:
                rows(tail=True)
            else:
                with T.If(ko.loop_var < whole_steps):
                    with T.Then():
                        rows(tail=False)
                    with T.Else():
                        rows(tail=True)
    k_loop = _replace(ko, tn_loop, ib.get())
    if k_loop is None:
        return None
    if masks:  # an opaque block holding the lane masks around the K loop
        stores = [tirx.BufferStore(mask_buffer, value, [i]) for i, value in enumerate(masks.values())]
        block = s_tir.stmt.SBlock([], [], [], "lane_masks", tirx.SeqStmt([*stores, k_loop]),
                                  alloc_buffers=[mask_buffer])
        k_loop = s_tir.stmt.SBlockRealize([], True, block)
    new = _replace(sch.mod["main"].body, ko, k_loop)
    if new is None:
        return None
    return s_tir.Schedule(sch.mod["main"].with_body(new))


def _element(buffer: tirx.Buffer, row, col, cols: int = 1) -> tirx.BufferRegion:
    """``buffer[row, col:col + cols]`` as a block's read or write region."""
    return tirx.BufferRegion(buffer, [tvm.ir.Range.from_min_extent(row, 1),
                                      tvm.ir.Range.from_min_extent(col, cols)])


def splice_half2_fill(sch: s_tir.Schedule, info: DequantMatmul, deq_block) -> s_tir.Schedule | None:
    """``sch`` (a scheduled ``DequantGEMM``) with its shared weight tile filled in half2 pairs;
    None where that does not apply (the caller keeps ``sch``).

    The GEMM's fill gives each thread whole words (``gemm._dequantize_into_shared``): an
    unrolled loop over the ``epw`` codes of one word, each a scalar shift, mask, convert,
    subtract and multiply. Here the loop becomes one word load and, per pair, the two bit
    operations and one ``HSUB2`` / ``HMUL2`` the GEMVs use, both halves stored to their places
    in the tile. Applies where a word's codes share one group (2 and 4 bits, q3f16_1) and K
    is not padded (the pad block's test would have to go in)."""
    if not half2_applies(info) or info.group % info.epw:
        return None
    code_loop = sch.get(sch.get_loops(deq_block)[-1])
    realize = code_loop.body
    if (not isinstance(realize, s_tir.stmt.SBlockRealize) or int(code_loop.extent) != info.epw
            or len(realize.iter_values) != 2):
        return None
    block = realize.block
    store = block.body
    if not isinstance(store, tirx.BufferStore) or len(block.writes) != 1:
        return None
    weight = info.weight_buffer
    scale, zero = read_buffer(sch, deq_block, "scale"), read_buffer(sch, deq_block, "zero")
    if scale is None:
        return None
    analyzer = Analyzer()
    analyzer.bind(code_loop.loop_var, tirx.const(0, code_loop.loop_var.ty.dtype))
    n, k0 = (analyzer.simplify(v) for v in realize.iter_values)  # the word's first code
    pairs, epw = _Pairs(info.bits, info.epw), info.epw
    tile = store.buffer
    g = tirx.floordiv(k0, info.group)
    zero_value = _group_zero(zero, n, g, pairs)
    with IRBuilder() as ib:
        with T.sblock("dequant_fill_half2"):
            T.reads(*[_element(buf, n, col) for buf, col in (
                (weight, tirx.floordiv(k0, epw)), (scale, g),
                *([(zero, tirx.floordiv(g, epw))] if zero is not None else []))])
            T.writes(_element(tile, n, k0, epw))
            T.sblock_attr(dict(block.annotations))
            spread = T.bind(pairs.spread(weight[n, tirx.floordiv(k0, epw)]))
            # Scalars bound, broadcast where used: TVMScript cannot parse a float16x2 binding
            # back (the CPU check goes through the script text).
            zero2 = tirx.Broadcast(T.bind(zero_value), 2)
            scale2 = tirx.Broadcast(T.bind(scale[n, g]), 2)
            for j in range(pairs.half):  # pair j holds tile elements j and j + half
                d = (pairs.pair(spread, j) - zero2) * scale2
                for h in (0, 1):
                    T.buffer_store(tile, tirx.Shuffle([d], [h]), [n, k0 + j + h * pairs.half])
    new = _replace(sch.mod["main"].body, code_loop, ib.get())
    return None if new is None else s_tir.Schedule(sch.mod["main"].with_body(new))
