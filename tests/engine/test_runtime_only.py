"""The engine runs on TVM's runtime alone, as on a GPU machine that carries no TVM compiler.

``import tvm`` falls back to runtime-only mode when libtvm_compiler.so is absent (or with
TVM_USE_RUNTIME_LIB=1): tvm.relax and everything built on it cannot be imported there,
tvm.runtime.vm is not imported for us, and TVM's CUDA runtime and its load-time CUDA compile
callback are not set up (engine/library.py and engine/cuda_jit.py do both).
benchmarks/gpu_kit.py relies on all of this.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from desv_export.cli import main
from tests.engine import libraries as L
from tests.runtime_only import run_runtime_only


def test_generate_and_eval_with_runtime_only_tvm(tmp_path, build_root, tiny_llama_dir):
    wd = L.weight_dir(build_root, tiny_llama_dir, "q4f16_g128asym")
    lib = L.library(build_root, wd)
    gen = ["generate", str(wd), "--model-lib", str(lib), "--prompt", "the company said",
           "--max-new-tokens", "12", "--temperature", "0", "--no-stream"]
    ppl = ["eval", str(wd), "--model-lib", str(lib), "--dataset", "ptb", "--seqlen", "64",
           "--max-windows", "2", "--json", "--quiet"]
    for args in (gen, ppl):
        full = CliRunner().invoke(main, args)
        assert full.exit_code == 0, full.output
        proc = run_runtime_only(tmp_path, args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout == full.stdout and proc.stdout  # the same greedy text, the same perplexity
    assert json.loads(proc.stdout)["ptb"] > 1.0
