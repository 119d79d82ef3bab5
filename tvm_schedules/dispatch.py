"""Symbolic row counts: a run-time branch between GEMV schedules and the GEMM.

MLC-LLM's own engine calls ``batch_decode`` (and ``prefill`` for short prompts) with a row
count that is a symbolic variable at compile time, one sequence's decode included. Our
``DecodeGEMV`` / ``LowBatchGEMV`` need a static batch, so without this every such call lands in
``DequantGEMM``, whose 64-row tiles waste most of their work on one to eight rows.
``LowBatchDispatch`` builds, as MLC-LLM's ``LowBatchGemvSpecialize`` pass does, one PrimFunc
whose body branches on the row count:

* rows == r for each r in 1..8: our GEMV scheduled on the function specialised to exactly r
  rows (``DecodeGEMV`` for one, so ``mlc_llm``'s single-sequence decode runs the same kernel
  as our ``decode``; ``LowBatchGEMV`` for 2..8, whose half2 body needs a static row count);
* otherwise: our ``DequantGEMM``.

MLC instead pads 2..8 rows to dlight's ``LowBatchGEMV`` buckets of 2 and 4 (5 rows compute
8). A kernel per count costs compile time and library size, not run time: the static audit
puts our batch-4 GEMV at 3.0-5.0 SASS instructions per code and row against 6.2-7.9 for
dlight's bucket-4 kernel (docs/schedules.md).

Joined, the branches must still build: the rule checks that TVM lowers the GEMM joined with
the one- and two-row branches (``_lowers``; one branch of each GEMV rule, since every branch is
a kernel of its own) and otherwise returns None, so that ``DequantGEMM`` takes every row count.
Only the CUDA-core GEMM with a batch-axis row count has failed that check so far (a 3-bit K
that is a multiple of neither 80 nor 64, or sm < 80).

Each specialised branch re-declares x, the residual and the output with its row count and
matches them onto the leading rows of the originals (``MatchBufferRegion``, lowered by TVM);
weights, scales and zeros are shared as they are. The branches are joined under one root
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
from .gemv import DecodeGEMV, LowBatchGEMV

# Row counts 1..MAX_GEMV_ROWS get a GEMV of their own (MLC-LLM's low-batch limit); more rows
# take the GEMM.
MAX_GEMV_ROWS = 8


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


def _fixed_rows(func: tirx.PrimFunc, rows: tirx.Var, count: int) -> tirx.PrimFunc:
    """``func`` with the row count fixed to ``count``: the first parameter whose shape holds it
    is re-declared with ``count`` there, and ``PrimFunc.specialize`` carries the binding to
    the other parameters (each becomes a new parameter variable)."""
    for param in func.params:
        ty = param.ty
        if isinstance(ty, tirx.BufferType) and any(d.same_as(rows) for d in ty.shape):
            shape = [tirx.const(count, rows.ty.dtype) if d.same_as(rows) else d for d in ty.shape]
            fixed = tirx.decl_buffer(shape, ty.dtype, param.name, elem_offset=ty.elem_offset)
            return func.specialize({param: fixed})
    raise ValueError(f"no parameter of the function has the row count {rows} in its shape")


def _on_original_params(func: tirx.PrimFunc, specialised: tirx.PrimFunc, name: str) -> tirx.Stmt:
    """The specialised function's body inside a block that matches each of its re-declared
    parameters onto the leading region of the original parameter (the first rows of x,
    residual and output); every other parameter is shared as is."""
    matches = []
    for original, one in zip(func.params, specialised.params):
        if original.same_as(one):
            continue
        region = [tvm.ir.Range.from_min_extent(tirx.const(0, d.ty.dtype), d) for d in one.ty.shape]
        matches.append(s_tir.stmt.MatchBufferRegion(one, tirx.BufferRegion(original, region)))
    block = s_tir.SBlock([], [], [], name, specialised.body, match_buffers=matches)
    return s_tir.SBlockRealize([], True, block)


def _exact_branch(func: tirx.PrimFunc, rows: tirx.Var, count: int, target: Target,
                  tunable: bool) -> tuple[tirx.PrimExpr, tirx.Stmt] | None:
    """``(rows == count, our GEMV scheduled for exactly count rows)``, or None where the rule
    declines (those rows then take the GEMM)."""
    rule = DecodeGEMV() if count == 1 else LowBatchGEMV(max_batch=MAX_GEMV_ROWS)
    sch = rule.apply(_fixed_rows(func, rows, count), target, tunable)
    if sch is None:
        return None
    # Fresh variables and buffers: every branch comes from the one PrimFunc, and TIR allows a
    # block variable one definition.
    fresh = s_tir.renew_defs(sch.mod["main"])
    cond = tirx.EQ(rows, tirx.const(count, rows.ty.dtype))
    return cond, _on_original_params(func, fresh, f"rows_{count}")


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
    """Whether TVM lowers and generates code for ``func`` (no nvcc).

    Joining branches can break what each branch alone passes: under a thread-invariant
    condition, TVM 0.27's CompactBufferAllocation leaves the CUDA-core GEMM's x tile of a
    batch-axis row count ([b, 1, K]) with a symbolic size, which CUDA codegen rejects
    ("Can only handle constant size stack allocation"; found in tiny LLaMA 3-bit libraries,
    whose K = 96 keeps the GEMM off tensor cores).

    The function is built as a public one: the pipeline hands the rule Relax's private
    PrimFuncs, which ``MakePackedAPI`` skips, and whose buffer parameters host codegen then
    cannot type ("does not have a corresponding C Type"), so every check failed and every
    library's symbolic-row functions took the GEMM alone (until 2026-12-02)."""
    public = func.with_attr("global_symbol", "main")
    try:
        tvm.compile(tvm.IRModule({"main": public}), target=target)
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
        branches = [b for count in range(1, MAX_GEMV_ROWS + 1)
                    if (b := _exact_branch(func, rows, count, target, tunable)) is not None]
        if not branches:
            return None
        otherwise = gemm.mod["main"].body
        # The build check joins the first two branches with the GEMM: one of each GEMV rule
        # present (only one row takes DecodeGEMV). Each branch is a kernel of its own, so what
        # joining can break is the GEMM under a condition and the matched regions, which these
        # exercise. Checking all eight lowered every GEMV twice (7B q3f16_g128asym 22016 x 4096:
        # 5.5 s a function; this check 0.4 s).
        if self.verify and not _lowers(_joined(func, branches[:2], otherwise), target):
            return None  # DequantGEMM takes every row count
        return s_tir.Schedule(_joined(func, branches, otherwise))
