"""The model libraries a benchmark runs: reused when one already fits the run, else compiled.

A GPU machine may carry only TVM's runtime (no libtvm_compiler.so), so the libraries are
compiled elsewhere (``bench --compile-only --target cuda --arch sm_90``: no GPU needed) and
the measuring run reuses them. Whether a library fits is read from its ``_metadata`` with the
runtime alone; ``desv_export.compile`` (TVM's compiler) is imported only to build one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import tvm
import tvm_ffi
from tvm.runtime.vm import VirtualMachine

from ..engine import cuda_jit
from ..engine.library import cuda_loader_stand_in, runtime_only
from ..engine.weight_dir import check_params_match, read_weight_dir
from ..errors import UserError

# What the benchmark compiles: compile's defaults, named here so a reused library is checked
# against them (float32 compute on the CPU, float16 on the GPU; our CUDA schedules).
DTYPES = {"llvm": "float32", "cuda": "float16"}
SCHEDULES = "ours"


def library_path(libs_dir: Path, mode: str, target: str) -> Path:
    return Path(libs_dir) / f"{mode}-{target}.so"


def read_metadata(lib: Path) -> dict:
    """A library's ``_metadata`` (JSON), read with TVM's runtime only, whatever its target."""
    with cuda_loader_stand_in(lambda _serialized: tvm_ffi.system_lib()):  # an empty module
        module = tvm.runtime.load_module(str(lib))
    return json.loads(VirtualMachine(module, tvm.cpu(0))["_metadata"]())


def misfit(lib: Path, weight_dir: Path, *, target: str, arch: str | None, context_window_size: int,
           prefill_chunk_size: int) -> str | None:
    """Why ``lib`` cannot serve this run (absent, another target, too small, other weights), or
    None when it can. A larger context window or chunk is accepted: it holds the run."""
    if not lib.is_file():
        return "it does not exist"
    try:
        meta = read_metadata(lib)
    except Exception as e:  # noqa: BLE001 - any load failure means: build it again
        return f"its metadata cannot be read ({(str(e).splitlines() or [type(e).__name__])[0]})"
    ours = meta.get("desv_export", {})
    built = f"{ours.get('target')}" + (f" {ours['arch']}" if ours.get("arch") else "")
    if ours.get("target") != target or (target == "cuda" and arch and ours.get("arch") != arch):
        return f"it was compiled for {built}, not {target}" + (f" {arch}" if arch else "")
    if ours.get("dtype") != DTYPES[target]:
        return f"it computes in {ours.get('dtype')}, the benchmark in {DTYPES[target]}"
    if target == "cuda" and ours.get("schedules") != SCHEDULES:
        return f"it uses the {ours.get('schedules')} schedules, the benchmark {SCHEDULES}"
    if int(meta["context_window_size"]) < context_window_size:
        return (f"its context window is {meta['context_window_size']} tokens, this run needs "
                f"{context_window_size} (--prompt-len + --gen-len)")
    if int(meta["prefill_chunk_size"]) < prefill_chunk_size:
        return (f"its prefill chunk is {meta['prefill_chunk_size']} tokens, this run needs "
                f"{prefill_chunk_size} (--prompt-len)")
    wd = read_weight_dir(weight_dir)
    try:
        check_params_match(wd, meta["params"], lib.name)
    except UserError as e:
        return e.message.split(";")[0]
    extra = sorted(set(wd.params) - {p["name"] for p in meta["params"]})
    if extra:
        return f"{weight_dir} has {extra[0]}, which it lacks ({len(extra)} extra)"
    return None


def ensure_library(weight_dir: Path, lib: Path, *, target: str, arch: str | None, context_window_size: int,
                   prefill_chunk_size: int, log: Callable[[str], None] = print) -> Path:
    """``lib`` for ``weight_dir``: reused when it fits the run, else compiled in its place."""
    sizes = {"context_window_size": context_window_size, "prefill_chunk_size": prefill_chunk_size}
    reason = misfit(lib, weight_dir, target=target, arch=arch, **sizes)
    if reason is None:
        log(f"Reusing {lib}")
        return lib
    if runtime_only():
        raise UserError(
            f"{lib} cannot be used: {reason}; this TVM is runtime-only and cannot compile it, so "
            f"build it where apache-tvm's compiler is installed (the same bench command with "
            f"--compile-only --libs {lib.parent}) and carry it here"
        )
    if lib.exists():
        log(f"Not reusing {lib}: {reason}")
    from ..compile import compile_model

    # Where nvcc is, the kernels' binaries go into this machine's cache (engine/cuda_jit.py):
    # a GPU machine that is handed the library and the cache then compiles nothing.
    cache = cuda_jit.default_cache() if target == "cuda" and cuda_jit.nvcc_available() else None
    compile_model(weight_dir, lib, target=target, arch=arch, dtype=DTYPES[target], schedules=SCHEDULES,
                  force=True, cuda_cache=cache, log=log, **sizes)
    return lib
