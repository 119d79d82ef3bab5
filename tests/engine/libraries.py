"""Shared, cached builds for the compile and engine tests: weight dirs, libraries, references.

Compiling a library takes seconds to minutes on the 2 CI cores, so every (model, mode,
options) combination is exported and compiled at most once per test session, whichever test
directory asks first. ``torch_reference`` is the independent side of every comparison: an HF
transformers model (float32) whose weights are the numpy ``desv_export.pack.dequantize`` of the
weight directory's stored tensors.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

# Small prefill chunks so that every test prompt spans several chunks.
CHUNK = 16
CONTEXT = 256

# A directory of libraries compiled elsewhere (benchmarks/gpu_kit.py prepare): a GPU machine
# that carries only TVM's runtime cannot compile, so ``library`` takes them from here by name,
# and compiles into it (with the kernels' nvcc binaries into DESV_EXPORT_CUDA_CACHE) when TVM's
# compiler is present.
PREBUILT_ENV = "DESV_TEST_LIBS"

_weight_dirs: dict[tuple, Path] = {}
_libraries: dict[tuple, Path] = {}
BUILD_SECONDS: dict[str, float] = {}


def weight_dir(root: Path, hf_dir: Path, mode: str) -> Path:
    from desv_export.export import export_model

    key = (str(hf_dir), mode)
    if key not in _weight_dirs:
        out = Path(root) / f"{Path(hf_dir).name}-{mode}"
        _weight_dirs[key] = export_model(hf_dir, out, mode, force=True)
    return _weight_dirs[key]


def library(root: Path, wdir: Path, **options) -> Path:
    """Compile ``wdir`` with ``options`` (compile_model keywords) once; return the .so path."""
    options.setdefault("prefill_chunk_size", CHUNK)
    options.setdefault("context_window_size", CONTEXT)
    key = (str(wdir), tuple(sorted(options.items())))
    if key not in _libraries:
        tag = "-".join(f"{v}" for _, v in sorted(options.items()))
        prebuilt = os.environ.get(PREBUILT_ENV)
        out = Path(prebuilt or root) / f"{Path(wdir).name}-{tag}.so"
        if not (prebuilt and out.is_file()):
            _compile(wdir, out, options, cuda_cache=bool(prebuilt))
        _libraries[key] = out
    return _libraries[key]


def _compile(wdir: Path, out: Path, options: dict, cuda_cache: bool) -> None:
    from desv_export.engine.library import runtime_only

    if runtime_only():
        raise RuntimeError(f"{out.name} is not in {PREBUILT_ENV} and this TVM (runtime only) cannot "
                           "compile it; run benchmarks/gpu_kit.py prepare where TVM's compiler is")
    from desv_export.compile import compile_model
    from desv_export.engine import cuda_jit

    t0 = time.perf_counter()
    cache = cuda_jit.default_cache() if cuda_cache and options.get("target") == "cuda" else None
    compile_model(wdir, out, force=True, cuda_cache=cache, log=lambda _msg: None, **options)
    BUILD_SECONDS[out.name] = time.perf_counter() - t0


def reference_weights(wdir: Path) -> dict[str, np.ndarray]:
    """HF-named float32 weights of an MLC weight dir (qkv / gate_up split back)."""
    from desv_export import pack
    from desv_export.mlc.tensor_cache import TensorCache
    from desv_export.engine.weight_dir import read_weight_dir

    wd = read_weight_dir(wdir)
    mc = wd.chat_config["model_config"]
    mode = wd.quantization
    cache = TensorCache(wdir)
    h, hd = mc["hidden_size"], mc["head_dim"]
    nq, nkv = mc["num_attention_heads"], mc["num_key_value_heads"]
    inter = mc["intermediate_size"]

    def weight(prefix: str, k: int) -> np.ndarray:
        group = cache.group(prefix)
        m = mode if "q_weight" in group else "q0f16"
        return pack.dequantize(m, group, k).astype(np.float32)

    out = {"model.embed_tokens.weight": weight("model.embed_tokens", h)}
    for i in range(mc["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = weight(p + "self_attn.qkv_proj", h)
        q, k, v = np.split(qkv, [nq * hd, (nq + nkv) * hd])
        out[p + "self_attn.q_proj.weight"] = q
        out[p + "self_attn.k_proj.weight"] = k
        out[p + "self_attn.v_proj.weight"] = v
        if p + "self_attn.qkv_proj.bias" in cache:
            b = cache[p + "self_attn.qkv_proj.bias"].astype(np.float32)
            bq, bk, bv = np.split(b, [nq * hd, (nq + nkv) * hd])
            out[p + "self_attn.q_proj.bias"], out[p + "self_attn.k_proj.bias"] = bq, bk
            out[p + "self_attn.v_proj.bias"] = bv
        out[p + "self_attn.o_proj.weight"] = weight(p + "self_attn.o_proj", nq * hd)
        gate, up = np.split(weight(p + "mlp.gate_up_proj", h), [inter])
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
        out[p + "mlp.down_proj.weight"] = weight(p + "mlp.down_proj", inter)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[p + norm + ".weight"] = cache[p + norm + ".weight"].astype(np.float32)
    out["model.norm.weight"] = cache["model.norm.weight"].astype(np.float32)
    if "lm_head.weight" in cache or "lm_head.q_weight" in cache:
        out["lm_head.weight"] = weight("lm_head", h)
    return out


def torch_reference(hf_dir: Path, wdir: Path):
    """float32 HF model of ``hf_dir``'s architecture carrying ``wdir``'s dequantized weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = {k: torch.from_numpy(v) for k, v in reference_weights(wdir).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    assert not missing and not unexpected, (missing, unexpected)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def reference_logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )
    return out[0, len(prompt):].tolist()
