"""DequantGEMM on tensor cores (sm_80+): wmma fragments fed from the dequantized shared tile.

What runs where:

* everywhere: the schedule with its five ``tensorize`` steps skipped (``tensorize=False``:
  same tiling, shared tiles, dequantize fill, padding, fragment buffers and epilogue) runs on
  the CPU with its threads serialised and must equal the numpy reference bit for bit on exact
  data (``conftest.exact_case``); the rule's fallbacks to the CUDA-core GEMM;
* where ``Schedule.tensorize`` works (``gemm.tensorize_works``: not with apache-tvm-ffi
  0.1.15.post2, whose JSON serializer segfaults; 0.1.14.post1 works): every quantized mode
  tensorizes for static batch 16 / 32 / 512 and a symbolic token count on sm_80 and sm_90,
  the CUDA source has ``wmma::mma_sync``, and nvcc compiles it. ``tensorize`` itself checks
  that each replaced loop nest computes exactly the intrinsic's description, so together with
  the CPU check this argues the tensor-core kernel's numerics; speed needs a GPU.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm
from tvm import tirx

from desv_export.compile import cuda_target
from desv_export.modes import MODES
from desv_export.pack import dequantize
from tests.schedules.conftest import CUDA_ARCHS, exact_case, packed_params
from tvm_schedules import DequantGEMM
from tvm_schedules.analysis import match_dequant_matmul
from tvm_schedules.cpu_check import build_cpu, cuda_source, nvcc_compile
from tvm_schedules.gemm import schedule_dequant_gemm_tc, tensor_core_tile, tensorize_works
from tvm_schedules.workloads import dequant_matmul

QUANT_MODES = [m for m in MODES if MODES[m].quantized]
WMMA_CALLS = ("T.tvm_fill_fragment", "T.tvm_load_matrix_sync", "T.tvm_mma_sync",
              "T.tvm_store_matrix_sync")

needs_tensorize = pytest.mark.skipif(
    not tensorize_works(),
    reason="Schedule.tensorize segfaults in this TVM build (apache-tvm-ffi 0.1.15.post2 JSON "
           "serializer); install apache-tvm-ffi==0.1.14.post1")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


def _seq():
    return tirx.Var("seq_len", "int64")


# (label, builder, rows at run time): K = 1280 is a multiple of every BK (64; 80 for 3-bit).
SHAPES = [
    ("batch16", lambda m: dequant_matmul(m, 256, 1280, batch=16), 16),
    ("batch32", lambda m: dequant_matmul(m, 256, 1280, batch=32), 32),
    ("batch512", lambda m: dequant_matmul(m, 256, 1280, batch=512), 512),
    ("prefill_add", lambda m: dequant_matmul(m, 256, 1280, seq=_seq(), epilogue="add"), 37),
    # K = 4096 (LLaMA's hidden size): 3-bit takes BK 64, tiles starting inside a word.
    ("prefill_k4096", lambda m: dequant_matmul(m, 256, 4096, seq=_seq()), 37),
]


def _tensor_core_mod(func, arch: str = "sm_90") -> tvm.IRModule:
    sch = DequantGEMM().apply(func, cuda_target(arch), False)
    assert sch is not None
    return sch.mod


def _untensorized(func):
    info = match_dequant_matmul(func)
    sch = schedule_dequant_gemm_tc(func, info, tensor_core_tile(info), tensorize=False)
    assert sch is not None
    return sch.mod


@needs_tensorize
@pytest.mark.parametrize("mode", QUANT_MODES)
def test_every_mode_is_tensorized(mode):
    for label, build, _ in SHAPES:
        func = build(mode)
        script = _tensor_core_mod(func, "sm_80").script()
        assert all(call in script for call in WMMA_CALLS), f"{mode} {label}"
        assert script == _tensor_core_mod(func, "sm_90").script()  # one schedule for sm_80+


@needs_tensorize
def test_tensorized_is_the_cpu_checked_schedule_plus_intrinsics():
    """Skipping tensorize changes nothing but the five replaced loop nests: same buffers,
    scopes and shapes (the fragment buffers included)."""
    func = dequant_matmul("q3f16_g128asym", 256, 1280, seq=_seq(), epilogue="add")

    def allocations(mod):
        return sorted(line.strip() for line in mod.script().splitlines()
                      if "T.sblock_alloc_buffer" in line)

    plain = _untensorized(func)
    assert not any(call in plain.script() for call in WMMA_CALLS)
    assert allocations(plain) == allocations(_tensor_core_mod(func))
    assert 'scope="wmma.accumulator"' in plain.script()


@needs_tensorize
@needs_nvcc
@pytest.mark.parametrize("arch", CUDA_ARCHS)
def test_tensor_core_kernels_compile(arch, tmp_path):
    funcs = {}
    for i, (mode, func) in enumerate([
        ("q4f16_1", dequant_matmul("q4f16_1", 256, 1280, batch=16)),
        ("q3f16_1", dequant_matmul("q3f16_1", 256, 1280, seq=_seq(), epilogue="add")),
        ("q2f16_g32asym", dequant_matmul("q2f16_g32asym", 256, 1280, batch=512)),
        ("q4f16_1", dequant_matmul("q4f16_1", 256, 1280, seq=_seq(), accum_dtype="float16")),
        ("q3f16_g128asym", dequant_matmul("q3f16_g128asym", 256, 4096, seq=_seq())),
    ]):
        funcs[f"k{i}_{mode}"] = _tensor_core_mod(func, arch)["main"].with_attr(
            "global_symbol", f"k{i}")
    src = cuda_source(tvm.IRModule(funcs), cuda_target(arch))
    assert src.count("wmma::mma_sync") == len(funcs)
    assert "wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>" in src
    assert "wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, half>" in src  # NT_matmul
    assert nvcc_compile(src, arch, tmp_path / f"{arch}.cubin").stat().st_size > 0


@needs_tensorize
@pytest.mark.parametrize("tensor_cores", [True, False], ids=["wmma", "cuda_cores"])
@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_1"])
def test_padded_x_fill_is_vectorised(mode, tensor_cores):
    """Under a symbolic token count the x tile's padding test is one per 16-byte load, not
    eight scalar loads each behind its own test (what TVM's vectorizer emits when the lanes
    are fused into the row index)."""
    func = dequant_matmul(mode, 256, 4096, seq=_seq())
    sch = DequantGEMM(tensor_cores=tensor_cores).apply(func, cuda_target("sm_90"), False)
    src = cuda_source(sch.mod, cuda_target("sm_90"))
    assert "*(uint4*)(x_ptr" in src
    assert "half condval" not in src


# (mode, n, k, batch or None for a symbolic token count, rows, epilogue)
EXACT = [
    ("q4f16_1", 128, 600, 16, 16, None),           # BM 16; K padded 600 -> 640
    ("q3f16_g64asym", 128, 640, 32, 32, None),     # BM 32; 3-bit BK 80
    ("q2f16_g32asym", 128, 600, 12, 12, None),     # 12 rows padded to 16; K padded
    ("q3f16_1", 128, 640, None, 37, "add"),        # symbolic: 37 of 64 rows; residual add
    ("q4f16_g128asym", 128, 1280, None, 70, "add"),  # two row tiles, the second partial
    # 3-bit, K a multiple of 64 but not of 80: BK 64, tiles start inside words and inside
    # groups of 40 (q3f16_1) or 32 codes, unpacked a code per thread step; no K padding.
    ("q2f16_g32asym", 128, 640, 16, 16, "add"),  # half2 fill, 16-code words
    ("q3f16_1", 128, 704, None, 37, "add"),
    ("q3f16_g32asym", 64, 576, None, 70, None),
]


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_half2_fill_where_a_word_shares_one_group(mode):
    """The weight tile is filled in half2 pairs (half2.splice_half2_fill) where a word's codes
    share a group and K is not padded; the straddling 3-bit modes keep the scalar fill, and
    so does a 3-bit tile of 64 codes (it starts inside a word)."""
    def filled_in_pairs(k):
        return "dequant_fill_half2" in _untensorized(dequant_matmul(mode, 256, k, seq=_seq())).script()

    whole_groups = MODES[mode].group_size % (10 if MODES[mode].bits == 3 else 1) == 0
    assert filled_in_pairs(1280) == whole_groups
    if MODES[mode].bits == 3:
        assert not filled_in_pairs(4096)  # BK 64


@pytest.mark.parametrize("case", EXACT, ids=[f"{c[0]}-{c[3] or 'seq'}" for c in EXACT])
def test_untensorized_schedule_is_exact(case):
    mode, n, k, batch, rows, epilogue = case
    symbolic = batch is None
    func = dequant_matmul(mode, n, k, batch=1 if symbolic else batch,
                          seq=_seq() if symbolic else 1, epilogue=epilogue)
    shape = (1, rows) if symbolic else (rows, 1)
    t, x = exact_case(mode, n, k, rows, seed=7)
    args = [x.reshape(*shape, k), *packed_params(t)]
    expect = x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T
    if epilogue == "add":
        residual = np.random.default_rng(1).integers(-8, 8, (rows, n)).astype(np.float16) / 8
        args.append(residual.reshape(*shape, n))
        expect = expect + residual.astype(np.float32)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full((*shape, n), np.nan, np.float16), dev)
    build_cpu(_untensorized(func))["main"](
        *[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], out)
    np.testing.assert_array_equal(out.numpy().reshape(rows, n).astype(np.float32), expect)


def test_symbolic_batch_rows_are_exact():
    """The GEMM branch of LowBatchDispatch: rows on the batch axis ([b, 1, K]) are moved to a
    [1, rows, K] tile layout."""
    mode, n, k, rows = "q4f16_g128asym", 128, 640, 13
    func = dequant_matmul(mode, n, k, batch=tirx.Var("batch_size", "int64"))
    t, x = exact_case(mode, n, k, rows, seed=8)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full((rows, 1, n), np.nan, np.float16), dev)
    args = [x.reshape(rows, 1, k), t["q_weight"], t["q_scale"], t["q_zero"]]
    build_cpu(_untensorized(func))["main"](
        *[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], out)
    expect = x.astype(np.float32) @ dequantize(mode, t, k).astype(np.float32).T
    np.testing.assert_array_equal(out.numpy().reshape(rows, n).astype(np.float32), expect)


def test_cuda_core_path_where_tensor_cores_do_not_apply():
    prefill = dequant_matmul("q4f16_1", 256, 1280, seq=_seq())
    # No tensor cores before sm_80, or when asked not to use them.
    for rule, arch in ((DequantGEMM(), "sm_75"), (DequantGEMM(tensor_cores=False), "sm_90")):
        script = rule.apply(prefill, cuda_target(arch), False).mod.script()
        assert not any(call in script for call in WMMA_CALLS)
        assert 'scope="local"' in script  # the 4 x 4 register tile
    info = match_dequant_matmul(prefill)
    tile = tensor_core_tile(info)
    assert (tile.bm, tile.bn, tile.bk, tile.warps_m, tile.warps_n) == (64, 64, 64, 2, 2)
    # float32 activations (the llvm form) are not fp16 mma operands.
    f32 = dequant_matmul("q4f16_1", 256, 1280, seq=_seq(), x_dtype="float32",
                         out_dtype="float32")
    assert schedule_dequant_gemm_tc(f32, match_dequant_matmul(f32), tile, False) is None
    # A symbolic token count with K padded (TVM 0.27 fails to lower it): 3-bit K a multiple
    # of neither 80 nor 64.
    ragged = dequant_matmul("q3f16_1", 256, 1000, seq=_seq())
    info = match_dequant_matmul(ragged)
    assert schedule_dequant_gemm_tc(ragged, info, tensor_core_tile(info), False) is None


@pytest.mark.parametrize("k, bk", [(1280, 80), (4096, 64), (11008, 64), (576, 64), (1000, 80)])
def test_three_bit_tile_depth_avoids_padding_k(k, bk):
    """3-bit BK: 80 (whole words) where it divides K, else 64 where that divides K, so no
    LLaMA-shaped 3-bit prefill needs K padded (under a symbolic token count TVM 0.27 cannot
    lower the padded x fill)."""
    assert tensor_core_tile(match_dequant_matmul(
        dequant_matmul("q3f16_1", 256, k, seq=_seq()))).bk == bk
