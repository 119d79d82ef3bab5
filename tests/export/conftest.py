"""Session-scoped exports of the tiny models: each (source, mode, options) is exported once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.export.calibrated import make_calibrated
from tests.tiny_models import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """Qwen2 flavour (qkv bias), untied head."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "qwen2", arch="qwen2", tie=False)


@pytest.fixture(scope="session")
def sources(tiny_llama_dir, tiny_llama_untied_dir):
    return {"tied": tiny_llama_dir, "untied": tiny_llama_untied_dir}


@pytest.fixture(scope="session")
def calibrated(tmp_path_factory, sources):
    """calibrated(which, bits, group) -> a contract-1 checkpoint with a non-RTN (LWC-like) grid."""
    cache: dict = {}

    def get(which: str, bits: int, group: int) -> Path:
        key = (which, bits, group)
        if key not in cache:
            out = tmp_path_factory.mktemp("calib") / f"{which}-q{bits}g{group}"
            cache[key] = make_calibrated(sources[which], out, bits, group, seed=bits * 100 + group)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def exported(tmp_path_factory, sources):
    """exported(src_or_name, mode, **options) -> MLC weight directory (cached per session)."""
    from desv_export.export import export_model

    cache: dict = {}

    def get(src, mode: str, **options) -> Path:
        src = sources.get(src, src) if isinstance(src, str) else src
        key = (str(src), mode, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("mlc") / mode
            cache[key] = export_model(src, out, mode, **options)
        return cache[key]

    return get
