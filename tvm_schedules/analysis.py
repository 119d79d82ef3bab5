"""Recognise the fused dequantize kernels and read the packing facts the rules tile by.

The rules only fire on PrimFuncs of the shape ``workloads.py`` documents: one reduction block
``out[..., n] += x[..., k] * W(n, k)`` whose weight is a spatial ``dequantize`` producer (or
already inlined) reading uint32 words as ``q_weight[n, k // epw]``. Everything else returns
None so the pipeline falls back to dlight. The packing facts (codes per word, group size,
words per row) come from the expression itself, not from a mode name, because the PrimFunc is
all a schedule rule is given.
"""

from __future__ import annotations

import abc

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.ir import expr as ir_expr
from tvm.ir.prim import expr as prim_expr
from tvm.tirx.stmt import BufferStore
from tvm.sym import Analyzer
from tvm.target import Target


@dataclass
class DequantMatmul:
    """A fused dequantize-matmul after the dequantize was inlined into the reduction block."""

    sch: s_tir.Schedule
    block: s_tir.schedule.SBlockRV  # the reduction block (dequantize inlined)
    epilogues: list[s_tir.schedule.SBlockRV]  # the elementwise chain after it (cast, add)
    batch: int | ir_expr.Expr  # product of the spatial extents other than n (static or symbolic)
    n: int
    k: int
    epw: int  # codes per uint32 word
    group: int  # group size (codes sharing a scale)
    words: int  # uint32 words per weight row
    x_buffer: tirx.Buffer
    weight_buffer: tirx.Buffer

    @property
    def bits(self) -> int:
        return 32 // self.epw


def sm_version(target: Target) -> int:
    """``sm_90`` -> 90; -1 when the target names no arch."""
    arch = str(target.attrs.get("arch", ""))
    digits = arch.replace("sm_", "").rstrip("a")
    return int(digits) if digits.isdigit() else -1


def is_cuda(target: Target) -> bool:
    return target.kind.name == "cuda"


def _loads(expr) -> list[ir_expr.TensorLoad]:
    """Every BufferLoad in an expression (the 0.27 wheel exposes no TIR visitor to Python)."""
    found: list[ir_expr.TensorLoad] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ir_expr.TensorLoad):
            found.append(node)
            stack.extend(node.indices)
            continue
        if isinstance(node, BufferStore):
            stack.append(node.value)
            stack.extend(node.indices)
            continue
        for field in ("a", "b", "value", "condition", "true_value", "false_value"):
            child = getattr(node, field, None)
            if isinstance(child, ir_expr.Expr):
                stack.append(child)
        args = getattr(node, "args", None)
        if args is not None and isinstance(node, ir_expr.Call):
            stack.extend(a for a in args if isinstance(a, ir_expr.Expr))
    return found


def _floordiv_of(index, var: tirx.Var) -> int | None:
    """``var // c`` -> c (also ``var // c`` inside an enclosing floordiv of a floordiv)."""
    if isinstance(index, prim_expr.FloorDiv) and isinstance(index.b, prim_expr.IntImm):
        if isinstance(index.a, ir_expr.Var) and index.a.same_as(var):
            return int(index.b.value)
    return None


def packing_of(block: s_tir.SBlock, k_var: tirx.Var) -> tuple[tirx.Buffer, int, int] | None:
    """(packed weight buffer, codes per word, group size) read by ``block`` along ``k_var``."""
    weight = epw = group = None
    for load in _loads(block.body):
        last = load.indices[-1]
        div = _floordiv_of(last, k_var)
        if div is None:
            continue
        if load.source.dtype == "uint32" and div in (8, 10, 16):
            weight, epw = load.source, div
        elif load.source.dtype == "float16":
            group = div
    if weight is None or group is None:
        return None
    return weight, epw, group


def _static(expr) -> int | None:
    return int(expr.value) if isinstance(expr, prim_expr.IntImm) else None


def match_dequant_matmul(func: tirx.PrimFunc) -> DequantMatmul | None:
    """Inline the dequantize into the matmul and read its facts, or None if it is not one.

    The schedule in the result holds the inlined form; rules that want the dequantize as its
    own block (the GEMM fills a shared-memory tile with it) start a fresh schedule.
    """
    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    blocks = root_blocks(sch)
    if not blocks:
        return None
    reductions = [b for b in blocks if is_reduction(sch, b)]
    if len(reductions) != 1:
        return None
    main = reductions[0]
    # Inline every spatial producer (the dequantize, possibly a transpose of it).
    for _ in range(4):
        producers = sch.get_producers(main)
        if not producers:
            break
        for p in producers:
            try:
                sch.compute_inline(p)
            except Exception:  # pylint: disable=broad-except
                return None
    stmt = sch.get(main)
    iters = list(stmt.iter_vars)
    red = [iv for iv in iters if iv.iter_type == tirx.IterVar.CommReduce]
    spatial = [iv for iv in iters if iv.iter_type == tirx.IterVar.DataPar]
    if len(red) != 1 or not spatial:
        return None
    k = _static(red[0].dom.extent)
    n = _static(spatial[-1].dom.extent)
    if k is None or n is None:
        return None
    if not isinstance(stmt.body, BufferStore) or stmt.body.buffer.dtype not in (
            "float16", "float32"):
        return None
    # out[..., n] must be indexed by the last spatial iter, the weight by (n, k // epw).
    packing = packing_of(stmt, red[0].var)
    if packing is None:
        return None
    weight, epw, group = packing
    x_buffers = [
        load.source
        for load in _loads(stmt.body.value)
        if load.source.dtype in ("float16", "float32")
        and not load.source.same_as(stmt.body.buffer)
        and isinstance(load.indices[-1], ir_expr.Var)
        and load.indices[-1].same_as(red[0].var)
    ]
    if len(x_buffers) != 1 or len(weight.shape) != 2 or _static(weight.shape[1]) is None:
        return None
    batch = tirx.const(1, "int64")
    for iv in spatial[:-1]:
        batch = batch * iv.dom.extent
    batch = Analyzer().simplify(batch)
    if isinstance(batch, prim_expr.IntImm):
        batch = int(batch.value)
    epilogues = consumer_chain(sch, main)
    if epilogues is None:
        return None
    return DequantMatmul(
        sch=sch, block=main, epilogues=list(epilogues), batch=batch, n=n, k=k, epw=epw,
        group=group, words=int(weight.shape[1].value), x_buffer=x_buffers[0],
        weight_buffer=weight,
    )


def root_blocks(sch: s_tir.Schedule) -> list:
    """The blocks under the root block; [] for a PrimFunc without one (already lowered)."""
    try:
        return list(sch.get_child_blocks(sch.get_sblock("root")))
    except Exception:  # pylint: disable=broad-except
        return []


def seq_stmt(stmts: list[tirx.Stmt]) -> tirx.Stmt:
    """``stmts`` as one statement (TIR forbids a ``SeqStmt`` of one; none is a no-op)."""
    if not stmts:
        return tirx.Evaluate(0)
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


def with_root_body(func: tirx.PrimFunc, body: tirx.Stmt) -> tirx.PrimFunc:
    """``func`` with its root block's body replaced by ``body`` (its buffers kept): how the
    rules that write a kernel by hand put it in place of the matched loop nests."""
    realize = func.body
    root = realize.block
    new_root = s_tir.stmt.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint, body,
                                 root.init, root.alloc_buffers, root.match_buffers,
                                 root.annotations)
    return func.with_body(s_tir.stmt.SBlockRealize(realize.iter_values, realize.predicate,
                                                   new_root))


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    stmt = sch.get(block)
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in stmt.iter_vars)


def static_batch(info: DequantMatmul) -> int | None:
    """The batch (rows of x) when static, None when symbolic."""
    b = info.batch
    if isinstance(b, int):
        return b
    return _static(b)


def consumer_chain(sch: s_tir.Schedule, block) -> list | None:
    """The single-consumer chain after ``block`` (cast, bias, residual add), or None when the
    output fans out or a consumer is not elementwise (then the rule declines)."""
    chain = []
    current = block
    while True:
        consumers = sch.get_consumers(current)
        if not consumers:
            return chain
        if len(consumers) != 1 or is_reduction(sch, consumers[0]):
            return None
        current = consumers[0]
        chain.append(current)


class DequantMatmulRule(abc.ABC):
    """Base of the rules for the fused dequantize-matmul, in dlight's shape: ``apply`` returns a
    schedule or None. A subclass says which static batch sizes it takes (None: symbolic) and
    how to schedule a match on the target (which may pick between schedules, e.g. tensor cores)."""

    @abc.abstractmethod
    def accepts(self, batch: int | None, info: DequantMatmul) -> bool: ...

    @abc.abstractmethod
    def schedule(self, func: tirx.PrimFunc, info: DequantMatmul, target: Target) -> "s_tir.Schedule | None": ...

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> "s_tir.Schedule | None":
        del tunable
        if not is_cuda(target):
            return None
        info = match_dequant_matmul(func)
        if info is None or not self.accepts(static_batch(info), info):
            return None
        return self.schedule(func, info, target)


def u32(value: int) -> tirx.PrimExpr:
    """A uint32 constant: the packed words' dtype, which every unpacking expression keeps."""
    return tirx.const(value, "uint32")


def read_buffer(sch: s_tir.Schedule, block, name_part: str) -> tirx.Buffer | None:
    """The buffer ``block`` reads whose name holds ``name_part`` ("scale", "zero"): the
    exporter's parameter names are what tells the group scales from the packed zero points."""
    for region in sch.get(block).reads:
        if name_part in region.source.name:
            return region.source
    return None
