"""The load-time CUDA compile callback (engine/cuda_jit.py), exercised without a GPU.

TVM's CUDA runtime calls the global ``tvm_callback_cuda_compile`` with a library's CUDA source
when the library is loaded; these tests call that global function the same way.
"""

from __future__ import annotations

import shutil

import pytest
import tvm_ffi

from desv_export.engine import cuda_jit

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")

KERNEL = 'extern "C" __global__ void fill(float* a) { a[threadIdx.x] = 1.0f; }'
FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # 0xBA55ED50, little-endian


def callback():
    return tvm_ffi.get_global_func("tvm_callback_cuda_compile")


@pytest.fixture(autouse=True)
def restore_callback():
    """Leave the process's callback as it was (these tests point it at temporary caches)."""
    before = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    yield
    if before is not None:
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", before, override=True)


@needs_nvcc
def test_compiles_once_then_answers_from_the_cache(tmp_path, monkeypatch):
    cuda_jit.install(cache=tmp_path, arch="sm_90")
    first = bytes(callback()(KERNEL))
    assert first[:4] == FATBIN_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == [cuda_jit.binary_path(KERNEL, "sm_90", tmp_path).name]

    def no_nvcc(*_args, **_kw):
        raise AssertionError("compiled again")

    monkeypatch.setattr(cuda_jit, "nvcc", no_nvcc)
    assert bytes(callback()(KERNEL)) == first


def test_without_nvcc_falls_back_to_the_callback_registered_before(tmp_path, monkeypatch):
    """No cached binary, no nvcc: TVM's own callback (NVRTC) answers, as before our install."""
    monkeypatch.setattr(cuda_jit.shutil, "which", lambda _name: None)
    monkeypatch.setattr(cuda_jit, "_TVM_CALLBACK", {"tvm_callback_cuda_compile": lambda code: b"tvm:" + code.encode()})
    cuda_jit.install(cache=tmp_path, arch="sm_80")
    assert bytes(callback()(KERNEL)) == b"tvm:" + KERNEL.encode()
    assert not list(tmp_path.iterdir())


def test_cache_key_is_source_and_arch(tmp_path):
    a = cuda_jit.binary_path(KERNEL, "sm_90", tmp_path)
    assert a == cuda_jit.binary_path(KERNEL, "sm_90", tmp_path)
    assert a != cuda_jit.binary_path(KERNEL, "sm_80", tmp_path)
    assert a != cuda_jit.binary_path(KERNEL + " ", "sm_90", tmp_path)


@needs_nvcc
def test_nvcc_error_names_the_arch(tmp_path):
    with pytest.raises(RuntimeError, match="nvcc failed for sm_90"):
        cuda_jit.nvcc("this is not cuda", "sm_90", tmp_path / "x.fatbin")
    assert not list(tmp_path.iterdir())  # nothing half-written
