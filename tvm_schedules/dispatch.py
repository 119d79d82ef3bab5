"""Symbolic row counts: a run-time branch between GEMV schedules and the GEMM.

MLC-LLM's own engine calls ``batch_decode`` (and ``prefill`` for short prompts) with a row
count that is a symbolic variable at compile time, one sequence's decode included. Our
``DecodeGEMV`` / ``LowBatchGEMV`` need a static batch, so without this every such call lands in
``DequantGEMM``, whose 64-row tiles waste most of their work on one to eight rows.
``LowBatchDispatch`` builds, as MLC-LLM's ``LowBatchGemvSpecialize`` pass does, one PrimFunc
whose body branches on the row count:

* rows == 1: our ``DecodeGEMV``, scheduled on the function specialised to one row (so
  ``mlc_llm``'s single-sequence decode runs the same kernel as our ``decode``);
* rows <= 2: dlight's ``LowBatchGEMV(2)`` schedule (pads the symbolic rows to 2);
* rows <= 8: dlight's ``LowBatchGEMV(4)``;
* otherwise: our ``DequantGEMM``.

Joined, the branches must still build: the rule returns the fullest of (one row, dlight's
buckets, GEMM) and (one row, GEMM) that TVM lowers (``_lowers``), else None (``DequantGEMM``
then takes every row count). Only the CUDA-core GEMM with a batch-axis row count has needed
the fallback so far (a 3-bit K that is a multiple of neither 80 nor 64, or sm < 80).

The dlight and GEMM schedules come from the same PrimFunc, so they share its parameters; the
one-row branch's parameters are re-declared with one row and matched onto the originals'
first row (``MatchBufferRegion``, lowered by TVM). The branches are joined under one root
block; each condition is marked thread-invariant so the branch is hoisted out of the kernels
(one launch per call, as in MLC).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target

from .analysis import is_cuda, match_dequant_matmul
from .gemm import DequantGEMM
from .gemv import DecodeGEMV

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


def _one_row(func: tirx.PrimFunc, rows: tirx.Var) -> tirx.PrimFunc:
    """``func`` with the row count fixed to 1: the first parameter whose shape holds it is
    re-declared with a 1 there, and ``PrimFunc.specialize`` carries the binding to the other
    parameters (each becomes a new parameter variable)."""
    for param in func.params:
        ty = param.ty
        if isinstance(ty, tirx.BufferType) and any(d.same_as(rows) for d in ty.shape):
            shape = [tirx.const(1, rows.ty.dtype) if d.same_as(rows) else d for d in ty.shape]
            one = tirx.decl_buffer(shape, ty.dtype, param.name, elem_offset=ty.elem_offset)
            return func.specialize({param: one})
    raise ValueError(f"no parameter of the function has the row count {rows} in its shape")


def _on_original_params(func: tirx.PrimFunc, specialised: tirx.PrimFunc) -> tirx.Stmt:
    """The specialised function's body inside a block that matches each of its re-declared
    parameters onto the leading region of the original parameter (row 0 of x, residual and
    output); every other parameter is shared as is."""
    matches = []
    for original, one in zip(func.params, specialised.params):
        if original.same_as(one):
            continue
        region = [tvm.ir.Range.from_min_extent(tirx.const(0, d.ty.dtype), d) for d in one.ty.shape]
        matches.append(s_tir.stmt.MatchBufferRegion(one, tirx.BufferRegion(original, region)))
    block = s_tir.SBlock([], [], [], "one_row", specialised.body, match_buffers=matches)
    return s_tir.SBlockRealize([], True, block)


def _joined(func: tirx.PrimFunc, branches: list[tuple[tirx.PrimExpr, tirx.Stmt]],
            otherwise: tirx.Stmt) -> tirx.PrimFunc:
    """One body: the first branch whose condition holds, else ``otherwise``. Conditions are
    marked thread-invariant so TVM hoists the branch out of the kernels."""
    body = otherwise
    for cond, branch in reversed(branches):
        body = tirx.IfThenElse(tirx.op.tvm_thread_invariant(cond), branch, body)
    root = s_tir.SBlock([], [], [], "root", body)
    joined = func.with_body(s_tir.SBlockRealize([], True, root))
    return joined.with_attr("tirx.is_scheduled", True)


def _lowers(func: tirx.PrimFunc, target: Target) -> bool:
    """Whether TVM lowers and generates code for ``func`` (~0.2 s, no nvcc).

    Joining branches can break what each branch alone passes: under a thread-invariant
    condition, TVM 0.27's CompactBufferAllocation leaves the CUDA-core GEMM's x tile of a
    batch-axis row count ([b, 1, K]) with a symbolic size, which CUDA codegen rejects
    ("Can only handle constant size stack allocation"; found in tiny LLaMA 3-bit libraries,
    whose K = 96 keeps the GEMM off tensor cores)."""
    try:
        tvm.compile(tvm.IRModule({"main": func}), target=target)
    except Exception:  # pylint: disable=broad-except
        return False
    return True


class LowBatchDispatch(dl.ScheduleRule):
    """Fused dequantize-matmuls with a symbolic row count: branch to GEMV or GEMM at run time.

    ``verify=False`` skips the build check (``_lowers``): the CPU numerics tests run the joined
    function on LLVM with its threads serialised, where CUDA codegen's limits do not apply."""

    def __init__(self, verify: bool = True):
        self.verify = verify

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not is_cuda(target):
            return None
        info = match_dequant_matmul(func)
        rows = _row_var(func)
        if info is None or rows is None or isinstance(info.batch, int):
            return None
        gemm = DequantGEMM().apply(func, target, tunable)
        if gemm is None:
            return None
        one_row = []
        decode = DecodeGEMV().apply(_one_row(func, rows), target, tunable)
        if decode is not None:
            one = tirx.EQ(rows, tirx.const(1, rows.ty.dtype))
            one_row = [(one, _on_original_params(func, decode.mod["main"]))]
        low_batch = []
        for limit, bucket in LOW_BATCH:
            low = dl.gpu.LowBatchGEMV(bucket).apply(func, target, tunable)
            if low is not None:
                low_batch.append((rows <= limit, low.mod["main"].body))
        # The fullest dispatch that TVM can build (see ``_lowers``); none: DequantGEMM alone.
        for branches in (one_row + low_batch, one_row):
            if branches:
                joined = _joined(func, branches, gemm.mod["main"].body)
                if not self.verify or _lowers(joined, target):
                    return s_tir.Schedule(joined)
        return None
