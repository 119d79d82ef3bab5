"""LowBatchDispatch: one PrimFunc that takes the low-batch GEMV or the GEMM by row count.

The joined function runs on the CPU with its threads serialised (``cpu_check``), for row
counts that take each branch, and must equal the numpy reference exactly (exact data, see
``conftest.exact_case``); its CUDA source must compile with nvcc.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tvm import tirx

from desv_export.pack import dequantize
from tests.schedules.conftest import cuda_target, exact_case
from tvm_schedules import cuda_rules
from tvm_schedules.cpu_check import build_cpu, cuda_source, nvcc_compile
from tvm_schedules.dispatch import LowBatchDispatch
from tvm_schedules.workloads import dequant_matmul

TARGET = cuda_target("sm_90")
# The GEMM branch on sm_80+ is the tensor-core schedule, which LLVM cannot run (its numerics
# are checked untensorized in test_gemm_tensorcore.py); the CPU run takes sm_75's CUDA-core one.
CPU_CHECK_TARGET = cuda_target("sm_75")


def _dispatched(mode: str, n: int, k: int, target=TARGET):
    func = dequant_matmul(mode, n, k, batch=tirx.Var("batch_size", "int64"), seq=1)
    sch = LowBatchDispatch().apply(func, target, False)
    assert sch is not None
    return sch.mod


@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_g128asym", "q2f16_g64asym"])
def test_every_branch_is_exact(mode):
    n, k = 128, 640
    lib = build_cpu(_dispatched(mode, n, k, CPU_CHECK_TARGET))
    for rows in (1, 2, 3, 8, 13):  # GEMV(2), GEMV(2), GEMV(4), GEMV(4), GEMM
        t, x = exact_case(mode, n, k, rows, seed=rows)
        args = [x.reshape(rows, 1, k), t["q_weight"], t["q_scale"]] + ([t["q_zero"]] if "q_zero" in t else [])
        import tvm

        dev = tvm.cpu()
        out = tvm.runtime.tensor(np.full((rows, 1, n), np.nan, np.float16), dev)
        lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], out)
        expect = x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T
        np.testing.assert_array_equal(out.numpy().reshape(rows, n).astype(np.float32), expect, err_msg=f"rows={rows}")


def test_the_pipeline_dispatches_symbolic_rows_only():
    assert isinstance(cuda_rules()[0], LowBatchDispatch)
    static = dequant_matmul("q4f16_1", 128, 640, batch=4)
    assert LowBatchDispatch().apply(static, TARGET, False) is None  # static: LowBatchGEMV's
    assert LowBatchDispatch().apply(static, tvm_llvm(), False) is None


def test_k_inside_a_packed_word_is_left_to_the_gemm():
    """3-bit K = 4096 is 409.6 words: joined with dlight's LowBatchGEMV branches, such a matmul
    did not build for CUDA in a model (tiny LLaMA q3 libraries: "constant size stack
    allocation"), so the dispatch declines it; tests/compile builds a 3-bit CUDA library."""
    rows = tirx.Var("seq_len", "int64")
    assert LowBatchDispatch().apply(dequant_matmul("q3f16_g128asym", 4096, 4096, seq=rows), TARGET, False) is None
    assert LowBatchDispatch().apply(dequant_matmul("q3f16_g128asym", 4096, 3840, seq=rows), TARGET, False) is not None


def tvm_llvm():
    import tvm

    return tvm.target.Target("llvm")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_dispatched_kernel_compiles_with_nvcc(tmp_path):
    source = cuda_source(_dispatched("q4f16_g128asym", 256, 512), TARGET)
    assert "__global__" in source
    assert nvcc_compile(source, "sm_90", tmp_path / "k.cubin").stat().st_size > 0
