"""The scheduled kernels compute what the unscheduled ones do, checked on the CPU.

A CUDA schedule cannot run on LLVM, so ``cpu_check.build_cpu`` turns its thread-bound loops
into serial loops and runs the otherwise identical loop nest (see that module for why this is
faithful and what it cannot see). With the exact data of ``conftest.exact_case`` every result
must equal the float32 numpy reference (``desv_export.pack.dequantize``) bit for bit; a wrong
word, shift, group or zero index changes it.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import tirx

from desv_export.compile import cuda_target
from desv_export.modes import MODES
from desv_export.pack import dequantize
from tests.schedules.conftest import exact_case, first_rule, packed_params, undispatched_rules
from tvm_schedules.cpu_check import build_cpu, serialize_threads
from tvm_schedules.workloads import dequant_matmul, dequant_take, random_quantized

QUANT_MODES = [m for m in MODES if MODES[m].quantized]
TARGET = cuda_target("sm_90")


def _schedule(func, target=TARGET):
    return first_rule(undispatched_rules(), func, target)


def _run(lib, args, out_shape):
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float16), dev)
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], out)
    return out.numpy()


# (batch, seq symbolic?, run-time rows, n, k, epilogue): decode, low batch, prefill GEMM
# (static-batch GEMM is checked in test_gemm_static_batch_is_exact).
CASES = [
    ("decode", 1, False, 1, 128, 640, None),
    ("batch4", 4, False, 1, 128, 640, None),
    ("prefill", 1, True, 37, 128, 600, "add"),  # 37 tokens: a partial 64-row tile; K tail
]


@pytest.mark.parametrize("mode", QUANT_MODES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_scheduled_matmul_is_exact(mode, case):
    _, batch, symbolic, rows, n, k, epilogue = case
    seq = tirx.Var("seq_len", "int64") if symbolic else 1
    func = dequant_matmul(mode, n, k, batch=batch, seq=seq, epilogue=epilogue)
    _, mod = _schedule(func)
    lib = build_cpu(mod)
    m = batch * rows
    t, x = exact_case(mode, n, k, m)
    args = [x.reshape(batch, rows, k), *packed_params(t)]
    expect = x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T
    if epilogue == "add":
        residual = np.random.default_rng(1).integers(-8, 8, (m, n)).astype(np.float16) / 8
        args.append(residual.reshape(batch, rows, n))
        expect = expect + residual.astype(np.float32)
    got = _run(lib, args, (batch, rows, n)).reshape(m, n)
    np.testing.assert_array_equal(got.astype(np.float32), expect)


@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_g64asym", "q2f16_g32asym"])
def test_gemm_static_batch_is_exact(mode):
    """The CUDA-core GEMM (sm_75; sm_80+ takes tensor cores, see test_gemm_tensorcore.py)."""
    n, k, batch = 128, 640, 16
    name, mod = _schedule(dequant_matmul(mode, n, k, batch=batch), cuda_target("sm_75"))
    assert name == "DequantGEMM"
    t, x = exact_case(mode, n, k, batch, seed=5)
    got = _run(build_cpu(mod), [x.reshape(batch, 1, k), *packed_params(t)], (batch, 1, n))
    expect = x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T
    np.testing.assert_array_equal(got.reshape(batch, n).astype(np.float32), expect)


@pytest.mark.parametrize("mode,n,k", [
    ("q3f16_g32asym", 100, 224),   # 23 words a row: single-word loads; N not a tile multiple
    ("q3f16_1", 96, 600),          # MLC 3-bit, 40-code groups, 15 groups
    ("q2f16_g128asym", 98, 1000),  # K tail inside a group, ragged N
])
def test_decode_ragged_shapes_are_exact(mode, n, k):
    _, mod = _schedule(dequant_matmul(mode, n, k))
    t, x = exact_case(mode, n, k, 1, seed=3)
    got = _run(build_cpu(mod), [x.reshape(1, 1, k), *packed_params(t)], (1, 1, n))
    expect = x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T
    np.testing.assert_array_equal(got.reshape(1, n).astype(np.float32), expect)


@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_1", "q3f16_g128asym", "q2f16_g64asym"])
def test_take_gathers_dequantized_rows(mode):
    vocab, hidden = 50, 600
    func = dequant_take(mode, vocab, hidden, seq=tirx.Var("seq_len", "int64"))
    name, mod = _schedule(func)
    assert name == "DequantTake"
    t = random_quantized(mode, vocab, hidden, np.random.default_rng(2))
    ids = np.array([3, 0, 49, 3, 17], np.int32)
    got = _run(build_cpu(mod), [ids, *packed_params(t)], (len(ids), hidden))
    np.testing.assert_array_equal(got, dequantize(mode, t, hidden)[ids])


def test_realistic_data_matches_unscheduled_within_fp16_rounding():
    """Random scales and dense x: summation order differs, so compare with a tolerance to the
    unscheduled function run on the CPU (both accumulate in float16, as MLC-LLM does)."""
    mode, n, k = "q4f16_g128asym", 128, 1024
    for batch in (1, 4):
        func = dequant_matmul(mode, n, k, batch=batch)
        _, mod = _schedule(func)
        rng = np.random.default_rng(4)
        t = random_quantized(mode, n, k, rng)
        x = rng.uniform(-1, 1, (batch, 1, k)).astype(np.float16)
        args = [x, *packed_params(t)]
        got = _run(build_cpu(mod), args, (batch, 1, n)).astype(np.float32)
        ref = _run(tvm.compile(tvm.IRModule({"main": func}), target="llvm"), args,
                   (batch, 1, n)).astype(np.float32)
        exact = x.reshape(batch, k).astype(np.float32) @ dequantize(mode, t, k).astype(
            np.float32).T
        scale = np.abs(exact).max()
        assert np.abs(got - ref).max() <= 0.01 * scale
        # ours is no worse than the unscheduled float16 sum against the float32 truth
        assert np.abs(got.reshape(batch, n) - exact).max() <= 2 * max(
            np.abs(ref.reshape(batch, n) - exact).max(), 1e-3 * scale)


def test_serialize_threads_removes_every_binding():
    _, mod = _schedule(dequant_matmul("q4f16_1", 128, 640))
    assert "T.thread_binding(" in mod.script()
    assert "T.thread_binding(" not in serialize_threads(mod).script()
    with pytest.raises(ValueError):
        serialize_threads(tvm.IRModule({"main": dequant_matmul("q4f16_1", 128, 640)}))
