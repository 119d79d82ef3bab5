"""Which rule owns which kernel, for every export mode and shape class, on sm_80 and sm_90."""

from __future__ import annotations

import re

import pytest
import tvm
from tvm import tirx

from desv_export.compile import cuda_target
from desv_export.modes import MODES
from tests.schedules.conftest import CUDA_ARCHS
from tvm_schedules import DecodeGEMV, DequantGEMM, DequantTake, LowBatchGEMV, cuda_rules
from tvm_schedules.analysis import match_dequant_matmul
from tvm_schedules.dispatch import LowBatchDispatch
from tvm_schedules.workloads import LLAMA_7B, dequant_matmul, dequant_take

QUANT_MODES = [m for m in MODES if MODES[m].quantized]


def _seq():
    return tirx.Var("seq_len", "int64")


# (label, builder, the rule that must own it: the rules that apply, in order)
SHAPE_CLASSES = [
    ("decode", lambda m: dequant_matmul(m, 256, 1280), DecodeGEMV),
    ("batch2", lambda m: dequant_matmul(m, 256, 1280, batch=2), LowBatchGEMV),
    ("batch8", lambda m: dequant_matmul(m, 256, 1280, batch=8), LowBatchGEMV),
    ("batch16", lambda m: dequant_matmul(m, 256, 1280, batch=16), DequantGEMM),
    # Symbolic rows: LowBatchDispatch comes first and joins GEMV schedules (<= 8 rows) with
    # DequantGEMM's (beyond) in one function; DequantGEMM alone would take them too.
    ("prefill", lambda m: dequant_matmul(m, 256, 1280, seq=_seq()), (LowBatchDispatch, DequantGEMM)),
    ("prefill_add", lambda m: dequant_matmul(m, 256, 1280, seq=_seq(), epilogue="add"),
     (LowBatchDispatch, DequantGEMM)),
    ("take", lambda m: dequant_take(m, 512, 1280, seq=_seq()), DequantTake),
]


@pytest.mark.parametrize("arch", CUDA_ARCHS)
@pytest.mark.parametrize("mode", QUANT_MODES)
def test_every_class_is_owned_by_its_rule(mode, arch):
    target = cuda_target(arch)
    for label, build, owner in SHAPE_CLASSES:
        func = build(mode)
        owners = [type(r) for r in cuda_rules() if r.apply(func, target, False) is not None]
        expected = list(owner) if isinstance(owner, tuple) else [owner]
        assert owners == expected, f"{mode} {label}: applied by {owners}"


def test_7b_shapes_apply(sm90):
    """The real 7B projections (odd word counts for 3-bit down_proj included) get a schedule."""
    for mode in ("q4f16_1", "q3f16_1", "q3f16_g128asym", "q2f16_g128asym"):
        for shape in LLAMA_7B:
            assert DecodeGEMV().apply(dequant_matmul(mode, shape.n, shape.k), sm90) is not None
            assert DequantGEMM().apply(
                dequant_matmul(mode, shape.n, shape.k, seq=512), sm90) is not None


def test_rules_decline_what_is_not_theirs(sm90):
    llvm = tvm.target.Target("llvm")
    func = dequant_matmul("q4f16_1", 256, 1280)
    assert all(r.apply(func, llvm, False) is None for r in cuda_rules())
    # A plain float16 matmul (no packed weight) is left to dlight.
    from tvm import te

    x = te.placeholder((1, 1, 256), "float16", name="x")
    w = te.placeholder((128, 256), "float16", name="w")
    r = te.reduce_axis((0, 256), name="k")
    out = te.compute((1, 1, 128), lambda b, s, j: te.sum(x[b, s, r] * w[j, r], axis=r),
                     name="NT_matmul")
    plain = te.create_prim_func([x, w, out])
    assert match_dequant_matmul(plain) is None
    assert all(rule.apply(plain, sm90, False) is None for rule in cuda_rules())
    # GEMM tiles need whole 64-row N tiles; otherwise dlight's Matmul takes it.
    assert DequantGEMM().apply(dequant_matmul("q4f16_1", 96, 256, seq=_seq()), sm90) is None
    # float32 activations (compile --dtype float32 on cuda): the GEMM stages float16 x tiles.
    f32 = dequant_matmul("q2f16_g128asym", 256, 1280, seq=_seq(), x_dtype="float32", out_dtype="float32")
    assert DequantGEMM().apply(f32, sm90) is None


def test_packing_facts_are_read_from_the_expression():
    for mode in QUANT_MODES:
        info = match_dequant_matmul(dequant_matmul(mode, 64, 640))
        m = MODES[mode]
        assert (info.epw, info.group, info.bits) == (m.elems_per_word, m.group_size, m.bits)
        assert info.words == m.shapes(64, 640)["q_weight"][1]
        assert (info.n, info.k, info.batch) == (64, 640, 1)


def test_decode_gemv_loads_words_wide_and_reduces_in_a_warp(sm90):
    """The decode kernel's shape: uint4 weight loads, one scale load per row and chunk, warp
    shuffles; 3-bit rows whose word count is odd fall back to single-word loads."""
    from tvm_schedules.cpu_check import cuda_source

    sch = DecodeGEMV().apply(dequant_matmul("q4f16_1", 256, 4096), sm90)
    src = cuda_source(sch.mod, sm90)
    assert "*(uint4*)(q_weight_local_ptr" in src
    assert src.count("q_scale_local_ptr[0] = q_scale_ptr[") == 1
    assert "__shfl_down_sync" in src
    odd = DecodeGEMV().apply(dequant_matmul("q3f16_g32asym", 256, 224), sm90)  # 23 words/row
    odd_src = cuda_source(odd.mod, sm90)
    assert re.search(r"q_weight_local_ptr\[[^\]]*\] = q_weight_ptr\[", odd_src)
    assert "*(uint4*)(q_weight_local_ptr" not in odd_src
