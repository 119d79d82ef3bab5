"""End to end on the real example model (SmolLM2-135M-Instruct): the capital of France.

Slow (about 3 minutes on 2 cores: GGUF conversion, two exports, two llvm compiles, two
generations); CI runs it once.
"""

from __future__ import annotations

import pytest

from tests.engine import libraries as L

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2(example_model_dir):
    """The session's one SmolLM2-135M-Instruct HF directory (tests/conftest.py)."""
    return example_model_dir


@pytest.mark.slow
def test_hf_transformers_answers_paris(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["q0f16", "q4f16_1"])
def test_greedy_answer_names_paris(build_root, smollm2, mode):
    from desv_export.engine.generation import Generator
    from desv_export.engine.sampler import SamplingConfig

    wd = L.weight_dir(build_root, smollm2, mode)
    lib = L.library(build_root, wd, context_window_size=512, prefill_chunk_size=128)
    gen = Generator.open(wd, lib, "cpu")
    result = gen.complete(QUESTION, max_new_tokens=24, sampling=SamplingConfig(temperature=0))
    assert "Paris" in result.text, result.text
    assert result.stats.decode_tokens_per_s > 0
