"""Small rewrites of a scheduled PrimFunc's body that no schedule primitive offers.

The 0.27 wheel exposes no TIR mutator or substitution to Python, so these walk the few node
kinds a scheduled dequantize-GEMV is made of (loops, sequences, block realizes; integer
arithmetic and comparisons in predicates) and rebuild what they change.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir import expr as ir_expr


def replace_stmt(stmt: tirx.Stmt, target: tirx.Stmt, new: tirx.Stmt) -> tirx.Stmt | None:
    """``stmt`` with ``target`` replaced by ``new``; None if ``target`` is not below it."""
    if stmt.same_as(target):
        return new
    if isinstance(stmt, tirx.For):
        body = replace_stmt(stmt.body, target, new)
        return None if body is None else tirx.For(
            stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding,
            stmt.annotations)
    if isinstance(stmt, tirx.SeqStmt):
        seq = list(stmt.seq)
        for i, s in enumerate(seq):
            got = replace_stmt(s, target, new)
            if got is not None:
                return tirx.SeqStmt(seq[:i] + [got] + seq[i + 1:])
        return None
    if isinstance(stmt, s_tir.stmt.SBlockRealize):
        b = stmt.block
        body = replace_stmt(b.body, target, new)
        if body is None:
            return None
        block = s_tir.stmt.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, body, b.init,
                                  b.alloc_buffers, b.match_buffers, b.annotations)
        return s_tir.stmt.SBlockRealize(stmt.iter_values, stmt.predicate, block)
    return None


def find_realize(stmt: tirx.Stmt, name: str) -> s_tir.stmt.SBlockRealize | None:
    """The realize of the block called ``name`` below ``stmt``."""
    if isinstance(stmt, s_tir.stmt.SBlockRealize):
        if stmt.block.name_hint == name:
            return stmt
        return find_realize(stmt.block.body, name)
    if isinstance(stmt, tirx.For):
        return find_realize(stmt.body, name)
    if isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            found = find_realize(s, name)
            if found is not None:
                return found
    return None


def with_zero(expr: tirx.PrimExpr, var: tirx.Var) -> tirx.PrimExpr | None:
    """``expr`` with ``var`` set to 0, for the integer expressions of a block predicate; None
    for a node kind it does not know (the caller then keeps ``expr``)."""
    if isinstance(expr, ir_expr.Var):
        return tirx.const(0, str(expr.ty)) if expr.same_as(var) else expr
    if isinstance(expr, tirx.IntImm):
        return expr
    a, b = getattr(expr, "a", None), getattr(expr, "b", None)
    if a is None or b is None:
        return None
    a0, b0 = with_zero(a, var), with_zero(b, var)
    if a0 is None or b0 is None:
        return None
    return type(expr)(a0, b0)
