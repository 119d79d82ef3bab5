"""A compiled model library bound to its weights and one paged KV cache (single sequence).

This is the part of MLC-LLM's engine our commands need: load the .so into a VM, read its
``_metadata``, check it against the weight directory, load the parameters through the tensor
cache builtins, create the KV cache, then prefill (in chunks of ``prefill_chunk_size``) and
decode through the KV-state builtins (``vm.builtin.kv_state_*``). ``tvm.runtime`` only.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tvm
import tvm_ffi
from tvm.runtime.vm import VirtualMachine  # not imported by `import tvm` in runtime-only mode
from tvm_ffi import Shape

from ..errors import UserError
from . import cuda_jit
from .weight_dir import WeightDir, check_params_match, read_weight_dir

KV_PAGE_SIZE = 16
_CUDA_LOADER = "ffi.Module.load_from_bytes.cuda"
_SEQ = 0  # the one sequence id this engine uses


class ContextWindowFull(UserError):
    """The tokens asked for do not fit the KV cache. Nothing was added to it, so a chat can go
    on after /reset; a one-shot command ends with this message."""


def use_all_cores() -> int:
    """Give TVM's CPU thread pool every core this process may run on, unless TVM_NUM_THREADS
    says otherwise; returns the thread count.

    TVM's default is half the hardware threads (it assumes hyper-threading), which on a 2-vCPU
    machine is one thread: SmolLM2 q4f16_1 decoded at 40 tok/s instead of 78 (measured
    2026-11-23). The pool reads the variable once, when it starts, so this runs before the
    library's first call.
    """
    if "TVM_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        os.environ["TVM_NUM_THREADS"] = str(max(1, cores or 1))
    return int(os.environ["TVM_NUM_THREADS"])


def _global(name: str):
    return tvm.get_global_func(name)


def runtime_only() -> bool:
    """True when this TVM has no compiler (runtime-only wheel, or TVM_USE_RUNTIME_LIB=1)."""
    return bool(tvm.base._RUNTIME_ONLY)


@contextlib.contextmanager
def cuda_loader_stand_in(loader: Callable[[bytes], object]) -> Iterator[None]:
    """While loading, ``loader`` deserializes a CUDA library's kernels (its imported ``cuda``
    module) instead of TVM's CUDA runtime; the loader registered before (if any) is put back.

    TVM's CUDA runtime deserializes them only with the NVIDIA driver present (libcuda.so.1), so
    on the CPU machine that compiled the library ``load_module`` fails, and on a GPU it compiles
    the kernels' source as it loads. Reading ``_metadata`` needs neither: it is VM bytecode that
    never touches the kernels.
    """
    previous = tvm_ffi.get_global_func(_CUDA_LOADER, allow_missing=True)
    tvm_ffi.register_global_func(_CUDA_LOADER, loader, override=True)
    try:
        yield
    finally:
        if previous is None:
            tvm_ffi.registry.remove_global_func(_CUDA_LOADER)
        else:
            tvm_ffi.register_global_func(_CUDA_LOADER, previous, override=True)


def load_cuda_runtime() -> bool:
    """Load TVM's CUDA runtime (libtvm_runtime_cuda.so) if ``import tvm`` did not; True if loaded.

    ``import tvm`` loads it through the CUDA backend's Python hook, which it skips in
    runtime-only mode (no libtvm_compiler.so, or TVM_USE_RUNTIME_LIB=1): without this, a GPU
    machine that carries only TVM's runtime sees no GPU and cannot load a CUDA library. False
    where it cannot load (no NVIDIA driver: it links libcuda.so.1).
    """
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
                "tvm", "tvm_runtime_cuda", "RTLD_LOCAL", extra_lib_paths=[runtime_dir]
            )
        except (OSError, RuntimeError):
            return False
    return True


def gpu_visible() -> bool:
    """True when a CUDA device is usable by TVM's runtime (``--target auto`` picks cuda then)."""
    try:
        return load_cuda_runtime() and bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - no CUDA runtime at all
        return False


def resolve_device(device: str, lib_target: str, lib_name: str) -> tvm.runtime.Device:
    """The device a library runs on; a CUDA library without a GPU is a user error."""
    if device in ("auto", None):
        device = "cuda" if lib_target == "cuda" else "cpu"
    kind, _, idx = device.partition(":")
    if kind != ("cuda" if lib_target == "cuda" else "cpu"):
        raise UserError(
            f"{lib_name} was compiled for {lib_target} but --device is {device}; "
            f"compile for the device you run on (desv-export compile --target)"
        )
    dev = tvm.cuda(int(idx or 0)) if kind == "cuda" else tvm.cpu(0)
    if kind == "cuda":
        try:
            ok = dev.exist
        except Exception:  # noqa: BLE001 - runtime built without CUDA
            ok = False
        if not ok:
            raise UserError(
                f"{lib_name} is a CUDA library but no GPU is visible here; run it on a machine "
                "with an NVIDIA GPU, or compile with --target llvm for this CPU"
            )
    return dev


def load_library(model_lib: Path) -> tvm.runtime.Module:
    """Load a .so; a CUDA library on a TVM without CUDA support is reported as such."""
    if load_cuda_runtime():
        cuda_jit.install()  # a CUDA library's kernels are compiled as it loads
    try:
        return tvm.runtime.load_module(str(model_lib))
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "cuda" in str(e).lower():
            raise UserError(
                f"{model_lib} is a CUDA library but this machine's TVM has no CUDA runtime / GPU; "
                "run it on a machine with an NVIDIA GPU, or compile with --target llvm"
            ) from None
        raise UserError(f"{model_lib} is not a loadable model library ({msg})") from None


class ModelLibrary:
    """Library + weights + KV cache for one conversation; positions are tracked here."""

    def __init__(self, weight_dir: Path, model_lib: Path, device: str = "auto") -> None:
        model_lib = Path(model_lib)
        use_all_cores()
        if not model_lib.is_file():
            raise UserError(f"{model_lib} not found (--model-lib); build it with desv-export compile")
        self.weight_dir: WeightDir = read_weight_dir(weight_dir)
        self.module = load_library(model_lib)
        # The metadata is a VM function; a CPU VM can read it whatever the library's target.
        cpu_vm = VirtualMachine(self.module, tvm.cpu(0))
        try:
            self.metadata = json.loads(cpu_vm["_metadata"]())
        except Exception:  # noqa: BLE001
            raise UserError(f"{model_lib} has no _metadata; it is not a desv-export/MLC model library") from None
        ours = self.metadata.get("desv_export", {})
        self.target = ours.get("target", "llvm")
        self.device = resolve_device(device, self.target, model_lib.name)
        check_params_match(self.weight_dir, self.metadata["params"], model_lib.name)
        self.vm = cpu_vm if self.target == "llvm" else VirtualMachine(self.module, self.device)
        self.dtype = ours.get("dtype", "float16")
        self.prefill_chunk_size = int(self.metadata["prefill_chunk_size"])
        self.context_window_size = int(self.metadata["context_window_size"])
        self.params = self._load_params()
        self._f = {n: self.vm[n] for n in ("embed", "prefill", "decode", "batch_verify")}
        self.kv_cache = self.vm["create_tir_paged_kv_cache"](
            Shape([1]),
            Shape([self.context_window_size]),
            Shape([self.prefill_chunk_size]),
            Shape([KV_PAGE_SIZE]),
            Shape([0]),
        )
        self._add_sequence = _global("vm.builtin.kv_state_add_sequence")
        self._begin_forward = _global("vm.builtin.kv_state_begin_forward")
        self._end_forward = _global("vm.builtin.kv_state_end_forward")
        self._clear = _global("vm.builtin.kv_state_clear")
        self._popn = _global("vm.builtin.kv_state_popn")
        self.num_tokens = 0  # tokens held in the KV cache
        self.reset()

    # --- weights -------------------------------------------------------------------------------
    def _load_params(self) -> list:
        names = [p["name"] for p in self.metadata["params"]]
        dev = self.device
        _global("vm.builtin.tensor_cache.clear")()
        try:
            _global("vm.builtin.tensor_cache.load")(str(self.weight_dir.path), dev.dlpack_device_type(), dev.index)
            params = _global("vm.builtin.param_array_from_cache_by_name")(names)
        except Exception as e:  # noqa: BLE001
            raise UserError(
                f"{self.weight_dir.path}: loading the parameters failed ({str(e).splitlines()[-1]}); "
                "the shards may be incomplete, re-export the weight directory"
            ) from None
        finally:
            # The cache is process-global: drop its references so another model can load.
            _global("vm.builtin.tensor_cache.clear")()
        return params

    # --- KV cache ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation: an empty cache holding one fresh sequence."""
        self._clear(self.kv_cache)
        self._add_sequence(self.kv_cache, _SEQ)
        self.num_tokens = 0

    def pop(self, n: int) -> None:
        """Drop the last ``n`` tokens from the cache (to re-prefill a changed suffix)."""
        if n > 0:
            self._popn(self.kv_cache, _SEQ, n)
            self.num_tokens -= n

    def _check_room(self, n: int) -> None:
        if self.num_tokens + n > self.context_window_size:
            raise ContextWindowFull(
                f"the conversation needs {self.num_tokens + n} tokens but the library's context "
                f"window is {self.context_window_size}; shorten the prompt or compile with a larger "
                f"--context-window-size"
            )

    # --- forward -------------------------------------------------------------------------------
    def _embed(self, tokens: list[int]):
        ids = tvm.runtime.tensor(np.asarray(tokens, dtype="int32"), self.device)
        return self._f["embed"](ids, self.params)

    def prefill(self, tokens: list[int], *, all_logits: bool = False) -> np.ndarray:
        """Append ``tokens`` to the sequence; return the last position's logits [V] (float32),
        or with ``all_logits`` the logits of every appended position [n, V]."""
        if not tokens:
            raise ValueError("prefill needs at least one token")
        self._check_room(len(tokens))
        out = []
        for start in range(0, len(tokens), self.prefill_chunk_size):
            chunk = tokens[start : start + self.prefill_chunk_size]
            n = len(chunk)
            emb = self._embed(chunk)
            emb = emb._create_view((1, n, emb.shape[-1]))
            self._begin_forward(self.kv_cache, Shape([_SEQ]), Shape([n]), None)
            if all_logits:
                logits, _ = self._f["batch_verify"](emb, self.kv_cache, self.params)
                out.append(logits.numpy()[0])
            else:
                logits, _ = self._f["prefill"](emb, self.kv_cache, self.params)
                last = logits
            self._end_forward(self.kv_cache)
            self.num_tokens += n
        if all_logits:
            return np.concatenate(out, axis=0)
        return last.numpy().reshape(-1)

    def decode(self, token: int) -> np.ndarray:
        """Append one token; return its logits [V] (float32)."""
        self._check_room(1)
        emb = self._embed([token])
        emb = emb._create_view((1, 1, emb.shape[-1]))
        self._begin_forward(self.kv_cache, Shape([_SEQ]), Shape([1]), None)
        logits, _ = self._f["decode"](emb, self.kv_cache, self.params)
        self._end_forward(self.kv_cache)
        self.num_tokens += 1
        return logits.numpy().reshape(-1)

    def sync(self) -> None:
        self.device.sync()
