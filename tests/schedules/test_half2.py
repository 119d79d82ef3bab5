"""DecodeGEMV's half2 body (tvm_schedules/half2.py): used for every mode, exact, and paired by nvcc."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm

from desv_export.compile import cuda_target
from desv_export.modes import MODES
from desv_export.pack import dequantize
from tests.schedules.conftest import exact_case, packed_params
from tvm_schedules import DecodeGEMV
from tvm_schedules.cpu_check import build_cpu, cuda_source
from tvm_schedules.resources import cuobjdump, kernel_resources
from tvm_schedules.workloads import dequant_matmul

QUANT_MODES = [m for m in MODES if MODES[m].quantized]


def _decode(mode: str, n: int, k: int, epilogue=None):
    return DecodeGEMV().apply(dequant_matmul(mode, n, k, epilogue=epilogue), cuda_target("sm_90"))


THREE_BIT = ["q3f16_1", "q3f16_g32asym", "q3f16_g64asym", "q3f16_g128asym"]


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_half2_body_is_used_for_every_mode(mode):
    script = _decode(mode, 64, 2048).mod["main"].script()
    assert "dequant_dot_half2" in script
    # Straddling 3-bit words: two words a lane and step, and lane masks bound before the K loop.
    assert ("lane_masks" in script) == (MODES[mode].bits == 3 and MODES[mode].group_size % 10 != 0)


def _run(mode: str, n: int, k: int, x: np.ndarray, t: dict, residual: np.ndarray) -> np.ndarray:
    sch = _decode(mode, n, k, epilogue="add")
    assert "dequant_dot_half2" in sch.mod["main"].script()
    args = [x.reshape(1, 1, k), *packed_params(t)]
    args.append(residual.reshape(1, 1, n))
    out = tvm.runtime.tensor(np.zeros((1, 1, n), np.float16))
    build_cpu(sch.mod["main"])["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
    return out.numpy().reshape(1, n)


@pytest.mark.parametrize("mode", ["q4f16_1", "q4f16_g128asym", "q2f16_g32asym", "q2f16_g128asym", *THREE_BIT])
# whole steps (1280 is 2 of 640 codes, 4096 is 4 of 1024); K tails: inside the last step,
# in the middle of a 10-code word (4096 and 11008 at 3 bits), and K shorter than one step (320)
@pytest.mark.parametrize("k", [4096, 1104, 1280, 320])
def test_half2_decode_is_exact(mode, k):
    """Against the float32 numpy reference, bit for bit (exact data), residual add included."""
    n = 64
    t, x = exact_case(mode, n, k, 1, seed=3)
    residual = np.random.default_rng(1).integers(-8, 8, (1, n)).astype(np.float16) / 8
    expect = x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T + residual.astype(np.float32)
    np.testing.assert_array_equal(_run(mode, n, k, x, t, residual).astype(np.float32), expect)


@pytest.mark.parametrize("mode", THREE_BIT)
@pytest.mark.parametrize("k", [2560, 11008])
def test_half2_3bit_every_code_counts(mode, k):
    """Dense x (+-1 at every K index), so a code read from the wrong group, pair or word shows
    wherever it sits: every product is a multiple of 1/8 and the sums stay far below 2^21, so
    float32 accumulation is exact in any order and the result is the reference rounded once."""
    n = 64
    t, _ = exact_case(mode, n, k, 1, seed=5)
    x = np.random.default_rng(6).choice(np.array([-1, 1], np.float16), (1, k))
    residual = np.zeros((1, n), np.float16)
    expect = (x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T).astype(np.float16)
    np.testing.assert_array_equal(_run(mode, n, k, x, t, residual), expect)


@pytest.mark.skipif(shutil.which("nvcc") is None or cuobjdump() is None,
                    reason="needs nvcc and cuobjdump (pip install -e '.[audit]')")
def test_nvcc_pairs_the_half2_arithmetic():
    """No local memory, HMUL2s for two codes, LEA.HIs that shift and add the magic, and the
    instructions per code of the main loop well below the scalar form on the same 7B shapes
    (4-bit 7.6, q3f16_1 8.9, 3-bit g128 22; the loop holds the K-tail step's body too where
    K has a tail, as 4096 at 3 bits does)."""
    bounds = {"q4f16_1": 5.2, "q2f16_g128asym": 5.2, "q3f16_1": 7, "q3f16_g128asym": 8}
    funcs = {f"k{i}": _decode(mode, 256, 4096).mod["main"].with_attr("global_symbol", f"k{i}")
             for i, mode in enumerate(bounds)}
    k = kernel_resources(cuda_source(tvm.IRModule(funcs), cuda_target("sm_90")), "sm_90")
    for i, (mode, bound) in enumerate(bounds.items()):
        res = k[f"k{i}_kernel"]
        assert not res.uses_local_memory, (mode, res)
        if MODES[mode].bits != 3:
            assert res.loop_mix["HMUL2"] * 2 == res.loop_mix["FFMA"], (mode, res.loop_mix)
        assert res.loop_mix["HMUL2"] * 3 > res.loop_mix["FFMA"], (mode, res.loop_mix)
        # the code's shift and the 0x6400 magic's add fused (Pairs.pair): one LEA.HI a pair
        assert res.loop_mix.get("LEA", 0) * 4 > res.loop_mix["FFMA"], (mode, res.loop_mix)
        assert res.instructions_per_fma < bound, (mode, res.instructions_per_fma)
