"""tvm_schedules/resources.py and benchmarks/kernel_audit.py: what nvcc makes of a kernel."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import tvm

from desv_export.compile import cuda_target
from tvm_schedules import DecodeGEMV
from tvm_schedules.cpu_check import cuda_source
from tvm_schedules.resources import (KernelResources, cuobjdump, kernel_resources, parse_ptxas_info,
                                     parse_sass)
from tvm_schedules.workloads import dequant_matmul

ROOT = Path(__file__).resolve().parents[2]
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")

# Three kernels whose footprints are known by construction: a dynamically indexed local array
# (a stack frame), an int -> float16 conversion, and a 16-byte load in a loop.
SOURCE = r"""
#include <cuda_fp16.h>
extern "C" __global__ void __launch_bounds__(32) local_array(float* out, const int* idx) {
  float a[256];  // too many to select from: a stack frame
  for (int i = 0; i < 256; ++i) a[i] = out[i * 32 + threadIdx.x];
  out[threadIdx.x] = a[idx[threadIdx.x] & 255];
}
extern "C" __global__ void __launch_bounds__(32) int_to_half(half* out, const unsigned* in) {
  out[threadIdx.x] = __uint2half_rn(in[threadIdx.x] & 15u);
}
extern "C" __global__ void __launch_bounds__(32) wide_loop(float* out, const uint4* in, int n) {
  float acc = 0.f;
#pragma unroll 1
  for (int i = 0; i < n; ++i) {
    uint4 w = __ldg(in + i * 32 + threadIdx.x);
    acc = fmaf(__uint_as_float(w.x), __uint_as_float(w.y), acc);
  }
  out[threadIdx.x] = acc;
}
"""


def test_ptxas_info_is_read_per_kernel():
    text = """ptxas info    : Compiling entry function 'k0001_kernel' for 'sm_90'
ptxas info    : Function properties for k0001_kernel
    8 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 80 registers, used 0 barriers, 8 bytes cumulative stack size, 384 bytes cmem[0]
ptxas info    : Compiling entry function 'k0002_kernel' for 'sm_90'
ptxas info    : Function properties for k0002_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 8192 bytes smem, 384 bytes cmem[0]
"""
    k = parse_ptxas_info(text)
    assert (k["k0001_kernel"].registers, k["k0001_kernel"].stack_bytes, k["k0001_kernel"].spill_bytes) == (80, 8, 24)
    assert k["k0001_kernel"].uses_local_memory and not k["k0002_kernel"].uses_local_memory
    assert (k["k0002_kernel"].registers, k["k0002_kernel"].shared_bytes) == (32, 8192)


def test_main_loop_is_the_longest_backward_branch():
    text = """
		Function : k_kernel
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0020*/                   FFMA R8, R4, R5, R8 ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   FFMA R8, R4, R5, R8 ;
        /*0050*/                   HADD2 R9, R4.H0_H0, R5.H0_H0 ;
        /*0060*/               @P1 BRA 0x40 ;
        /*0070*/                   EXIT ;
"""
    (count, mix, loaded), = parse_sass(text).values()
    assert count == 3 and mix == {"LDG": 1, "FFMA": 1, "BRA": 1}
    assert loaded == 16  # one LDG.E.128 in the loop


def test_occupancy():
    """CUDA's occupancy rules: registers allocated 256 a warp, shared memory plus 1 KB a block."""
    k = KernelResources("k", registers=40, threads_per_block=128)
    assert k.blocks_per_sm("sm_90") == 12  # 1280 registers a warp: 51 warps, 12 blocks of 4
    assert KernelResources("k", registers=95, threads_per_block=128).blocks_per_sm("sm_90") == 5
    assert KernelResources("k", registers=32, threads_per_block=128).blocks_per_sm("sm_90") == 16
    smem = KernelResources("k", registers=32, threads_per_block=128, shared_bytes=22016)
    assert smem.blocks_per_sm("sm_80") == 7 and smem.blocks_per_sm("sm_90") == 10
    assert KernelResources("k", registers=32).blocks_per_sm("sm_90") == 0  # no launch bounds


@needs_nvcc
def test_footprints_of_known_kernels():
    k = kernel_resources(SOURCE, "sm_90")
    assert k["local_array"].stack_bytes > 0
    assert not k["int_to_half"].uses_local_memory and k["int_to_half"].int_to_half == 1
    assert k["wide_loop"].widest_load == 128 and k["wide_loop"].int_to_half == 0
    assert k["wide_loop"].threads_per_block == 32
    if cuobjdump():
        assert k["wide_loop"].loop_mix["FFMA"] == 1 and k["wide_loop"].loop_mix["LDG"] == 1
        assert k["wide_loop"].instructions_per_fma == k["wide_loop"].loop_instructions
        # ptxas narrows the PTX's 16-byte load to the 8 bytes the FMA reads (LDG.E.64)
        assert k["wide_loop"].loop_load_bytes == 8


@needs_nvcc
def test_decode_gemv_loads_16_bytes_and_keeps_to_registers():
    """The properties docs/schedules.md claims for DecodeGEMV at 4 and 2 bits."""
    target = cuda_target("sm_90")
    funcs = {}
    for i, mode in enumerate(("q4f16_1", "q2f16_g128asym")):
        sch = DecodeGEMV().apply(dequant_matmul(mode, 256, 1024), target)
        funcs[f"k{i}"] = sch.mod["main"].with_attr("global_symbol", f"k{i}")
    k = kernel_resources(cuda_source(tvm.IRModule(funcs), target), "sm_90")
    for name in ("k0_kernel", "k1_kernel"):
        assert k[name].widest_load == 128, k[name]
        assert not k[name].uses_local_memory, k[name]


@needs_nvcc
def test_kernel_audit_reports_every_kernel(tmp_path):
    spec = importlib.util.spec_from_file_location("kernel_audit", ROOT / "benchmarks/kernel_audit.py")
    audit = importlib.util.module_from_spec(spec)
    sys.modules["kernel_audit"] = audit
    spec.loader.exec_module(audit)
    rows = audit.audit("sm_90", ["tiny"], ["q4f16_g128asym"], ["b1"], log=lambda *_: None)
    assert len(rows) == 15  # 5 projections: ours, dlight's and the tensor-core GEMV
    assert {r["schedule"] for r in rows} == {"ours", "dlight", "ours-tc"}
    assert all(r["registers"] > 0 and r["global_loads"] for r in rows)
    js, md = audit.write(rows, "sm_90", tmp_path)
    text = md.read_text()
    assert "| q4f16_g128asym | b1 |" in text and text.count("| tiny |") == 15
    assert audit.main(["--modes", "q9f16_1"]) == 2
