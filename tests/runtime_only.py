"""Run the CLI in a subprocess that has TVM's runtime only, as a GPU machine without TVM's compiler.

TVM_USE_RUNTIME_LIB=1 makes ``import tvm`` runtime-only, and an import hook (sitecustomize, so
worker processes get it too) records and refuses every import of TVM's compiler or of our code
built on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPILER = ("tvm.relax", "tvm.s_tir", "desv_export.compile", "desv_export.model", "tvm_schedules")

# sitecustomize.py for the runtime-only subprocesses (and the workers they start).
IMPORT_GUARD = f"""
import importlib.abc, os, sys

class _NoCompiler(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == c or name.startswith(c + ".") for c in {COMPILER!r}):
            with open(os.environ["DESV_TEST_IMPORT_LOG"], "a") as f:
                f.write(f"{{os.getpid()}} {{name}}\\n")
            raise ImportError(name + " is TVM's compiler: the measuring path must not import it")
        return None

sys.meta_path.insert(0, _NoCompiler())
"""
# The CLI as `desv-export` runs it, then what the process imported.
RUN_CLI = f"""
import sys
from desv_export.cli import main
try:
    main(sys.argv[1:], prog_name="desv-export")
finally:
    import tvm
    print("RUNTIME_ONLY", tvm.base._RUNTIME_ONLY, file=sys.stderr)
    print("COMPILER", sorted(m for m in sys.modules if m.startswith({COMPILER!r})), file=sys.stderr)
"""


def run_runtime_only(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``desv-export ARGS`` there; asserts it stayed runtime-only and imported no compiler."""
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(IMPORT_GUARD)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "DESV_TEST_IMPORT_LOG": str(tmp_path / "imports.log"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(guard), str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", RUN_CLI, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    assert "RUNTIME_ONLY True" in proc.stderr, proc.stderr
    assert "COMPILER []" in proc.stderr, proc.stderr
    assert not (tmp_path / "imports.log").exists(), (tmp_path / "imports.log").read_text()
    return proc
