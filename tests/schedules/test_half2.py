"""DecodeGEMV's half2 body (tvm_schedules/half2.py): where it applies, exact, and paired by nvcc."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm

from desv_export.modes import MODES
from desv_export.pack import dequantize
from tests.schedules.conftest import cuda_target, exact_case
from tvm_schedules import DecodeGEMV
from tvm_schedules.cpu_check import build_cpu, cuda_source
from tvm_schedules.resources import cuobjdump, kernel_resources
from tvm_schedules.workloads import dequant_matmul

QUANT_MODES = [m for m in MODES if MODES[m].quantized]


def _decode(mode: str, n: int, k: int, epilogue=None):
    return DecodeGEMV().apply(dequant_matmul(mode, n, k, epilogue=epilogue), cuda_target())


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_half2_body_is_used_at_2_and_4_bits(mode):
    uses = "dequant_dot_half2" in _decode(mode, 64, 2048).mod["main"].script()
    assert uses == (MODES[mode].bits in (2, 4))


@pytest.mark.parametrize("mode", ["q4f16_1", "q4f16_g128asym", "q2f16_g32asym", "q2f16_g128asym"])
@pytest.mark.parametrize("k", [4096, 1104])  # whole slabs; a K tail inside the last slab
def test_half2_decode_is_exact(mode, k):
    """Against the float32 numpy reference, bit for bit (exact data), residual add included."""
    n = 64
    sch = _decode(mode, n, k, epilogue="add")
    assert "dequant_dot_half2" in sch.mod["main"].script()
    t, x = exact_case(mode, n, k, 1, seed=3)
    residual = np.random.default_rng(1).integers(-8, 8, (1, n)).astype(np.float16) / 8
    args = [x.reshape(1, 1, k), t["q_weight"], t["q_scale"]] + ([t["q_zero"]] if "q_zero" in t else [])
    args.append(residual.reshape(1, 1, n))
    out = tvm.runtime.tensor(np.zeros((1, 1, n), np.float16))
    build_cpu(sch.mod["main"])["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
    expect = x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T + residual.astype(np.float32)
    np.testing.assert_array_equal(out.numpy().reshape(1, n).astype(np.float32), expect)


@pytest.mark.skipif(shutil.which("nvcc") is None or cuobjdump() is None,
                    reason="needs nvcc and cuobjdump (pip install -e '.[audit]')")
def test_nvcc_pairs_the_half2_arithmetic():
    """Two codes per HMUL2, no local memory, and fewer than 6 instructions per code (the scalar
    form needed 7.6-7.8 on the same shapes)."""
    funcs = {f"k{i}": _decode(mode, 256, 4096).mod["main"].with_attr("global_symbol", f"k{i}")
             for i, mode in enumerate(["q4f16_1", "q2f16_g128asym"])}
    k = kernel_resources(cuda_source(tvm.IRModule(funcs), cuda_target()), "sm_90")
    for name in ("k0_kernel", "k1_kernel"):
        res = k[name]
        assert not res.uses_local_memory, res
        assert res.loop_mix["HMUL2"] * 2 == res.loop_mix["FFMA"], res.loop_mix
        assert res.instructions_per_fma < 6, res.instructions_per_fma
