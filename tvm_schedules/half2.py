"""The decode GEMV's inner work in half2 pairs: two codes per bit operation and per float16 op.

Per weight code, the scalar form the model's dequantize gives costs shift, mask, int->float16
convert, subtract the zero, multiply the scale (float16), widen and FMA: 7-8 SASS instructions,
which bounds a 2-bit decode GEMV at about a third of an H100's memory bandwidth (see
``docs/schedules.md``, "Static audit"). With 4- and 2-bit words, codes ``j`` and
``j + epw / 2`` sit at bits ``bits * j`` and ``bits * j + 16``, so::

    pair = reinterpret<half2>(((word >> bits * j) & 0x000F000F) | 0x64006400)   # 4-bit

holds ``(1024 + q_j, 1024 + q_{j+epw/2})``: no convert, one shift and two ``LOP3`` for two
codes. ``(pair - (1024 + zero)) * scale`` is then one ``HSUB2`` and one ``HMUL2`` for two codes
and gives exactly the model's ``float16(q - zero) * scale`` (1024 + q and 1024 + zero are
integers in [1024, 2048), where float16 steps by 1, so the subtraction is exact and the product
rounds once, as before). Widening and the float32 FMA stay per code.

``splice_half2_dot`` replaces the unrolled register-level loops of ``DecodeGEMV``'s rfactor
block (rows of the warp x words of the lane x codes) by this body; the caches, the warp
reduction and the epilogue of the schedule stay. TVM writes float16x2 arithmetic lane by lane
in CUDA C, and nvcc pairs it back into ``HSUB2`` / ``HMUL2`` (checked on the SASS by
``tests/schedules/test_half2.py``).
"""

from __future__ import annotations

import contextlib

from tvm import s_tir, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .analysis import DequantMatmul

_MAGIC = 0x6400  # float16 1024.0: OR a code below 1024 into its mantissa to get 1024 + code


def _u32(v: int) -> tirx.PrimExpr:
    return tirx.const(v, "uint32")


def half2_applies(info: DequantMatmul) -> bool:
    """4- and 2-bit words (codes ``j``, ``j + epw/2`` in the two 16-bit halves) whose groups
    hold whole words (a word's codes share one scale and zero)."""
    return info.bits in (2, 4) and info.group % info.epw == 0


def _replace(stmt: tirx.Stmt, target: tirx.Stmt, new: tirx.Stmt) -> tirx.Stmt | None:
    """``stmt`` with ``target`` replaced by ``new``; None if ``target`` is not below it through
    the statement kinds a scheduled GEMV is made of."""
    if stmt.same_as(target):
        return new
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


def splice_half2_dot(sch: s_tir.Schedule, info: DequantMatmul, rf_block, caches: dict,
                     words_per_load: int, tile_n: int, ty: int) -> s_tir.Schedule | None:
    """``sch`` (a scheduled ``DecodeGEMV``) with the rfactor block's register-level loops
    replaced by the half2 body; None where that does not apply (the caller keeps ``sch``).

    ``caches`` maps "weight", "scale", "zero" (asym only) and "x" to the local cache buffers,
    which still have their source's shape and indices (buffer compaction shrinks them later).
    """
    stmt = sch.get(rf_block)
    bx, tyl, tx, ko, tn_loop = (sch.get(lp) for lp in sch.get_loops(rf_block)[:5])
    if not half2_applies(info) or info.k % info.epw or info.n % (tile_n * ty):
        return None  # a row or a word cut short: the block's predicate is per code there
    slab = 32 * words_per_load * info.epw  # codes a warp covers per step of the K loop
    if slab % info.group:
        return None
    k_tail = info.k % slab != 0  # then guard each word
    epw, bits, group = info.epw, info.bits, info.group
    half = epw // 2
    mask = (1 << bits) - 1
    pair_mask = _u32(mask | (mask << 16))
    x_rank = len(caches["x"].ty.shape)
    rf_buffer = stmt.writes[0].source

    with IRBuilder() as ib:
        with T.sblock("dequant_dot_half2"):
            with T.unroll(0, tile_n) as tn:
                n = (bx.loop_var * ty + tyl.loop_var) * tile_n + tn
                acc_index = [tx.loop_var, *[0] * (x_rank - 1), n]
                with T.unroll(0, words_per_load) as w, contextlib.ExitStack() as guard:
                    word_index = (ko.loop_var * 32 + tx.loop_var) * words_per_load + w
                    if k_tail:
                        guard.enter_context(T.If(word_index * epw < info.k))
                        guard.enter_context(T.Then())
                    word = caches["weight"][n, word_index]
                    # Group and zero-word indices in the split form of the scheduled block
                    # (slab part + lane part), which lets buffer compaction see the small
                    # static region each lane caches.
                    lane_code = (tx.loop_var * words_per_load + w) * epw
                    g = ko.loop_var * (slab // group) + tirx.floordiv(lane_code, group)
                    scale = tirx.Broadcast(caches["scale"][n, g], 2)
                    if "zero" in caches:
                        if slab % (group * epw) == 0:
                            zword = (ko.loop_var * (slab // (group * epw))
                                     + tirx.floordiv(lane_code, group * epw))
                            shift = tirx.floormod(tirx.floordiv(lane_code, group), epw) * bits
                        else:
                            zword = tirx.floordiv(ko.loop_var * slab + lane_code, group * epw)
                            shift = tirx.floormod(g, epw) * bits
                        z = (caches["zero"][n, zword] >> shift.astype("uint32")) & _u32(mask)
                        zero = tirx.reinterpret("float16", (z | _u32(_MAGIC)).astype("uint16"))
                    else:
                        zero = tirx.const(1024 + (1 << (bits - 1)) - 1, "float16")
                    with T.unroll(0, half) as j:
                        bits_ = ((word >> (j * bits).astype("uint32")) & pair_mask) | _u32(
                            _MAGIC | (_MAGIC << 16))
                        pair = tirx.reinterpret("float16x2", bits_)
                        d = (pair - tirx.Broadcast(zero, 2)) * scale  # nvcc computes it once
                        k = ko.loop_var * slab + lane_code + j
                        x_lo = caches["x"][(*[0] * (x_rank - 1), k)]
                        x_hi = caches["x"][(*[0] * (x_rank - 1), k + half)]
                        acc = rf_buffer[tuple(acc_index)]
                        acc = acc + x_lo.astype("float32") * tirx.Shuffle([d], [0]).astype("float32")
                        acc = acc + x_hi.astype("float32") * tirx.Shuffle([d], [1]).astype("float32")
                        T.buffer_store(rf_buffer, acc, acc_index)
    new = _replace(sch.mod["main"].body, tn_loop, ib.get())
    if new is None:
        return None
    return s_tir.Schedule(sch.mod["main"].with_body(new))
