"""Recognise a matmul PrimFunc of the compiled model on the CPU, whatever the export mode.

On llvm every linear layer arrives as one PrimFunc (``desv_export/model/quantized.py``): a
spatial weight producer [N, K] (the float32 dequantize, fed by its code-unpacking stage; for
q0f16 the cast of the float16 weight), one reduction block
``out[rows..., n] += x[rows..., k] * W[n, k]`` and an elementwise tail (residual add, cast).
The CPU rules schedule that structure; they need the weight as a block of its own (the GEMM
dequantizes a tile of it once per column block, the 3-bit GEMV stages it per row), so the match
keeps the weight block and the unpack stage apart instead of inlining them everywhere.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.ir import expr as ir_expr
from tvm.ir.prim import expr as prim_expr
from tvm.tirx.stmt import BufferStore
from tvm.target import Target

from ..analysis import consumer_chain, is_reduction, match_dequant_matmul, root_blocks


@dataclass
class CPUMatmul:
    """A matched matmul; ``sch`` holds it with the weight chain collapsed into ``weight``."""

    sch: s_tir.Schedule
    block: s_tir.schedule.SBlockRV  # the reduction block
    weight: s_tir.schedule.SBlockRV  # the block writing the [N, K] float weight
    unpack: s_tir.schedule.SBlockRV | None  # the llvm dequantize's code-unpacking stage, if any
    epilogues: list[s_tir.schedule.SBlockRV]  # elementwise chain after the reduction
    row_extents: list  # extents of the spatial iters before n (static ints or PrimExprs)
    n: int
    k: int
    epw: int | None  # codes per uint32 word (None: a float weight)
    group: int | None  # codes per scale

    @property
    def static_rows(self) -> int | None:
        """Rows of x when every leading extent is static (decode), else None (prefill)."""
        rows = 1
        for e in self.row_extents:
            if not isinstance(e, int):
                return None
            rows *= e
        return rows


def is_llvm(target: Target) -> bool:
    return target.kind.name == "llvm"


def _is_unpack(sch: s_tir.Schedule, block) -> bool:
    """The code-unpacking stage of the llvm dequantize: reads only packed words."""
    reads = [r.source.dtype for r in sch.get(block).reads]
    return bool(reads) and all(d == "uint32" for d in reads) and not sch.get_producers(block)


def _static(expr):
    return int(expr.value) if isinstance(expr, prim_expr.IntImm) else expr


def _writes_weight(sch: s_tir.Schedule, producer, stmt, n_var, k_var) -> bool:
    """Whether ``producer``'s output is read by ``stmt`` as ``[n, k]``."""
    out = sch.get(producer).writes
    if len(out) != 1:
        return False
    buf = out[0].source
    for region in stmt.reads:
        if region.source.same_as(buf) and len(region.region) == 2:
            lo_n, lo_k = region.region[0].min, region.region[1].min
            return (isinstance(lo_n, ir_expr.Var) and lo_n.same_as(n_var)
                    and isinstance(lo_k, ir_expr.Var) and lo_k.same_as(k_var))
    return False


def match_matmul(func: tirx.PrimFunc) -> CPUMatmul | None:
    """The matmul structure above, or None (then the rule declines)."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    reductions = [b for b in blocks if is_reduction(sch, b)]
    if len(reductions) != 1:
        return None
    block = reductions[0]
    stmt = sch.get(block)
    iters = list(stmt.iter_vars)
    if len(iters) < 2 or iters[-1].iter_type != tirx.IterVar.CommReduce:
        return None
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in iters[:-1]):
        return None
    if not isinstance(stmt.body, BufferStore) or stmt.body.buffer.dtype != "float32":
        return None
    n_iv, k_iv = iters[-2], iters[-1]
    n, k = _static(n_iv.dom.extent), _static(k_iv.dom.extent)
    if not isinstance(n, int) or not isinstance(k, int):
        return None
    producers = list(sch.get_producers(block))
    if len(producers) != 1 or not _writes_weight(sch, producers[0], stmt, n_iv.var, k_iv.var):
        return None  # x comes from a producer, or the weight is not a block: not ours
    weight = producers[0]
    unpack = None
    for _ in range(4):  # dequantize -> cast: one block computing the float weight
        inner = list(sch.get_producers(weight))
        if len(inner) == 1 and _is_unpack(sch, inner[0]):
            unpack = inner[0]  # kept: the GEMV may unpack whole words in a phase of its own
            break
        if not inner:
            break
        try:
            for p in inner:
                sch.compute_inline(p)
        except Exception:  # noqa: BLE001
            return None
    epilogues = consumer_chain(sch, block)
    if epilogues is None:
        return None
    # Side inputs of the epilogue (the float16 -> float32 cast of a Qwen2 qkv bias) go into it.
    own = {sch.get(b) for b in (block, weight, *epilogues, *([unpack] if unpack else []))}
    for other in root_blocks(sch):
        if sch.get(other) not in own:
            try:
                sch.compute_inline(other)
            except Exception:  # noqa: BLE001
                return None
    packed = match_dequant_matmul(func)  # the packing facts, read as the CUDA rules read them
    return CPUMatmul(
        sch=sch, block=block, weight=weight, unpack=unpack, epilogues=epilogues,
        row_extents=[_static(iv.dom.extent) for iv in iters[:-2]], n=n, k=k,
        epw=packed.epw if packed else None, group=packed.group if packed else None,
    )


class CPUMatmulRule(dl.ScheduleRule, abc.ABC):
    """Base of the llvm matmul rules, in dlight's shape: ``apply`` returns a schedule or None.
    A subclass says which row counts it takes (``None``: symbolic) and how to schedule a match."""

    @abc.abstractmethod
    def accepts(self, static_rows: int | None) -> bool: ...

    @abc.abstractmethod
    def schedule(self, info: CPUMatmul) -> s_tir.Schedule: ...

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not is_llvm(target):
            return None
        info = match_matmul(func)
        if info is None or not self.accepts(info.static_rows):
            return None
        return self.schedule(info)
