"""Shared fixtures: each model, export and compiled library is built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import make_tiny_llama

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer random LLaMA with GQA and tied embeddings (float16 safetensors)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_llama_untied_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama-untied", tie=False)


@pytest.fixture(scope="session")
def wikitext_dir() -> Path:
    """../shared/data/wikitext-2: only on developers' machines and in CI."""
    d = SHARED_DATA / "wikitext-2"
    if not d.is_dir():
        pytest.skip(f"WikiText-2 is not here ({d}); it ships only with the developers' shared/")
    return d


@pytest.fixture(scope="session")
def example_model_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as an fp16 HF directory, built once from the bundled GGUF (slow tests)."""
    from desv_export.example_model import write_example_model

    return write_example_model(tmp_path_factory.mktemp("example") / "smollm2-135m")
