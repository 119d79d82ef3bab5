"""benchmarks/gpu_kit.py: a warm kit is never shipped with kernels the code no longer makes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gpu_kit():
    spec = importlib.util.spec_from_file_location("gpu_kit", ROOT / "benchmarks/gpu_kit.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_kit"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_built_parts_are_dropped_when_sources_or_arch_change(tmp_path, monkeypatch):
    kit = _gpu_kit()
    for name in ("kernels", "test-libs", "site"):
        (tmp_path / name).mkdir()
    kit.drop_stale(tmp_path, "sm_90")  # no stamp yet: whatever is there is of unknown origin
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "sources.json"]
    stamp = json.loads((tmp_path / "sources.json").read_text())
    assert stamp == {"sources": kit.source_fingerprint(), "arch": "sm_90"}

    (tmp_path / "kernels").mkdir()
    kit.drop_stale(tmp_path, "sm_90")  # same sources, same arch: kept
    assert (tmp_path / "kernels").is_dir()
    kit.drop_stale(tmp_path, "sm_80")  # another arch
    assert not (tmp_path / "kernels").exists()

    (tmp_path / "kernels").mkdir()
    monkeypatch.setattr(kit, "source_fingerprint", lambda: "changed")  # a schedule was edited
    kit.drop_stale(tmp_path, "sm_80")
    assert not (tmp_path / "kernels").exists() and (tmp_path / "site").is_dir()


def test_fingerprint_covers_the_schedules():
    kit = _gpu_kit()
    assert "tvm_schedules" in kit.SOURCES and "desv_export" in kit.SOURCES
    assert len(kit.source_fingerprint()) == 64
    files = {str(path.relative_to(kit.ROOT)) for path in kit.tree_files(*kit.SOURCES)}
    assert "tvm_schedules/gemv.py" in files and "desv_export/compile.py" in files
    assert not any(name.startswith("tvm_schedules/cpu/") for name in files)  # CPU-only rules
