"""Session-wide build root for the engine tests (libraries are cached in tests.engine.libraries)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("libs")
