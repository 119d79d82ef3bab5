"""Fallback for fused elementwise PrimFuncs, the embedding gather among them.

Inlining the dequantize (or the float16 -> float32 cast of a q0f16 table) into the gather
means only the rows it takes are converted, instead of the whole table per call. The outer
loops (all but the innermost, which LLVM vectorises) run across cores.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target

from ..analysis import is_reduction, root_blocks
from .match import is_llvm


class CPUInlineSpatial(dl.ScheduleRule):
    """PrimFuncs of spatial blocks only: inline all into the last, parallelise its outer loops."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not is_llvm(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        if len(blocks) < 2 or any(is_reduction(sch, b) for b in blocks):
            return None
        for b in blocks[:-1]:
            try:
                sch.compute_inline(b)
            except Exception:  # noqa: BLE001 - not inlinable: leave it as its own loop nest
                return None
        last = root_blocks(sch)[-1]
        loops = sch.get_loops(last)
        if loops:
            sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 1 else loops[0])
        return sch
