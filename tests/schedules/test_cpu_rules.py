"""The llvm rules (``tvm_schedules.cpu``): which rule takes which kernel, and exact results.

The data of ``conftest.exact_case`` make every float32 partial sum exact, so the GEMV's lane
partial sums, the GEMM's tiles and padding, and the embedding gather must all equal the numpy
reference (``desv_export.pack.dequantize``) bit for bit, for every export mode. The GEMV is
checked in all its forms: the table-lookup kernel of this host (16 lanes with AVX-512, 8 with
AVX2), the AVX2 one on an AVX2 target (which every x86 host of ours runs), and the schedule
form, which a target without AVX2 gets (Ivy Bridge).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te, tirx
from tvm.s_tir import dlight as dl

from desv_export.compile import host_cpu_target
from desv_export.compile import cuda_target
from desv_export.modes import MODES
from desv_export.pack import dequantize
from tests.schedules.conftest import exact_case, first_rule, packed_params
from tvm_schedules.cpu import CPUInlineSpatial, CPUTiledGEMM, CPUVectorGEMV, cpu_rules
from tvm_schedules.cpu.gemv import PERMUTE, PERMUTE2, PERMUTE_AVX2, LutGEMV, lut_lanes
from tvm_schedules.cpu.match import match_matmul
from tvm_schedules.workloads import dequant_matmul, dequant_take

QUANT_MODES = [m for m in MODES if MODES[m].quantized]
LLVM = host_cpu_target()
# The same CPU without AVX-512 (x86 hosts run AVX2 code), and without AVX2 (F16C, no FMA).
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "mtriple": str(LLVM.attrs["mtriple"])})
NO_AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "ivybridge",
                             "mtriple": str(LLVM.attrs["mtriple"])})
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "mtriple": str(LLVM.attrs["mtriple"])})

# (id, batch, symbolic seq?, run-time rows, n, k, epilogue, expected rule)
CASES = [
    ("decode", 1, False, 1, 96, 640, None, CPUVectorGEMV),
    ("decode_add", 1, False, 1, 64, 600, "add", CPUVectorGEMV),  # K tail, residual epilogue
    # Parallel tasks with a partial last one, 3 rows past the last tile, K with whole blocks
    # of groups and a tail chunk (3-bit: short of words).
    ("decode_ragged", 1, False, 1, 203, 1000, "add", CPUVectorGEMV),
    ("prefill", 1, True, 37, 80, 600, "add", CPUTiledGEMM),  # rows padded to 40; N tail
    ("static16", 16, False, 1, 64, 256, None, CPUTiledGEMM),  # rows a multiple of the tile
]


def _schedule(func):
    return first_rule(cpu_rules(), func, LLVM)


def _uses_lut(mod) -> bool:
    script = mod["main"].script()
    return any(p in script for p in (PERMUTE, PERMUTE2, PERMUTE_AVX2))


def _lut_expected(target) -> bool:
    """Where the table-lookup kernel is built (every mode): AVX-512 and AVX2 targets."""
    return lut_lanes(target) is not None


@pytest.mark.parametrize("mode", QUANT_MODES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpu_matmul_is_exact(mode, case):
    _check_exact(mode, case, LLVM)


@pytest.mark.parametrize("mode", ["q4f16_1", "q4f16_g128asym", "q3f16_1", "q3f16_g32asym",
                                  "q3f16_g64asym", "q3f16_g128asym", "q2f16_g32asym",
                                  "q2f16_g64asym"])
@pytest.mark.parametrize("case", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_cpu_gemv_on_avx2_is_exact(mode, case):
    """The 8-lane table-lookup kernel: 4-bit with two table registers and a blend on the
    code's bit 3; 3-bit chunks of 4 words, whose vectors across two groups blend two tables."""
    _check_exact(mode, case, AVX2)


@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_1", "q3f16_g128asym", "q2f16_g64asym"])
@pytest.mark.parametrize("case", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_cpu_gemv_without_avx2_is_exact(mode, case):
    _check_exact(mode, case, NO_AVX2)


def _check_exact(mode, case, target):
    _, batch, symbolic, rows, n, k, epilogue, rule = case
    seq = tirx.Var("seq_len", "int64") if symbolic else 1
    func = dequant_matmul(mode, n, k, batch=batch, seq=seq, epilogue=epilogue,
                          x_dtype="float32", out_dtype="float32")
    name, mod = first_rule(cpu_rules(), func, target)
    assert name == rule.__name__
    if rule is CPUVectorGEMV:  # the table-lookup kernel exactly where it is written for
        assert _uses_lut(mod) == _lut_expected(target)
    lib = tvm.compile(mod, target=target)
    m = batch * rows
    t, x16 = exact_case(mode, n, k, m)
    x = x16.astype(np.float32)
    expect = x @ dequantize(mode, t, k).astype(np.float32).T
    args = [x.reshape(batch, rows, k), *packed_params(t)]
    if epilogue == "add":
        residual = np.random.default_rng(1).integers(-8, 8, (m, n)).astype(np.float32) / 8
        args.append(residual.reshape(batch, rows, n))
        expect = expect + residual
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full((batch, rows, n), np.nan, np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], out)
    np.testing.assert_array_equal(out.numpy().reshape(m, n), expect)


@pytest.mark.parametrize("target", [LLVM, AVX2], ids=["host", "avx2"])
@pytest.mark.parametrize("case", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_cpu_gemv_of_a_float16_weight_is_exact(case, target):
    """The streamed row-after-row form (q0f16, and the float16 tied lm_head of the asymmetric
    modes): K of two 16-lane chains (640), of one with a tail (600, 1000), a partial last task
    (203 rows), the residual epilogue. Weights are multiples of 1/8 below 2, x is
    +-1 on at most 40 columns: every partial sum is exact, so the result must be too."""
    _, _, _, _, n, k, epilogue, _ = case
    func = dequant_matmul("q0f16", n, k, epilogue=epilogue, x_dtype="float32", out_dtype="float32")
    name, mod = first_rule(cpu_rules(), func, target)
    assert name == "CPUVectorGEMV"
    rng = np.random.default_rng(3)
    w = (rng.integers(-15, 16, (n, k)) / 8).astype(np.float16)
    _, x16 = exact_case("q4f16_1", 1, k, 1)
    x = x16.astype(np.float32)
    expect = x @ w.astype(np.float32).T
    args = [x.reshape(1, 1, k), w]
    if epilogue == "add":
        residual = rng.integers(-8, 8, (1, n)).astype(np.float32) / 8
        args.append(residual.reshape(1, 1, n))
        expect = expect + residual
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full((1, 1, n), np.nan, np.float32), dev)
    lib = tvm.compile(mod, target=target)
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], out)
    np.testing.assert_array_equal(out.numpy().reshape(1, n), expect)


@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_1", "q2f16_g128asym"])
def test_cpu_embedding_gather_is_exact(mode):
    vocab, hidden = 50, 96
    name, mod = _schedule(dequant_take(mode, vocab, hidden, seq=tirx.Var("seq", "int64")))
    assert name == "CPUInlineSpatial"
    lib = tvm.compile(mod, target=LLVM)
    t, _ = exact_case(mode, vocab, hidden, 1)
    ids = np.array([3, 0, 49, 3, 17], np.int32)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((len(ids), hidden), np.float16), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in [ids, *packed_params(t)]], out)
    np.testing.assert_array_equal(out.numpy(), dequantize(mode, t, hidden)[ids])


def test_cpu_rules_decline_other_targets_and_kernels():
    func = dequant_matmul("q4f16_1", 64, 128, x_dtype="float32", out_dtype="float32")
    for rule in cpu_rules():
        assert rule.apply(func, cuda_target("sm_90"), False) is None
    # A reduction that is not a matmul (a row sum) is nobody's.
    x = te.placeholder((4, 64), "float32", name="x")
    r = te.reduce_axis((0, 64), name="r")
    row_sum = te.create_prim_func([x, te.compute((4,), lambda i: te.sum(x[i, r], axis=r))])
    assert all(rule.apply(row_sum, LLVM, False) is None for rule in cpu_rules())


def test_apply_default_schedule_marks_every_linear_scheduled():
    """The pipeline's pass form: each matmul PrimFunc comes out with ``tirx.is_scheduled``."""
    funcs = {
        "decode": dequant_matmul("q3f16_g64asym", 64, 200, x_dtype="float32", out_dtype="float32"),
        "prefill": dequant_matmul("q3f16_g64asym", 64, 200, seq=tirx.Var("s", "int64"),
                                  x_dtype="float32", out_dtype="float32"),
    }
    mod = tvm.IRModule({name: f.with_attr("target", LLVM).with_attr("global_symbol", name)
                        for name, f in funcs.items()})
    out = dl.ApplyDefaultSchedule(*cpu_rules())(mod)
    for name in funcs:
        assert out[name].attrs.get("tirx.is_scheduled")
    assert isinstance(cpu_rules()[-1], CPUInlineSpatial)


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_float32_dequantize_is_float16_exact(mode):
    """The llvm build's float32 dequantize equals the float16 grid bit for bit, with random
    scales whose products do round in float16 (a missing rounding would show)."""
    from desv_export.model.dequantize import dequantize_weight
    from tvm_schedules.workloads import random_quantized, weight_placeholders

    n, k = 48, 200
    params = weight_placeholders(MODES[mode], n, k)
    q_zero = params[2] if len(params) == 3 else None
    w = dequantize_weight(MODES[mode], params[0], params[1], q_zero, k, "float32")
    lib = tvm.compile(te.create_prim_func([*params, w]), target=LLVM)
    t = random_quantized(mode, n, k, np.random.default_rng(3))
    expect = dequantize(mode, t, k)
    assert expect.dtype == np.float16
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((n, k), np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in packed_params(t)], out)
    got = out.numpy()
    np.testing.assert_array_equal(got, expect.astype(np.float32))
    # Float32 arithmetic without the float16 rounding differs on these data.
    assert not np.array_equal(got, _unrounded(mode, t, k))


def _unrounded(mode, t, k):
    from desv_export.pack import unpack_codes

    m = MODES[mode]
    codes = unpack_codes(t["q_weight"], m.bits, k).astype(np.float32)
    g = np.arange(k) // m.group_size
    groups = t["q_scale"].shape[1]
    zero = (unpack_codes(t["q_zero"], m.bits, groups)[:, g].astype(np.float32) if "q_zero" in t
            else np.float32(m.max_int))
    return (codes - zero) * t["q_scale"].astype(np.float32)[:, g]


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_gemv_lut_matches_every_mode(mode):
    """The table-lookup kernel recognises every export mode's dequantize (K = 576: SmolLM2),
    in both its forms; AVX2 chunks are one word (2, 4 bits) or four (3 bits: 40 codes)."""
    info = match_matmul(dequant_matmul(mode, 64, 576, x_dtype="float32", out_dtype="float32"))
    lut = LutGEMV.match(info)
    assert lut is not None
    assert (lut.bits, lut.group, lut.q_zero is None) == (
        MODES[mode].bits, MODES[mode].group_size, MODES[mode].symmetric)
    avx2 = LutGEMV.match(info, lanes=8)
    epw = MODES[mode].elems_per_word
    assert (avx2.lanes, avx2.chunk.codes) == (8, 4 * epw if epw == 10 else epw)
    assert sorted(avx2.chunk.code(v, lane) for v in range(avx2.chunk.vectors)
                  for lane in range(8)) == list(range(avx2.chunk.codes))


@pytest.mark.parametrize("lanes", [16, 8])
@pytest.mark.parametrize("mode", QUANT_MODES)
def test_gemv_lut_survives_the_pipelines_index_narrowing(mode, lanes):
    """compile.py runs ``ForceNarrowIndexToInt32`` on the scheduled llvm functions; an int32
    vector ``&`` in the AVX2 kernel's blend once made it fail (TVM 0.27)."""
    target = {16: AVX512, 8: AVX2}[lanes]
    mod = CPUVectorGEMV().apply(dequant_matmul(mode, 96, 576, x_dtype="float32",
                                               out_dtype="float32"), target, False).mod
    assert _uses_lut(mod) == _lut_expected(target)
    tirx.transform.ForceNarrowIndexToInt32()(mod)


def test_lut_lanes_follow_the_target():
    assert (lut_lanes(AVX512), lut_lanes(AVX2), lut_lanes(NO_AVX2)) == (16, 8, None)


def test_gemv_lut_declines_another_dequantize():
    """A dequantize that is not the model's formula (here without the float16 rounding) keeps
    the schedule form, which computes whatever the function says."""
    from tvm_schedules.workloads import weight_placeholders

    n, k = 64, 256
    q_weight, q_scale = weight_placeholders(MODES["q4f16_1"], n, k)
    x = te.placeholder((1, 1, k), "float32", name="x")
    codes = te.compute((n, k), lambda i, j: ((q_weight[i, j // 8] >> (j % 8 * 4).astype("uint32"))
                                             & tirx.const(15, "uint32")).astype("float32"),
                       name="unpack")
    w = te.compute((n, k), lambda i, j: (codes[i, j] - 7.0) * q_scale[i, j // 32].astype("float32"),
                   name="dequantize")
    r = te.reduce_axis((0, k), name="k")
    out = te.compute((1, 1, n), lambda b, s, j: te.sum(x[b, s, r] * w[j, r], axis=r), name="matmul")
    func = te.create_prim_func([x, q_weight, q_scale, out])
    info = match_matmul(func)
    assert info is not None and info.epw == 8
    assert LutGEMV.match(info) is None
    assert not _uses_lut(CPUVectorGEMV().apply(func, LLVM, False).mod)


@pytest.mark.parametrize("mode,expect", [("q3f16_g128asym", True), ("q3f16_g32asym", True),
                                         ("q3f16_1", False), ("q4f16_g128asym", False),
                                         ("q2f16_g64asym", False)])
def test_gemv_stages_3bit_groups_that_straddle_words(mode, expect):
    """The staged GEMV (exercised by test_cpu_matmul_is_exact) is taken exactly where a word's
    codes can fall in two groups."""
    from tvm_schedules.cpu.gemv import staged
    from tvm_schedules.cpu.match import match_matmul

    info = match_matmul(dequant_matmul(mode, 64, 640, x_dtype="float32", out_dtype="float32"))
    assert info.epw == MODES[mode].elems_per_word and info.group == MODES[mode].group_size
    assert staged(info) is expect


@pytest.mark.parametrize("mode,expect", [("q3f16_g128asym", True), ("q3f16_g64asym", True),
                                         ("q3f16_g32asym", False), ("q3f16_1", False),
                                         ("q4f16_g128asym", False), ("q2f16_g64asym", False)])
def test_gemv_lut_shares_3bit_group_tables(mode, expect):
    """Groups of 64 and 128 at 3 bits get one table per group, read across chunks, and the
    chunk geometry whose lanes still cover each of the chunk's 80 codes exactly once."""
    from tvm_schedules.cpu.gemv import LANES, Chunk

    lut = LutGEMV.match(match_matmul(dequant_matmul(mode, 64, 576, x_dtype="float32",
                                                    out_dtype="float32")))
    assert lut.shared_tables() is expect and lut.chunk.quads is expect
    for chunk in (Chunk(10, 8), Chunk(10, 8, quads=True)):
        codes = sorted(chunk.code(v, lane) for v in range(chunk.vectors) for lane in range(LANES))
        assert codes == list(range(chunk.codes))
