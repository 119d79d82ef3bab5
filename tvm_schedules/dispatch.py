"""Symbolic row counts: a run-time branch between low-batch GEMV schedules and the GEMM.

MLC-LLM's own engine calls ``batch_decode`` (and ``prefill`` for short prompts) with a row
count that is a symbolic variable at compile time. Our ``DecodeGEMV`` / ``LowBatchGEMV`` need a
static batch, so without this every such call lands in ``DequantGEMM``, whose 64-row tiles
waste most of their work on one to eight rows. ``LowBatchDispatch`` builds, as MLC-LLM's
``LowBatchGemvSpecialize`` pass does, one PrimFunc whose body branches on the row count:

* rows <= 2: dlight's ``LowBatchGEMV(2)`` schedule (pads the symbolic rows to 2);
* rows <= 8: dlight's ``LowBatchGEMV(4)``;
* otherwise: our ``DequantGEMM``.

Where K does not fill its last packed word (most 3-bit shapes), ``DequantGEMM`` takes all rows.

All three schedules come from the same PrimFunc, so they share its parameter buffers and the
branches can be joined under one root block; the condition is marked thread-invariant so the
branch is hoisted out of the kernels (one launch per call, as in MLC).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target

from .analysis import is_cuda, match_dequant_matmul
from .gemm import DequantGEMM

# (largest row count, dlight LowBatchGEMV bucket): MLC-LLM's buckets.
LOW_BATCH = ((2, 2), (8, 4))


def _row_var(func: tirx.PrimFunc) -> tirx.Var | None:
    """The one symbolic variable in the parameter shapes (the row count), or None."""
    found: dict[str, tirx.Var] = {}
    for param in func.params:
        if not isinstance(param.ty, tirx.BufferType):
            continue
        for dim in param.ty.shape:
            if isinstance(dim, tirx.Var):
                found[dim.name] = dim
    return next(iter(found.values())) if len(found) == 1 else None


class LowBatchDispatch(dl.ScheduleRule):
    """Fused dequantize-matmuls with a symbolic row count: branch to GEMV or GEMM at run time."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not is_cuda(target):
            return None
        info = match_dequant_matmul(func)
        rows = _row_var(func)
        if info is None or rows is None or isinstance(info.batch, int):
            return None
        if info.words * info.epw != info.k:
            # K ends inside a packed word (3-bit: K = 4096 is 409.6 words). Joined into one
            # function, the branches then keep row-sized local buffers that TVM 0.27 does not
            # compact, and CUDA codegen rejects them ("constant size stack allocation"; each
            # branch alone builds): DequantGEMM takes every row count of such a matmul.
            return None
        gemm = DequantGEMM().apply(func, target, tunable)
        if gemm is None:
            return None
        body = gemm.mod["main"].body
        for limit, bucket in reversed(LOW_BATCH):
            low = dl.gpu.LowBatchGEMV(bucket).apply(func, target, tunable)
            if low is None:
                return None
            cond = tirx.op.tvm_thread_invariant(rows <= limit)
            body = tirx.IfThenElse(cond, low.mod["main"].body, body)
        root = s_tir.SBlock([], [], [], "root", body)
        joined = func.with_body(s_tir.SBlockRealize([], True, root))
        return s_tir.Schedule(joined.with_attr("tirx.is_scheduled", True))
