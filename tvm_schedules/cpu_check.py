"""Run a CUDA-scheduled PrimFunc on the CPU, to check a schedule's numerics without a GPU.

A GPU schedule binds loops to ``blockIdx`` / ``threadIdx``; LLVM cannot run those. Turning
every thread-bound loop back into a serial loop (nothing else changes: same tiling, caches,
shared/local buffers and their regions, unpacking, reduction order per lane) gives a program a
CPU can run. It is faithful for our rules because they never rely on two threads seeing each
other's writes except through a shared tile that every (now serial) thread iteration refills
in full before reading it, and through the warp reduction, which becomes an ordinary serial
reduction over the lane loop. What it cannot check is what only hardware does: warp shuffles,
``__syncthreads`` placement, alignment of vector loads, and speed. Those are checked by
compiling the CUDA source with nvcc (``cuda_source`` / ``nvcc_compile``) and, on a GPU, by
benchmarks/kernels.py.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import tvm
from tvm import tirx
from tvm.script import parser

from desv_export.engine import cuda_jit

_THREAD_BINDING = re.compile(r'T\.thread_binding\((.*?), thread="[^"]*"\)')


def serialize_threads(mod: tvm.IRModule) -> tvm.IRModule:
    """The same scheduled module with every ``T.thread_binding`` loop made ``T.serial``."""
    text = mod.script()
    text, count = _THREAD_BINDING.subn(r"T.serial(\1)", text)
    if count == 0:
        raise ValueError("module has no thread-bound loops: is it a GPU schedule?")
    return parser.parse(text, s_tir=True)


def build_cpu(func_or_mod) -> tvm.runtime.Module:
    """Compile a scheduled (GPU) PrimFunc for LLVM with its threads serialised."""
    mod = func_or_mod if isinstance(func_or_mod, tvm.IRModule) else tvm.IRModule(
        {"main": func_or_mod})
    return tvm.compile(serialize_threads(mod), target="llvm")


def cuda_source(mod: tvm.IRModule, target: tvm.target.Target) -> str:
    """CUDA C++ of a scheduled module, generated without a GPU (TVM's codegen needs none)."""
    return cuda_jit.library_cuda_source(tvm.compile(mod, target=target).mod)


def nvcc_compile(source: str, arch: str, out: Path | None = None, fmt: str = "cubin") -> Path:
    """Compile CUDA source to a cubin (or fatbin) with nvcc for ``arch``; raises on error.

    This is what proves the generated code is valid CUDA for that architecture (vector types,
    shuffles, half arithmetic) on a machine without a GPU.
    """
    out = out or Path(tempfile.mkdtemp(prefix="desv_nvcc_")) / f"kernel.{fmt}"
    return cuda_jit.nvcc(source, arch, out, fmt)


def has_thread_bindings(func: tirx.PrimFunc) -> bool:
    return "T.thread_binding(" in func.script()
