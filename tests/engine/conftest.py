"""Session-wide build root for the engine tests (libraries are cached in tests.engine.libraries)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("libs")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    """A 2-layer random Qwen2 (q/k/v biases) in float16."""
    from tests.tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "qwen2", arch="qwen2")
