"""LowBatchDispatch: one PrimFunc that takes our GEMV for 1..8 rows or the GEMM by row count.

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

from desv_export.compile import cuda_target
from desv_export.pack import dequantize
from tests.schedules.conftest import exact_case, packed_params
from tvm_schedules import cuda_rules
from tvm_schedules.cpu_check import build_cpu, cuda_source, nvcc_compile
from tvm_schedules.dispatch import MAX_GEMV_ROWS, LowBatchDispatch
from tvm_schedules.gemv import LowBatchGEMV
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
    # Our GEMV for each of 1..8 rows, the GEMM for 13; the residual add through every branch.
    _check_rows(mode, 128, 640, (*range(1, MAX_GEMV_ROWS + 1), 13), epilogue="add")


def test_each_row_count_takes_our_gemv_for_exactly_that_count():
    """rows == r for r in 1..8 runs our half2 GEMV scheduled for exactly r rows (DecodeGEMV
    for one row, mlc_llm's single-sequence ``batch_decode``; LowBatchGEMV beyond): x, the
    residual and the output are matched onto the originals' first r rows, the packed weights
    onto the whole of theirs. Nothing of dlight's is left, and only the GEMM follows."""
    script = _dispatched("q4f16_1", 128, 640, epilogue="add")["main"].script()
    conditions = re.findall(r"\n( *)if T\.tvm_thread_invariant\(batch_size == T\.int64\((\d+)\)\)", script)
    assert [int(r) for _, r in conditions] == list(range(1, MAX_GEMV_ROWS + 1))
    last_indent = conditions[-1][0]
    gemm = script.rindex(f"\n{last_indent}else:")  # the last branch's else: the GEMM
    starts = [script.index(f'T.sblock("rows_{r}")') for r in range(1, MAX_GEMV_ROWS + 1)]
    for r, start, end in zip(range(1, MAX_GEMV_ROWS + 1), starts, [*starts[1:], gemm]):
        branch = script[start:end]
        assert "dequant_dot_half2" in branch, r
        rows = "T.int64(0)" if r == 1 else rf"T.int64(0):T.int64({r})"
        matched = re.findall(r"T\.match_buffer\((\w+)\[([^\]]*)\]", branch)
        leading = {name for name, region in matched if region.startswith(rows + ", 0, ")}
        assert leading == {"x", "residual", "T_add"}, (r, matched)
        assert {name for name, _ in matched} - leading == {"q_weight", "q_scale"}, (r, matched)
    assert "dequant_dot_half2" not in script[gemm:] and "rows_" not in script[gemm:]


def test_dispatched_row_count_runs_the_static_kernel():
    """The branch for r rows is the kernel LowBatchGEMV makes for a static batch of r (what
    benchmarks/kernels.py and the kernel audit time as ours), up to CSE names."""
    def kernels(mod):
        source = re.sub(r"main_kernel_?\d*|cse_v\d+", "_", cuda_source(mod, TARGET))
        parts = re.split(r'(?=extern "C" __global__)', source)[1:]
        return [part for part in parts if "{" in part]  # definitions, not the declarations

    dispatched = kernels(_dispatched("q3f16_g128asym", 128, 640))
    assert len(dispatched) == MAX_GEMV_ROWS + 1
    for r in (2, 5, 8):
        static = dequant_matmul("q3f16_g128asym", 128, 640, batch=r, seq=1)
        assert kernels(LowBatchGEMV().apply(static, TARGET, False).mod) == [dispatched[r - 1]]


def test_the_pipeline_dispatches_symbolic_rows_only():
    assert isinstance(cuda_rules()[0], LowBatchDispatch)
    static = dequant_matmul("q4f16_1", 128, 640, batch=4)
    assert LowBatchDispatch().apply(static, TARGET, False) is None  # static: LowBatchGEMV's
    assert LowBatchDispatch().apply(static, tvm_llvm(), False) is None


def test_dispatch_that_would_not_build_falls_back():
    """Joined under the thread-invariant branches, the CUDA-core GEMM of a batch-axis row
    count ([b, 1, K]; here 3-bit K = 1000, a multiple of neither 80 nor 64, so no tensor
    cores) keeps a symbolic-size x tile that CUDA codegen rejects: the rule declines and
    DequantGEMM takes every row count. Tensor-core shapes keep every branch, 3-bit
    K = 4096 (a packed word cut by K) included."""
    batch = tirx.Var("batch_size", "int64")
    ragged = dequant_matmul("q3f16_g128asym", 192, 1000, batch=batch, seq=1)
    assert LowBatchDispatch().apply(ragged, TARGET, False) is None
    unchecked = LowBatchDispatch(verify=False).apply(ragged, TARGET, False)
    with pytest.raises(Exception, match="constant size stack allocation"):
        cuda_source(unchecked.mod, TARGET)
    for k in (4096, 11008):
        func = dequant_matmul("q3f16_g128asym", 256, k, batch=batch, seq=1)
        assert _kernels(LowBatchDispatch().apply(func, TARGET, False).mod) == MAX_GEMV_ROWS + 1
    # Numerics of a packed word cut by K through every branch (CPU run).
    _check_rows("q3f16_1", 128, 1000, (1, 2, 7, 9))  # sm_75: the CUDA-core GEMM here


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


def test_private_functions_from_the_pipeline_dispatch():
    """Relax hands the rule private PrimFuncs (no global_symbol). The build check once failed
    on every one of them (host codegen cannot type an unpacked buffer parameter), so no
    library ever dispatched; the check now builds a public copy."""
    func = dequant_matmul("q4f16_1", 256, 512, batch=tirx.Var("batch_size", "int64"), seq=1)
    private = func.without_attr("global_symbol")
    assert "global_symbol" not in private.attrs
    sch = LowBatchDispatch().apply(private, TARGET, False)
    assert sch is not None
    public = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
    assert _kernels(public) == MAX_GEMV_ROWS + 1
