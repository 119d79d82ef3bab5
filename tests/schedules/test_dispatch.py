"""LowBatchDispatch: one PrimFunc that takes the low-batch GEMV or the GEMM by row count.

The joined function runs on the CPU with its threads serialised (``cpu_check``), for row
counts that take each branch, and must equal the numpy reference exactly (exact data, see
``conftest.exact_case``); its CUDA source must compile with nvcc.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import tvm
from tvm import tirx

from desv_export.pack import dequantize
from tests.schedules.conftest import cuda_target, exact_case, packed_params
from tvm_schedules import cuda_rules
from tvm_schedules.cpu_check import build_cpu, cuda_source, nvcc_compile
from tvm_schedules.dispatch import LowBatchDispatch
from tvm_schedules.workloads import dequant_matmul

TARGET = cuda_target("sm_90")
# The GEMM branch on sm_80+ is the tensor-core schedule, which LLVM cannot run (its numerics
# are checked untensorized in test_gemm_tensorcore.py); the CPU run takes sm_75's CUDA-core one.
CPU_CHECK_TARGET = cuda_target("sm_75")


def _dispatched(mode: str, n: int, k: int, target=TARGET, epilogue=None):
    func = dequant_matmul(mode, n, k, batch=tirx.Var("batch_size", "int64"), seq=1,
                          epilogue=epilogue)
    # sm_75 (CPU run): no build check, see LowBatchDispatch (CUDA codegen does not run here).
    sch = LowBatchDispatch(verify=target is TARGET).apply(func, target, False)
    assert sch is not None
    return sch.mod


def _check_rows(mode: str, n: int, k: int, row_counts, epilogue=None) -> None:
    """Run the dispatched function on the CPU for each row count; exact against numpy."""
    lib = build_cpu(_dispatched(mode, n, k, CPU_CHECK_TARGET, epilogue))
    dev = tvm.cpu()
    for rows in row_counts:
        t, x = exact_case(mode, n, k, rows, seed=rows)
        args = [x.reshape(rows, 1, k), *packed_params(t)]
        expect = x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T
        if epilogue == "add":
            residual = np.random.default_rng(rows).integers(-8, 8, (rows, n)).astype(np.float16) / 8
            args.append(residual.reshape(rows, 1, n))
            expect = expect + residual.astype(np.float32)
        out = tvm.runtime.tensor(np.full((rows, 1, n), np.nan, np.float16), dev)
        lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], out)
        np.testing.assert_array_equal(out.numpy().reshape(rows, n).astype(np.float32), expect,
                                      err_msg=f"rows={rows}")


@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_g128asym", "q2f16_g64asym"])
def test_every_branch_is_exact(mode):
    # DecodeGEMV, GEMV(2), GEMV(4), GEMV(4), GEMM; the residual add through every branch.
    _check_rows(mode, 128, 640, (1, 2, 3, 8, 13), epilogue="add")


def test_one_row_takes_our_decode_gemv():
    """One row (mlc_llm's single-sequence ``batch_decode``) runs the half2 DecodeGEMV of the
    function specialised to one row, its x / residual / output matched onto row 0."""
    script = _dispatched("q4f16_1", 128, 640, epilogue="add")["main"].script()
    start = script.index('T.sblock("one_row")')
    one_row = script[start:script.index("\n    else:", start)]  # up to the next branch
    assert "dequant_dot_half2" in one_row
    assert script.count("dequant_dot_half2") == one_row.count("dequant_dot_half2")
    assert one_row.count("T.match_buffer") == 3  # x, residual, output


def test_the_pipeline_dispatches_symbolic_rows_only():
    assert isinstance(cuda_rules()[0], LowBatchDispatch)
    static = dequant_matmul("q4f16_1", 128, 640, batch=4)
    assert LowBatchDispatch().apply(static, TARGET, False) is None  # static: LowBatchGEMV's
    assert LowBatchDispatch().apply(static, tvm_llvm(), False) is None


def test_dispatch_that_would_not_build_falls_back():
    """Joined under the thread-invariant branches, the CUDA-core GEMM of a batch-axis row
    count ([b, 1, K]; here 3-bit K = 1000, a multiple of neither 80 nor 64, so no tensor
    cores) keeps a symbolic-size x tile that CUDA codegen rejects: the rule declines and
    DequantGEMM takes every row count. Tensor-core shapes keep all four branches, 3-bit
    K = 4096 (a packed word cut by K) included."""
    batch = tirx.Var("batch_size", "int64")
    ragged = dequant_matmul("q3f16_g128asym", 192, 1000, batch=batch, seq=1)
    assert LowBatchDispatch().apply(ragged, TARGET, False) is None
    unchecked = LowBatchDispatch(verify=False).apply(ragged, TARGET, False)
    with pytest.raises(Exception, match="constant size stack allocation"):
        cuda_source(unchecked.mod, TARGET)
    for k in (4096, 11008):
        func = dequant_matmul("q3f16_g128asym", 256, k, batch=batch, seq=1)
        assert _kernels(LowBatchDispatch().apply(func, TARGET, False).mod) == 4
    # Numerics of a packed word cut by K through every branch (CPU run).
    _check_rows("q3f16_1", 128, 1000, (1, 2, 7, 9))


def _kernels(mod) -> int:
    return len(set(re.findall(r"__global__ void __launch_bounds__\(\d+\) (\w+)\(",
                              cuda_source(mod, TARGET))))


def tvm_llvm():
    return tvm.target.Target("llvm")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_dispatched_kernel_compiles_with_nvcc(tmp_path):
    source = cuda_source(_dispatched("q4f16_g128asym", 256, 512), TARGET)
    assert "__global__" in source
    assert nvcc_compile(source, "sm_90", tmp_path / "k.cubin").stat().st_size > 0
