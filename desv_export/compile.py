"""Compile an MLC weight directory into one model library (.so) with MLC-LLM's interface.

Pipeline (MLC-LLM's ``compiler_pass/pipeline.py`` is the model; the passes here are TVM's own):

1. Build ``LlamaForCausalLM`` from mlc-chat-config.json, with the parameter set the tensor cache
   holds (mode from ``quantization``; embedding quantized iff ``model.embed_tokens.q_weight``
   is there), export it with ``nn`` and check its parameters against tensor-cache.json.
2. Relax: legalize, fuse (the dequantize+matmul PrimFuncs are already one op each).
3. TIR schedules: CUDA applies ``tvm_schedules.registry.cuda_rules()`` then dlight's GPU rules
   (``--schedules dlight``: dlight only, MLC-LLM's baseline); llvm applies
   ``tvm_schedules.cpu.cpu_rules()`` (tiled GEMM for prefill, vector GEMV for decode, inlined
   gather), swaps in the fast prefill attention kernels and marks every kernel ``noalias``.
4. Memory planning with the variable bounds (seq_len <= prefill_chunk_size, total_seq_len <=
   context_window_size, batch_size <= max_batch_size), ``_metadata`` with memory usage, VM
   lowering, build, export to a temporary file renamed into place.

CUDA kernels: the apache-tvm 0.27 wheel is built without the CUDA runtime, so its codegen stores
the kernels as CUDA C source in the library's imported ``cuda`` module (TVM's "fallback" module,
same serialisation as a compiled one); a CUDA-enabled TVM runtime compiles them when it loads
the library (``tvm_callback_cuda_compile``: NVRTC or nvcc). No GPU is needed to build.

Compute dtype: float16 on CUDA, as MLC-LLM; float32 on llvm, because x86 CPUs have no fast
float16 arithmetic (LLVM converts every element) and because float32 makes the CPU library
numerically equal to a float32 reference run on the same float16 weights, which is what the
tests compare against. ``--dtype`` overrides either.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tvm
from tvm import relax, tirx
from tvm.ir import IRModule

from .atomic import atomic_file
from .engine import cuda_jit
from .engine.library import gpu_visible
from .engine.weight_dir import WeightDir, read_weight_dir
from .errors import UserError
from .modes import get_mode
from .model.llama import KV_PAGE_SIZE, LlamaConfig, LlamaForCausalLM

CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
SCHEDULES = ("ours", "dlight")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_DYNAMIC_OUTPUT_FUNCS = ("batch_verify",)


@dataclass
class CompileResult:
    output: Path
    target: str
    dtype: str
    metadata: dict
    seconds: float
    param_bytes: int
    temp_bytes: int
    kv_bytes_per_token: int
    stages: dict[str, float] = field(default_factory=dict)


# --- targets -------------------------------------------------------------------------------------


def host_cpu_target() -> tvm.target.Target:
    """llvm for this CPU (``-mcpu`` = the host's). Without it LLVM targets baseline x86-64, which
    has no F16C, and every float16 dequantize becomes two soft-float library calls (measured:
    7 s per SmolLM2 decode step instead of well under one)."""
    from tvm.target import codegen

    return tvm.target.Target(
        {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "mtriple": codegen.llvm_get_system_triple()}
    )


def resolve_target(target: str, arch: str | None) -> tvm.target.Target:
    """``llvm`` (host CPU), ``cuda`` (needs --arch unless a GPU is visible) or ``auto``."""
    if target == "auto":
        target = "cuda" if gpu_visible() else "llvm"
    if target == "llvm":
        if arch:
            raise UserError("--arch applies only to --target cuda")
        return host_cpu_target()
    if target == "cuda":
        if arch is None:
            if not gpu_visible():
                raise UserError("--target cuda on a machine without a GPU needs --arch (e.g. sm_90)")
            arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
        if arch not in CUDA_ARCHS:
            raise UserError(f"--arch {arch} is not supported; choose one of {', '.join(CUDA_ARCHS)}")
        return cuda_target(arch)
    raise UserError(f"--target {target} is not supported; choose llvm, cuda or auto")


def cuda_target(arch: str) -> tvm.target.Target:
    """The CUDA target every library is built for, with the limits dlight's rules read spelled
    out (a bare ``{"kind": "cuda"}`` leaves max_shared_memory_per_block unset and they warn).
    Takes any arch, unchecked: the schedule tests also build for sm_75, which has no bf16 mma."""
    return tvm.target.Target(
        {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
         "max_shared_memory_per_block": 49152, "thread_warp_size": 32},
        host="llvm",
    )


# --- model ---------------------------------------------------------------------------------------


def build_model(wd: WeightDir, target: tvm.target.Target, dtype: str) -> tuple[LlamaForCausalLM, LlamaConfig]:
    model_type = wd.chat_config.get("model_type", "llama")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{wd.path / 'mlc-chat-config.json'}: model_type {model_type!r} is not supported "
            f"({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    cfg = LlamaConfig.from_chat_config(wd.chat_config)
    mode = get_mode(wd.quantization, f"quantization in {wd.path / 'mlc-chat-config.json'}")
    model = LlamaForCausalLM(
        cfg, mode, quantize_embedding=wd.embedding_quantized, dtype=dtype, target=target
    )
    return model, cfg


def _check_named_params(wd: WeightDir, named_params) -> list[dict]:
    """The library's parameter list, checked against the tensor cache before compiling."""
    params = []
    for name, p in named_params:
        shape = [int(s) for s in p.shape]
        params.append({"name": name, "shape": shape, "dtype": str(p.dtype)})
        rec = wd.params.get(name)
        if rec is None or list(rec.shape) != shape or rec.dtype != str(p.dtype):
            got = "absent" if rec is None else f"{rec.dtype}{list(rec.shape)}"
            raise UserError(
                f"{wd.path / 'tensor-cache.json'}: {name} should be {p.dtype}{shape} for "
                f"quantization {wd.quantization}, found {got}; re-export the weight directory"
            )
    extra = sorted(set(wd.params) - {p["name"] for p in params})
    if extra:
        raise UserError(
            f"{wd.path / 'tensor-cache.json'}: unexpected parameter {extra[0]} for this model "
            f"({len(extra)} extra); re-export the weight directory"
        )
    return params


# --- passes --------------------------------------------------------------------------------------


@tvm.transform.module_pass(opt_level=0, name="AttachFuncAttrs")
class _AttachFuncAttrs:
    """Variable upper bounds (memory planning of dynamic shapes) and output planning, as MLC."""

    def __init__(self, bounds: dict[str, int]) -> None:
        self.bounds = bounds

    def transform_module(self, mod: IRModule, _ctx) -> IRModule:
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                func = func.with_attr("tir_var_upper_bound", self.bounds).with_attr(
                    "tir_non_negative_var", ["vocab_size"]
                )
                # batch_verify returns [1, seq_len, V] logits (perplexity uses it): planning that
                # output for seq_len = prefill_chunk_size would reserve chunk x vocab floats for
                # good, so it is allocated at its actual size instead.
                if gv.name_hint not in _DYNAMIC_OUTPUT_FUNCS:
                    func = func.with_attr("relax.memory_plan_dynamic_func_output", True)
                mod[gv] = func
        return mod


@tvm.transform.module_pass(opt_level=0, name="MarkNoAlias")
class _MarkNoAlias:
    """``tirx.noalias`` on every PrimFunc (llvm).

    TVM's LLVM codegen drops the ``noalias`` parameter attributes of *every* function in a
    module as soon as one PrimFunc lacks the attribute, and two of the paged KV cache's CPU
    kernels (``merge_state_inplace_cpu``, ``tree_attn_paged_kv_cpu``) do. Without ``noalias``
    LLVM re-reads the packed weights and scales around every store, which made each quantized
    matmul of the compiled model 3x slower than the same kernel built alone (SmolLM2 lm_head
    decode GEMV: 12.1 ms vs 4.0 ms, measured 2026-11-23). No kernel in the library is ever
    called with two parameters that share memory (in-place kernels read and write one
    parameter), so the promise holds.
    """

    def transform_module(self, mod: IRModule, _ctx) -> IRModule:
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tirx.PrimFunc) and not (func.attrs and func.attrs.get("tirx.noalias")):
                mod[gv] = func.with_attr("tirx.noalias", True)
        return mod


@tvm.transform.module_pass(opt_level=0, name="AttachMetadata")
class _AttachMetadata:
    """Adds ``_metadata() -> str`` (JSON) with each function's planned memory, as MLC reports."""

    def __init__(self, metadata: dict) -> None:
        self.metadata = metadata

    def transform_module(self, mod: IRModule, _ctx) -> IRModule:
        self.metadata["memory_usage"] = {
            gv.name_hint: _planned_bytes(func)
            for gv, func in mod.functions_items()
            if isinstance(func, relax.Function)
        }
        bb = relax.BlockBuilder()
        with bb.function("_metadata", params=[]):
            bb.emit_func_output(tvm.ir.StringImm(json.dumps(self.metadata)))
        mod["_metadata"] = bb.finalize()["_metadata"]
        return mod


def _planned_bytes(func: relax.Function) -> int:
    """Bytes of statically sized storage a function allocates after memory planning."""
    total = 0
    alloc_storage = tvm.ir.Op.get("relax.memory.alloc_storage")
    alloc_tensor = tvm.ir.Op.get("relax.builtin.alloc_tensor")

    def visit(expr) -> None:
        nonlocal total
        if not isinstance(expr, tvm.ir.Call):
            return
        if expr.op == alloc_storage:
            size = expr.args[0]
            if isinstance(size, relax.ShapeExpr) and isinstance(size.values[0], tirx.IntImm):
                total += int(size.values[0].value)
        elif expr.op == alloc_tensor:
            shape = expr.args[0]
            if isinstance(shape, relax.ShapeExpr) and all(isinstance(v, tirx.IntImm) for v in shape.values):
                n = 1
                for v in shape.values:
                    n *= int(v.value)
                dt = tvm.DataType(expr.args[1].value)
                total += n * ((dt.bits + 7) // 8) * dt.lanes

    relax.analysis.post_order_visit(func, visit)
    return total


def _cpu_attention_pass(rope: dict) -> tvm.transform.Pass:
    from tvm_schedules.cpu.attention import UseFastCPUAttention

    return UseFastCPUAttention(**rope)


def _cpu_schedule_pass() -> tvm.transform.Pass:
    from tvm.s_tir import dlight as dl

    from tvm_schedules.cpu import cpu_rules

    return dl.ApplyDefaultSchedule(*cpu_rules())


def _simt_target(target: tvm.target.Target) -> tvm.target.Target:
    """The same CUDA target with an arch below sm_70, which makes dlight's Matmul skip tensor cores."""
    config = {k: v for k, v in target.export().items() if k not in ("host", "keys", "tag", "features")}
    config["arch"] = "sm_60"
    return tvm.target.Target(config)


def _matmul_without_tensor_cores_rule():
    from tvm.s_tir import dlight as dl

    class MatmulWithoutTensorCores(dl.gpu.Matmul):
        """dlight's Matmul, SIMT path only.

        TVM 0.27's MatmulTensorization (taken for float16 matmuls on sm_70+) segfaults inside
        s_tir Tensorize for every float16 matmul we tried, MLC-LLM's own dequantize-matmul
        included (reproduced 2026-11-23 with a plain [n,256]x[256,512] float16 matmul, sm_80).
        The schedule is chosen as for a pre-Volta GPU; the kernels still carry the real target.
        """

        def apply(self, func, target, tunable):
            if target.kind.name == "cuda":
                target = _simt_target(target)
            return super().apply(func, target, tunable)

    return MatmulWithoutTensorCores()


def _gpu_schedule_pass(schedules: str) -> tvm.transform.Pass:
    from tvm.s_tir import dlight as dl

    rules = []
    if schedules == "ours":
        try:
            from tvm_schedules.registry import cuda_rules
        except ImportError:
            cuda_rules = None  # tvm_schedules not written yet: dlight only
        if cuda_rules is not None:
            rules.extend(cuda_rules())
    rules += [
        _matmul_without_tensor_cores_rule(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]
    return dl.ApplyDefaultSchedule(*rules)


def build_pipeline(target: tvm.target.Target, metadata: dict, bounds: dict[str, int], schedules: str,
                   rope: dict | None = None):
    is_cpu = target.kind.name == "llvm"
    passes = [
        _cpu_attention_pass(rope or {}) if is_cpu else tvm.transform.Sequential([]),
        _AttachFuncAttrs(bounds),
        tirx.transform.BindTarget(target),
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
        _cpu_schedule_pass() if is_cpu else _gpu_schedule_pass(schedules),
        tirx.transform.ForceNarrowIndexToInt32() if is_cpu else tvm.transform.Sequential([]),
        _MarkNoAlias() if is_cpu else tvm.transform.Sequential([]),
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        _AttachMetadata(metadata),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
    return tvm.transform.Sequential(passes)


# --- entry point ---------------------------------------------------------------------------------


def compile_model(
    weight_dir: Path,
    output: Path,
    *,
    target: str = "llvm",
    arch: str | None = None,
    dtype: str | None = None,
    schedules: str = "ours",
    max_batch_size: int | None = None,
    context_window_size: int | None = None,
    prefill_chunk_size: int | None = None,
    force: bool = False,
    cuda_cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> CompileResult:
    """Build ``output`` (.so) from an MLC weight directory; return what was built and its sizes.

    ``context_window_size`` / ``prefill_chunk_size`` / ``max_batch_size`` override
    mlc-chat-config.json (MLC's ``--overrides``); the library's ``_metadata`` records the values
    used and the engine follows them. ``cuda_cache``: also compile a CUDA library's kernels with
    nvcc into that binary cache (engine/cuda_jit.py), so a GPU machine loads them uncompiled.
    """
    t0 = time.perf_counter()
    output = Path(output)
    if output.exists() and not force:
        raise UserError(f"{output} already exists (-o); pass --force to overwrite it")
    if schedules not in SCHEDULES:
        raise UserError(f"--schedules {schedules} is not one of {', '.join(SCHEDULES)}")
    wd = read_weight_dir(weight_dir)
    tgt = resolve_target(target, arch)
    is_cpu = tgt.kind.name == "llvm"
    dtype = dtype or ("float32" if is_cpu else "float16")
    if dtype not in ("float16", "float32"):
        raise UserError(f"--dtype {dtype} is not supported; choose float16 or float32")

    stages: dict[str, float] = {}
    overrides = {"context_window_size": context_window_size, "prefill_chunk_size": prefill_chunk_size}
    for key, value in overrides.items():
        if value is not None:
            if value <= 0:
                raise UserError(f"--{key.replace('_', '-')} must be positive")
            wd.chat_config[key] = value
            wd.chat_config.setdefault("model_config", {})[key] = value
    if max_batch_size is None:
        max_batch_size = int(wd.chat_config.get("model_config", {}).get("max_batch_size", 1) or 1)
    with tgt:
        model, cfg = build_model(wd, tgt, dtype)
        mod, named_params = model.export_tvm(spec=model.get_default_spec())
    params = _check_named_params(wd, named_params)
    stages["export"] = time.perf_counter() - t0

    metadata = {
        "model_type": wd.chat_config.get("model_type", "llama"),
        "quantization": wd.quantization,
        "context_window_size": cfg.context_window_size,
        "sliding_window_size": -1,
        "attention_sink_size": -1,
        "prefill_chunk_size": cfg.prefill_chunk_size,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "disaggregation": False,
        "kv_state_kind": "kv_cache",
        "max_batch_size": max_batch_size,
        "active_vocab_size": None,
        "model_task": "chat",
        "params": params,
        "kv_cache": {
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
        },
        # ours (MLC ignores unknown keys): what the engine needs to feed the library.
        "desv_export": {
            "dtype": dtype,
            "target": tgt.kind.name,
            "arch": tgt.attrs.get("arch") if not is_cpu else None,
            "schedules": schedules if not is_cpu else None,
            "kv_page_size": KV_PAGE_SIZE,
            "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size,
        },
    }
    bounds = {
        "seq_len": cfg.prefill_chunk_size,
        "total_seq_len": cfg.context_window_size,
        "batch_size": max_batch_size,
    }
    log(f"Compiling {wd.path} ({wd.quantization}, {dtype}) for {tgt.kind.name}"
        + (f" {tgt.attrs.get('arch')}" if not is_cpu else ""))
    t1 = time.perf_counter()
    with tvm.transform.PassContext(config={"tirx.disable_cse_tir": True}):
        with tgt:
            mod = build_pipeline(tgt, metadata, bounds, schedules, cfg.kv_cache_rope)(mod)
        stages["relax"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        ex = relax.build(mod, target=tgt, relax_pipeline=None)
    stages["codegen"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    with atomic_file(output, force=True) as tmp:
        ex.export_library(str(tmp))
    stages["export_library"] = time.perf_counter() - t3
    if cuda_cache is not None and not is_cpu:
        t4 = time.perf_counter()
        binary = cuda_jit.precompile(ex.mod, str(tgt.attrs["arch"]), cuda_cache)
        stages["nvcc"] = time.perf_counter() - t4
        log(f"Compiled the kernels with nvcc into {binary}")

    param_bytes = sum(_nbytes(p["shape"], p["dtype"]) for p in params)
    temp_bytes = max(metadata["memory_usage"].values(), default=0)
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * (
        tvm.DataType(dtype).bits // 8
    )
    log(
        f"[Memory usage] parameters: {param_bytes / 2**20:.2f} MB, temporary buffer: "
        f"{temp_bytes / 2**20:.2f} MB, KV cache: {kv_per_token / 2**10:.3f} KB per token "
        f"({kv_per_token * cfg.context_window_size / 2**20:.2f} MB for the "
        f"{cfg.context_window_size}-token context window)"
    )
    seconds = time.perf_counter() - t0
    log(f"Wrote {output} in {seconds:.1f} s")
    return CompileResult(
        output, tgt.kind.name, dtype, metadata, seconds, param_bytes, temp_bytes, kv_per_token, stages
    )


def _nbytes(shape, dtype: str) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * tvm.DataType(dtype).bits // 8
