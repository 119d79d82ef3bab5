"""TensorCoreGEMV (tvm_schedules/mma_gemv.py): the fragment map, exact numerics through the
emulated mma on the CPU, the real kernel through nvcc, and its SASS."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm

from desv_export.compile import cuda_target
from desv_export.pack import dequantize
from tests.schedules.conftest import CUDA_ARCHS, exact_case, packed_params
from tvm_schedules import DecodeGEMV, cuda_rules
from tvm_schedules.cpu_check import build_cpu, cuda_source, nvcc_compile
from tvm_schedules.intrinsics import cuda_tensor_intrinsics
from tvm_schedules.mma_gemv import TensorCoreGEMV, a_position, b_position, c_position
from tvm_schedules.resources import cuobjdump, kernel_resources
from tvm_schedules.workloads import dequant_matmul

MODES = ["q4f16_1", "q4f16_g32asym", "q4f16_g128asym", "q3f16_1", "q2f16_g32asym",
         "q2f16_g64asym", "q2f16_g128asym"]


def test_a_and_c_maps_are_tvms_mma_layout():
    """TVM's own mma intrinsics place A (16 x 16) and C by this index map; ours must agree."""
    layout = cuda_tensor_intrinsics().shared_16x16_to_ldmatrix_32x8_layout
    for i in range(16):
        for j in range(16):
            assert a_position(i, j) == tuple(layout(i, j))
        for n in range(8):
            assert c_position(i, n) == tuple(layout(i, n))


def test_b_map_gives_each_lane_its_a_codes():
    """The kernel's premise: B is a bijection onto 32 lanes x 4 halves, a lane's B column is
    g = lane / 4, and a lane holds the same k in B as in A, in the same register order."""
    assert sorted(b_position(k, n) for k in range(16) for n in range(8)) == [
        (lane, r) for lane in range(32) for r in range(4)]
    for lane in range(32):
        a_k = {r: j for i in range(16) for j in range(16)
               for ln, r in [a_position(i, j)] if ln == lane and i < 8}
        b_k = {r: k for k in range(16) for n in range(8)
               for ln, r in [b_position(k, n)] if ln == lane}
        assert {n for k in range(16) for n in range(8)
                if b_position(k, n)[0] == lane} == {lane // 4}
        # A registers 0, 1, 4, 5 (row g) hold the k of B registers 0, 1, 2, 3
        assert [a_k[r] for r in (0, 1, 4, 5)] == [b_k[r] for r in range(4)]


def _emulated(mode: str, n: int, k: int, epilogue, warps: int = 8):
    sch = TensorCoreGEMV(warps=warps, emulate=True).apply(
        dequant_matmul(mode, n, k, epilogue=epilogue), cuda_target("sm_90"))
    assert sch is not None and "tensor_core_gemv" in sch.mod["main"].script()
    return build_cpu(sch.mod["main"])


@pytest.mark.parametrize("mode", MODES)
# 2048: whole steps for 8 warps at 4 bits (16), 2-bit 8, q3f16_1 13 (rows of 52 groups);
# 1536: 12 steps at 4 bits, which 8 warps do not divide, 2-bit 6 with 4 warps, q3f16_1 9
# and a tail of 3 words a lane (odd: 15 pairs, the last mma half empty, x unaligned);
# 576 (SmolLM2): 4-bit 4 steps + a 2-word tail (g128: rows padded to 640 codes), 2-bit 2 + 1
# or 2, q3f16_1 3 + 3
@pytest.mark.parametrize("k", [2048, 1536, 576])
def test_emulated_kernel_is_exact(mode, k):
    """Dense x (+-1 at every K index), so a code multiplied by the wrong x, or put in the
    wrong fragment register, shows: every product is a multiple of 1/8 and the sums stay far
    below 2^21, so float32 accumulation is exact in any order; residual add included."""
    n = 48
    t, _ = exact_case(mode, n, k, 1, seed=7)
    x = np.random.default_rng(8).choice(np.array([-1, 1], np.float16), (1, k))
    residual = np.random.default_rng(9).integers(-8, 8, (1, n)).astype(np.float16) / 8
    expect = (x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T
              + residual.astype(np.float32))
    out = tvm.runtime.tensor(np.zeros((1, 1, n), np.float16))
    args = [x.reshape(1, 1, k), *packed_params(t), residual.reshape(1, 1, n)]
    _emulated(mode, n, k, "add")["main"](*[tvm.runtime.tensor(a) for a in args], out)
    np.testing.assert_array_equal(out.numpy().reshape(1, n).astype(np.float32), expect)


@pytest.mark.parametrize("mode,k", [("q4f16_1", 288),  # 2 steps and a 1-word tail a lane
                                    ("q4f16_g32asym", 64),  # no whole step: the tail only
                                    ("q3f16_1", 80)])  # 8 words: a 2-word tail only
def test_emulated_kernel_tails(mode, k):
    """Rows that end in a tail step of 1 or 2 words a lane, or are only a tail."""
    n = 16
    t, _ = exact_case(mode, n, k, 1, seed=3)
    x = np.random.default_rng(4).choice(np.array([-1, 1], np.float16), (1, k))
    expect = (x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T).astype(np.float16)
    out = tvm.runtime.tensor(np.zeros((1, 1, n), np.float16))
    args = [x.reshape(1, 1, k), *packed_params(t)]
    _emulated(mode, n, k, None)["main"](*[tvm.runtime.tensor(a) for a in args], out)
    np.testing.assert_array_equal(out.numpy().reshape(1, n), expect)


@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
def test_emulated_kernel_with_cast_or_no_epilogue_and_few_warps(out_dtype):
    """The plain cast epilogue, or none (the float32 sum is the output), and 2 warps for 8
    steps (4 a warp)."""
    mode, n, k = "q4f16_g128asym", 32, 1024
    t, x = exact_case(mode, n, k, 1, seed=2)
    expect = (x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T).astype(out_dtype)
    sch = TensorCoreGEMV(warps=2, emulate=True).apply(
        dequant_matmul(mode, n, k, out_dtype=out_dtype), cuda_target("sm_90"))
    out = tvm.runtime.tensor(np.zeros((1, 1, n), out_dtype))
    args = [x.reshape(1, 1, k), *packed_params(t)]
    build_cpu(sch.mod["main"])["main"](*[tvm.runtime.tensor(a) for a in args], out)
    np.testing.assert_array_equal(out.numpy().reshape(1, n), expect)


@pytest.mark.parametrize("mode,n,k,batch,arch", [
    ("q4f16_1", 64, 1024, 4, "sm_90"),  # more than one row of x
    ("q3f16_g128asym", 64, 1280, 1, "sm_90"),  # 3-bit words that straddle groups
    ("q3f16_g32asym", 64, 1280, 1, "sm_90"),
    ("q2f16_g32asym", 64, 1056, 1, "sm_90"),  # 66 words a row, not a multiple of 4
    ("q4f16_1", 40, 1024, 1, "sm_90"),  # N not a multiple of 16
    ("q4f16_1", 64, 1024, 1, "sm_75"),  # no m16n8k16 f16 mma before sm_80
])
def test_rule_declines_outside_its_scope(mode, n, k, batch, arch):
    func = dequant_matmul(mode, n, k, batch=batch)
    assert TensorCoreGEMV().apply(func, cuda_target(arch)) is None


def test_experimental_rule_is_not_in_the_pipeline():
    """Until a GPU has checked it (docs/schedules.md, Next steps), libraries use DecodeGEMV."""
    assert not any(isinstance(rule, TensorCoreGEMV) for rule in cuda_rules())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("arch", CUDA_ARCHS)
@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_1", "q2f16_g128asym"])
def test_cuda_kernel_compiles_with_the_mma(arch, mode):
    target = cuda_target(arch)
    sch = TensorCoreGEMV().apply(dequant_matmul(mode, 4096, 4096, epilogue="add"), target)
    source = cuda_source(sch.mod, target)
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in source
    assert nvcc_compile(source, arch).stat().st_size > 0


@pytest.mark.skipif(shutil.which("nvcc") is None or cuobjdump() is None,
                    reason="needs nvcc and cuobjdump (pip install -e '.[audit]')")
@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_1", "q2f16_g128asym"])
def test_sass_halves_the_instructions_per_code(mode):
    """What the kernel is for, read from the SASS of the 7B down_proj (K = 11008): no local
    memory, the mmas in the main loop, and under 3 instructions per code where DecodeGEMV
    needs 4.7-4.9 at 2 and 4 bits and 6.5 for q3f16_1 (2.5, 2.8 and 2.5 when written)."""
    target = cuda_target("sm_90")
    per_code = {}
    for name, rule in (("mma", TensorCoreGEMV()), ("decode", DecodeGEMV())):
        sch = rule.apply(dequant_matmul(mode, 4096, 11008), target)
        (res,) = [r for name_, r in kernel_resources(cuda_source(sch.mod, target), "sm_90").items()
                  if name_.startswith("main")]
        assert not res.uses_local_memory
        per_code[name] = res.instructions_per_mma_code if name == "mma" else res.instructions_per_fma
    assert 0 < per_code["mma"] < 3.0 < per_code["decode"]
