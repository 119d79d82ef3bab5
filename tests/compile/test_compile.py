"""desv-export compile: the library's interface, metadata, CUDA builds without a GPU, errors."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from desv_export.cli import main
from desv_export.engine import cuda_jit
from desv_export.errors import UserError
from tests.engine import libraries as L

MLC_FUNCTIONS = ["embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify",
                 "get_logits", "create_tir_paged_kv_cache", "softmax_with_temperature", "_metadata"]


def _metadata(lib_path):
    import tvm

    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
    return vm, json.loads(vm["_metadata"]())


def test_library_interface_and_metadata(build_root, tiny_llama_dir):
    from desv_export.engine.weight_dir import read_weight_dir

    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_1")
    vm, meta = _metadata(L.library(build_root, wd))
    for name in MLC_FUNCTIONS:
        vm[name]  # raises if the library lacks it
    assert meta["model_type"] == "llama" and meta["quantization"] == "q4f16_1"
    assert meta["prefill_chunk_size"] == L.CHUNK and meta["context_window_size"] == L.CONTEXT
    assert meta["kv_cache"] == {"num_hidden_layers": 2, "num_attention_heads": 4,
                                "num_key_value_heads": 2, "head_dim": 24}
    # params: exactly the tensor cache, in name, shape and dtype
    cache = read_weight_dir(wd).params
    assert {p["name"] for p in meta["params"]} == set(cache)
    for p in meta["params"]:
        assert tuple(p["shape"]) == cache[p["name"]].shape and p["dtype"] == cache[p["name"]].dtype
    assert "model.embed_tokens.q_weight" in cache  # MLC preset: embedding quantized
    assert meta["memory_usage"]["prefill"] > 0


def test_softmax_with_temperature(build_root, tiny_llama_dir):
    import numpy as np
    import tvm

    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_1")
    vm, _ = _metadata(L.library(build_root, wd))
    logits = np.random.default_rng(0).normal(size=(2, 1, 384)).astype("float32")
    temp = np.array([0.7, 0.0], "float32")
    out = vm["softmax_with_temperature"](tvm.runtime.tensor(logits), tvm.runtime.tensor(temp)).numpy()
    z = logits[0, 0] / 0.7
    ref0 = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(out[0, 0], ref0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_compile_cli_prints_memory_and_refuses_overwrite(tmp_path, build_root, tiny_llama_dir):
    wd = L.weight_dir(build_root, tiny_llama_dir, "q0f16")
    out = tmp_path / "lib.so"
    args = ["compile", str(wd), "--target", "llvm", "-o", str(out), "--prefill-chunk-size", "16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "parameters:" in result.output and "temporary buffer:" in result.output
    # KV cache bytes per token = 2 (K,V) * layers * kv_heads * head_dim * 4 B (float32) = 768 B
    assert "KV cache: 0.750 KB per token" in result.output
    assert out.is_file() and not list(tmp_path.glob(".lib.so.tmp-*"))
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--force" in again.output


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_library_builds_without_gpu(tmp_path, build_root, tiny_llama_dir, arch):
    """The .so carries an imported `cuda` module with the kernels (CUDA C, compiled by the GPU
    machine's runtime at load; see desv_export/compile.py) and the host code for the VM."""
    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_g128asym")
    lib = L.library(build_root, wd, target="cuda", arch=arch)
    blob = lib.read_bytes()
    assert b"\x04\x00\x00\x00\x00\x00\x00\x00cuda" in blob  # imported module of kind "cuda"
    assert b"__global__" in blob and b"extern \"C\"" in blob  # CUDA kernels
    assert b"dequantize" in blob  # our fused dequantize kernels are among them
    meta, _ = json.JSONDecoder().raw_decode(blob[blob.index(b'{"model_type"'):].decode("latin-1"))
    assert meta["desv_export"]["target"] == "cuda" and meta["desv_export"]["arch"] == arch
    assert meta["desv_export"]["dtype"] == "float16"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_cache_holds_the_kernels_binary(tmp_path, build_root, tiny_llama_dir):
    """--cuda-cache: nvcc compiles the library's kernels here, for the GPU machine to load
    without compiling (engine/cuda_jit.py answers TVM's load-time compile from it)."""
    wd = L.weight_dir(build_root, tiny_llama_dir, "q3f16_g128asym")
    cache = tmp_path / "cuda-cache"
    args = ["compile", str(wd), "--target", "cuda", "--arch", "sm_90", "-o", str(tmp_path / "lib.so"),
            "--cuda-cache", str(cache)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (binary,) = cache.iterdir()
    assert binary.name.endswith("-sm_90.fatbin") and binary.read_bytes()[:4] == bytes.fromhex("50ed55ba")
    assert str(binary) in result.output
    # Its key is the source TVM's CUDA runtime will hand the compile callback when the library
    # is loaded: the serialized cuda module's last field (length-prefixed), captured here by a
    # stand-in loader (this machine has no CUDA runtime to load it).
    blob = _serialized_cuda_module(tmp_path / "lib.so")
    source = next(blob[p + 8:] for p in range(len(blob) - 8)
                  if int.from_bytes(blob[p:p + 8], "little") == len(blob) - p - 8)
    assert b"__global__" in source
    assert cuda_jit.binary_path(source.decode(), "sm_90", cache) == binary


def _serialized_cuda_module(lib) -> bytes:
    import tvm
    import tvm_ffi

    from desv_export.engine.library import cuda_loader_stand_in

    captured = []
    with cuda_loader_stand_in(lambda blob: captured.append(bytes(blob)) or tvm_ffi.system_lib()):
        tvm.runtime.load_module(str(lib))
    (blob,) = captured
    return blob


def test_cuda_library_without_gpu_is_a_clear_error(build_root, tiny_llama_dir):
    from desv_export.engine.library import ModelLibrary

    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_g128asym")
    lib = L.library(build_root, wd, target="cuda", arch="sm_80")
    with pytest.raises(UserError, match="CUDA library"):
        ModelLibrary(wd, lib, "auto")


def test_cuda_without_arch_and_gpu_is_an_error(tmp_path, build_root, tiny_llama_dir):
    wd = L.weight_dir(build_root, tiny_llama_dir, "q0f16")
    result = CliRunner().invoke(main, ["compile", str(wd), "--target", "cuda", "-o", str(tmp_path / "x.so")])
    assert result.exit_code == 2 and "--arch" in result.output


def test_tensor_cache_that_does_not_fit_the_mode(tmp_path, build_root, tiny_llama_dir):
    """A weight dir whose mlc-chat-config.json says one mode and whose tensors are another."""
    import shutil

    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_1")
    bad = tmp_path / "bad"
    shutil.copytree(wd, bad)
    cfg = json.loads((bad / "mlc-chat-config.json").read_text())
    cfg["quantization"] = "q3f16_1"
    (bad / "mlc-chat-config.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(main, ["compile", str(bad), "--target", "llvm", "-o", str(tmp_path / "x.so")])
    assert result.exit_code == 2 and "re-export" in result.output
    assert not (tmp_path / "x.so").exists()


def test_every_cpu_kernel_is_noalias():
    """One PrimFunc without ``tirx.noalias`` costs every kernel of an llvm module its noalias
    (3x on the quantized matmuls), so the pipeline marks them all."""
    import tvm
    from tvm import te

    from desv_export.compile import _MarkNoAlias

    x = te.placeholder((8,), "float32", name="x")
    plain = te.create_prim_func([x, te.compute((8,), lambda i: x[i] * 2)])
    plain = plain.with_attrs({"global_symbol": "plain"}).without_attr("tirx.noalias")
    assert not plain.attrs.get("tirx.noalias")
    out = _MarkNoAlias()(tvm.IRModule({"plain": plain}))
    assert out["plain"].attrs["tirx.noalias"]


def test_unknown_mode_names_the_config_file(tmp_path, build_root, tiny_llama_dir):
    import shutil

    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_1")
    bad = tmp_path / "bad"
    shutil.copytree(wd, bad)
    cfg = json.loads((bad / "mlc-chat-config.json").read_text())
    cfg["quantization"] = "q4f16_7"
    (bad / "mlc-chat-config.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(main, ["compile", str(bad), "--target", "llvm", "-o", str(tmp_path / "x.so")])
    assert result.exit_code == 2 and "'q4f16_7'" in result.output
    assert str(bad / "mlc-chat-config.json") in result.output and "--quantization" not in result.output
