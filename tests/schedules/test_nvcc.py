"""The generated CUDA compiles with nvcc for sm_80 and sm_90 (no GPU needed to compile)."""

from __future__ import annotations

import shutil

import pytest
import tvm
from tvm import tirx

from desv_export.compile import cuda_target
from desv_export.modes import MODES
from tests.schedules.conftest import CUDA_ARCHS, undispatched_rules
from tvm_schedules.cpu_check import cuda_source, nvcc_compile
from tvm_schedules.gemm import tensorize_works
from tvm_schedules.workloads import dequant_matmul, dequant_take

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


def _kernels(modes, arch):
    """One module holding every shape class of ``modes``, so nvcc runs once per arch (without
    ``LowBatchDispatch``, see ``undispatched_rules``; test_dispatch.py compiles its kernels)."""
    target = cuda_target(arch)
    rules = undispatched_rules()
    funcs = {}
    for i, mode in enumerate(modes):
        builds = [
            dequant_matmul(mode, 128, 640),
            dequant_matmul(mode, 128, 640, batch=4),
            dequant_matmul(mode, 128, 600, seq=tirx.Var("seq_len", "int64"), epilogue="add"),  # CUDA cores
            dequant_matmul(mode, 128, 640, seq=tirx.Var("seq_len", "int64"), epilogue="add"),  # sm_80+: wmma
            dequant_take(mode, 64, 640, seq=tirx.Var("seq_len", "int64")),
        ]
        for j, func in enumerate(builds):
            sch = next(s for s in (r.apply(func, target, False) for r in rules) if s)
            name = f"k{i}_{j}"
            funcs[name] = sch.mod["main"].with_attr("global_symbol", name)
    return tvm.IRModule(funcs), target


@pytest.mark.parametrize("arch", CUDA_ARCHS)
def test_representative_kernels_compile(arch, tmp_path):
    modes = ["q4f16_1", "q3f16_g128asym", "q2f16_g32asym"]
    mod, target = _kernels(modes, arch)
    src = cuda_source(mod, target)
    assert src.count("__global__ void") >= 5 * len(modes)
    cubin = nvcc_compile(src, arch, tmp_path / f"{arch}.cubin")
    assert cubin.stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", CUDA_ARCHS)
def test_every_mode_compiles(arch, tmp_path):
    modes = [m for m in MODES if MODES[m].quantized]
    mod, target = _kernels(modes, arch)
    src = cuda_source(mod, target)
    if tensorize_works():  # one tensor-core GEMM per mode (see test_gemm_tensorcore.py)
        assert src.count("wmma::mma_sync") >= len(modes)
    assert nvcc_compile(src, arch, tmp_path / "all.cubin").stat().st_size


def test_nvcc_errors_are_reported(tmp_path):
    with pytest.raises(RuntimeError, match="nvcc failed"):
        nvcc_compile("this is not cuda", "sm_90", tmp_path / "bad.cubin")
