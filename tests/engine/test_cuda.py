"""On a GPU: the CUDA library computes the model (the CPU correctness tests, test_logits.py, on cuda).

Skipped where no GPU is visible (CI, these machines). On a GPU machine that carries only TVM's
runtime, the libraries come compiled from elsewhere (``DESV_TEST_LIBS``, see
benchmarks/gpu_kit.py); the tiny models and their weights are made here, as on the CPU.

Tolerances are test_logits.py's: float32 libraries within 1e-4 x max|logit| of float32 torch
(GPU float32 matmuls differ from the CPU's only in summation order); float16 libraries, MLC's
default on CUDA, within 5e-3 x max|logit| (activations rounded to float16 at every layer
boundary, measured 1.8e-3 on the CPU float16 library). Greedy tokens are compared for float32
libraries only: with float16 activations, a near-tie between the two best logits of a random
tiny model may legitimately go either way.
"""

from __future__ import annotations

import pytest

from desv_export.engine.library import ModelLibrary, gpu_visible
from tests.engine import libraries as L
from tests.engine.test_logits import DECODE, FP16_TOL, FP32_TOL, MODES, PROMPT, _check_prefill_and_decode, _tokens

pytestmark = pytest.mark.skipif(not gpu_visible(), reason="needs a CUDA GPU (device tool)")

# (mode, dtype): what the GPU runs; benchmarks/gpu_kit.py prepare compiles exactly these.
FLOAT16_CASES = [(mode, "float16") for mode in MODES]
FLOAT32_CASES = [("q0f16", "float32"), ("q4f16_1", "float32"), ("q2f16_g128asym", "float32")]
CASES = FLOAT16_CASES + FLOAT32_CASES


def cuda_library(build_root, wdir, dtype: str, arch: str):
    return L.library(build_root, wdir, target="cuda", arch=arch, dtype=dtype)


@pytest.fixture(scope="module")
def arch() -> str:
    from desv_export.engine.cuda_jit import visible_arch

    return visible_arch()


def test_q0f16_float32_matches_hf_transformers(build_root, tiny_llama_dir, arch):
    import torch
    from transformers import AutoModelForCausalLM

    wd = L.weight_dir(build_root, tiny_llama_dir, "q0f16")
    lib = ModelLibrary(wd, cuda_library(build_root, wd, "float32", arch), "cuda")
    assert lib.device.dlpack_device_type() == 2  # kDLCUDA
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tokens = _tokens(PROMPT + DECODE)
    _check_prefill_and_decode(lib, L.reference_logits(hf, tokens), tokens, FP32_TOL)


@pytest.mark.parametrize("mode,dtype", CASES[1:], ids=[f"{m}-{d}" for m, d in CASES[1:]])
def test_matches_torch_reference(build_root, tiny_llama_dir, arch, mode, dtype):
    """Every export mode, float16 (our schedules' path) and float32, against torch running
    pack.dequantize()'s weights: prefill (several chunks, batch_verify) and 32 decode steps."""
    wd = L.weight_dir(build_root, tiny_llama_dir, mode)
    lib = ModelLibrary(wd, cuda_library(build_root, wd, dtype, arch), "cuda")
    ref = L.torch_reference(tiny_llama_dir, wd)
    tokens = _tokens(PROMPT + DECODE, seed=2)
    _check_prefill_and_decode(lib, L.reference_logits(ref, tokens), tokens, FP16_TOL if dtype == "float16" else FP32_TOL)


@pytest.mark.parametrize("mode", [m for m, _ in FLOAT32_CASES])
def test_greedy_tokens_identical(build_root, tiny_llama_dir, arch, mode):
    from desv_export.engine.generation import Generator
    from desv_export.engine.sampler import SamplingConfig

    wd = L.weight_dir(build_root, tiny_llama_dir, mode)
    gen = Generator.open(wd, cuda_library(build_root, wd, "float32", arch), "cuda")
    gen.stop_ids = set()
    ref = L.torch_reference(tiny_llama_dir, wd)
    prompt = _tokens(PROMPT, seed=4)
    gen.reset()
    result = gen.generate_ids(prompt, max_new_tokens=DECODE, sampling=SamplingConfig(temperature=0))
    assert result.token_ids == L.reference_greedy(ref, prompt, DECODE)
