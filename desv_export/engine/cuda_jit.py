"""Turn a CUDA library's kernel source into GPU code when the library is loaded, compiler-free.

A library built for cuda by apache-tvm 0.27 carries CUDA C source (desv_export/compile.py says
why); TVM's CUDA runtime compiles it when the library is loaded, through the global function
``tvm_callback_cuda_compile``. TVM's own callback (tvm.support.nvcc) asks the compiler library
for the current target, so with a runtime-only TVM it fails (``TargetCurrent`` is missing), and
it compiles again at every load. The callback installed here needs only nvcc: it compiles for
the visible GPU's architecture and keeps each binary in a cache keyed by the source's sha256
and the architecture, so a library is compiled once per machine, and binaries made elsewhere
(``precompile``: nvcc needs no GPU) can be carried to a GPU machine in that cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..atomic import atomic_file
from ..errors import UserError

CACHE_ENV = "DESV_EXPORT_CUDA_CACHE"
_TVM_CALLBACK: dict = {}


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/desv-export/cuda").expanduser()


def binary_path(source: str, arch: str, cache: Path | None = None) -> Path:
    """Where the binary of ``source`` for ``arch`` lives in the cache."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    return Path(cache or default_cache()) / f"{digest}-{arch}.fatbin"


def nvcc_available() -> bool:
    return shutil.which("nvcc") is not None


def nvcc(source: str, arch: str, out: Path, fmt: str = "fatbin") -> Path:
    """Compile CUDA C source with nvcc for ``arch`` (``sm_90``) into ``out`` (written whole or
    not at all); raises RuntimeError with nvcc's message."""
    if not nvcc_available():
        raise RuntimeError("nvcc is not on PATH: install the CUDA toolkit, or carry precompiled binaries")
    with tempfile.TemporaryDirectory(prefix="desv_nvcc_") as tmp, atomic_file(Path(out)) as binary:
        src = Path(tmp) / "kernels.cu"
        src.write_text(source)
        proc = subprocess.run(["nvcc", f"-{fmt}", f"-arch={arch}", "-O3", "-o", str(binary), str(src)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed for {arch}:\n{proc.stderr[-4000:]}")
    return Path(out)


def visible_arch() -> str:
    """``sm_XY`` of CUDA device 0."""
    import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        raise UserError("no CUDA GPU is visible; a CUDA library's kernels cannot be compiled for it")
    return "sm_" + dev.compute_version.replace(".", "")


def compiled(source: str, arch: str, cache: Path | None = None) -> Path:
    """The cached binary of ``source`` for ``arch``, compiled with nvcc if it is not there yet."""
    path = binary_path(source, arch, cache)
    if not path.is_file():
        nvcc(source, arch, path)
    return path


def install(cache: Path | None = None, arch: str | None = None) -> None:
    """Answer TVM's load-time CUDA compile from the cache, else with nvcc into the cache, else
    with the callback registered before (TVM's NVRTC path, which needs TVM's compiler). Call it
    before loading a library; the architecture is read from the GPU at the first compile."""
    import tvm_ffi

    name = "tvm_callback_cuda_compile"
    # TVM's own callback, as registered before our first install (a later install replaces ours).
    previous = _TVM_CALLBACK.setdefault(name, tvm_ffi.get_global_func(name, allow_missing=True))
    resolved: list[str] = [arch] if arch else []

    def compile_cuda(code, *target) -> bytearray:
        if not resolved:
            resolved.append(visible_arch())
        cached = binary_path(str(code), resolved[0], cache).is_file()
        if not cached and not nvcc_available() and previous is not None:
            return previous(code, *target)
        return bytearray(compiled(str(code), resolved[0], cache).read_bytes())

    tvm_ffi.register_global_func(name, compile_cuda, override=True)


def library_cuda_source(module) -> str:
    """The CUDA C source of a freshly built library (``relax.build(...).mod``: VM executable ->
    host llvm module -> cuda; ``tvm.compile(...).mod``: llvm -> cuda): on a machine without a CUDA
    runtime each ``cuda`` module is TVM's source holder."""
    sources, todo = [], list(module.imports_)
    while todo:
        m = todo.pop(0)
        if m.kind == "cuda":
            sources.append(m.inspect_source())
        todo.extend(m.imports_)
    return "\n".join(sources)


def precompile(module, arch: str, cache: Path | None = None) -> Path:
    """Put the binary of ``module``'s kernels for ``arch`` into the cache; no GPU needed."""
    source = library_cuda_source(module)
    if not source:
        raise ValueError("the library has no CUDA kernels")
    return compiled(source, arch, cache)
