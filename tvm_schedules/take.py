"""Fused dequantize + embedding gather (``take``) for a quantized embedding table.

Only the rows named by the token ids are read, so this is tiny next to the matmuls; what
matters is reading each packed word once and writing the float16 row coalesced. A block owns a
token row, a thread owns whole words: it loads one uint32, unpacks its ``epw`` codes in
registers with the group's scale (and zero), and writes ``epw`` consecutive halves.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir.prim.expr import IntImm
from tvm.target import Target

from .analysis import is_cuda, packing_of


class DequantTake:
    """``take[s, h] = dequantize(table)[ids[s], h]`` (the dequantize block is inlined first)."""

    def __init__(self, threads: int = 128):
        self.threads = threads

    def apply(self, func: tirx.PrimFunc, target: Target,
              tunable: bool = False) -> s_tir.Schedule | None:
        del tunable
        if not is_cuda(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        try:
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
        except Exception:  # pylint: disable=broad-except
            return None
        if len(blocks) == 2 and "dequantize" in sch.get(blocks[0]).name_hint:
            try:  # only the gathered rows are ever dequantized
                sch.compute_inline(blocks[0])
            except Exception:  # pylint: disable=broad-except
                return None
            blocks = blocks[1:]
        if len(blocks) != 1:
            return None
        block = blocks[0]
        stmt = sch.get(block)
        if len(stmt.iter_vars) != 2 or any(
                iv.iter_type != tirx.IterVar.DataPar for iv in stmt.iter_vars):
            return None
        h_var = stmt.iter_vars[1].var
        packing = packing_of(stmt, h_var)
        if packing is None:
            return None
        # The packed table must be indexed by a gathered row: q_weight[ids[s], h // epw].
        if not any(r.source.dtype == "int32" for r in stmt.reads):
            return None
        _, epw, _ = packing
        hidden = stmt.iter_vars[1].dom.extent
        if not isinstance(hidden, IntImm):
            return None
        s_loop, h_loop = sch.get_loops(block)
        words = -(-int(hidden) // epw)
        threads = min(self.threads, 1 << (words - 1).bit_length())
        ho, tx, e = sch.split(h_loop, [None, threads, epw])
        sch.reorder(s_loop, tx, ho, e)
        sch.bind(s_loop, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.unroll(e)
        return sch
