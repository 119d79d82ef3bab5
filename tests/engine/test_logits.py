"""The compiled library computes the model: logits against HF transformers / a torch reference.

Tolerances. The llvm libraries compute in float32 (desv_export/compile.py says why) on float16
weights that are dequantized bit-exactly (float16 multiply, as pack.dequantize); the reference is
float32 torch on the same float16 values. The only differences left are summation order in
matmuls (K <= 160), softmax and RMSNorm, about 1e-6 relative in float32 (measured: max 1.2e-6 on
logits of magnitude ~2). We allow 1e-4 x max|logit|: two orders above that noise, far below
any real bug (a wrong group, code or RoPE position moves logits by 1e-2 .. 1). The float16
library (CUDA's default dtype) rounds activations to float16 (eps 9.8e-4) at every layer
boundary: measured 1.8e-3 at max|logit| 2.4; we allow 5e-3 x max|logit|.
"""

from __future__ import annotations

import numpy as np
import pytest

from desv_export.engine.library import ModelLibrary
from tests.engine import libraries as L

PROMPT = 20
DECODE = 32
FP32_TOL = 1e-4
FP16_TOL = 5e-3

# Every storage format the exporter writes, one library each (same tiny model).
MODES = ["q0f16", "q4f16_1", "q3f16_1", "q2f16_g128asym", "q3f16_g128asym", "q4f16_g128asym", "q3f16_g64asym", "q4f16_g32asym"]


def _tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, 384, n).tolist()


def _check_prefill_and_decode(lib: ModelLibrary, ref_logits: np.ndarray, tokens: list[int], tol: float):
    scale = float(np.abs(ref_logits).max())
    # Prefill of all positions (batch_verify; several prefill chunks).
    lib.reset()
    allpos = lib.prefill(tokens, all_logits=True)
    assert allpos.shape == ref_logits.shape
    assert np.abs(allpos - ref_logits).max() <= tol * scale
    # prefill() -> last position, then 32 decode steps through the KV cache.
    lib.reset()
    last = lib.prefill(tokens[:PROMPT])
    errors = [np.abs(last - ref_logits[PROMPT - 1]).max()]
    for i in range(PROMPT, PROMPT + DECODE):
        errors.append(np.abs(lib.decode(tokens[i]) - ref_logits[i]).max())
    assert max(errors) <= tol * scale, errors
    assert lib.num_tokens == PROMPT + DECODE


def test_q0f16_matches_hf_transformers(build_root, tiny_llama_dir):
    """Unquantized: the library against HF transformers' own model, float32."""
    import torch
    from transformers import AutoModelForCausalLM

    wd = L.weight_dir(build_root, tiny_llama_dir, "q0f16")
    lib = ModelLibrary(wd, L.library(build_root, wd), "cpu")
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tokens = _tokens(PROMPT + DECODE)
    _check_prefill_and_decode(lib, L.reference_logits(hf, tokens), tokens, FP32_TOL)


def test_untied_lm_head_matches_hf(build_root, tiny_llama_untied_dir):
    wd = L.weight_dir(build_root, tiny_llama_untied_dir, "q4f16_g32asym")
    lib = ModelLibrary(wd, L.library(build_root, wd), "cpu")
    assert any(p["name"] == "lm_head.weight" for p in lib.metadata["params"])
    ref = L.torch_reference(tiny_llama_untied_dir, wd)
    tokens = _tokens(PROMPT + DECODE, seed=1)
    _check_prefill_and_decode(lib, L.reference_logits(ref, tokens), tokens, FP32_TOL)


@pytest.mark.parametrize("mode", MODES[1:])
def test_quantized_matches_torch_reference(build_root, tiny_llama_dir, mode):
    """Quantized: the library against torch running pack.dequantize()'s weights."""
    wd = L.weight_dir(build_root, tiny_llama_dir, mode)
    lib = ModelLibrary(wd, L.library(build_root, wd), "cpu")
    ref = L.torch_reference(tiny_llama_dir, wd)
    tokens = _tokens(PROMPT + DECODE, seed=2)
    _check_prefill_and_decode(lib, L.reference_logits(ref, tokens), tokens, FP32_TOL)


def test_float16_library(build_root, tiny_llama_dir):
    """The float16 compute path (CUDA's default) on CPU, q4f16_1 with quantized embedding."""
    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_1")
    lib = ModelLibrary(wd, L.library(build_root, wd, dtype="float16"), "cpu")
    assert lib.metadata["desv_export"]["dtype"] == "float16"
    ref = L.torch_reference(tiny_llama_dir, wd)
    tokens = _tokens(PROMPT + DECODE, seed=3)
    _check_prefill_and_decode(lib, L.reference_logits(ref, tokens), tokens, FP16_TOL)


@pytest.mark.parametrize("mode", ["q0f16", "q4f16_1", "q2f16_g128asym"])
def test_greedy_tokens_identical(build_root, tiny_llama_dir, mode):
    from desv_export.engine.generation import Generator
    from desv_export.engine.sampler import SamplingConfig

    wd = L.weight_dir(build_root, tiny_llama_dir, mode)
    gen = Generator.open(wd, L.library(build_root, wd), "cpu")
    gen.stop_ids = set()  # compare a fixed number of tokens
    ref = L.torch_reference(tiny_llama_dir, wd)
    prompt = _tokens(PROMPT, seed=4)
    gen.reset()
    result = gen.generate_ids(prompt, max_new_tokens=DECODE, sampling=SamplingConfig(temperature=0))
    assert result.token_ids == L.reference_greedy(ref, prompt, DECODE)


def test_qwen2_qkv_bias(build_root, tiny_qwen2_dir):
    wd = L.weight_dir(build_root, tiny_qwen2_dir, "q4f16_g32asym")
    lib = ModelLibrary(wd, L.library(build_root, wd), "cpu")
    assert lib.metadata["model_type"] == "qwen2"
    assert any(p["name"].endswith("qkv_proj.bias") for p in lib.metadata["params"])
    ref = L.torch_reference(tiny_qwen2_dir, wd)
    tokens = _tokens(PROMPT + DECODE, seed=5)
    _check_prefill_and_decode(lib, L.reference_logits(ref, tokens), tokens, FP32_TOL)
