"""Libraries compiled beforehand (--compile-only) and measured with TVM's runtime only (--libs).

The measuring runs are subprocesses with TVM_USE_RUNTIME_LIB=1 (TVM as a GPU machine that
carries no libtvm_compiler.so sees itself) and an import hook that records and refuses every
import of TVM's compiler, in the bench process and in its worker processes alike.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from desv_export.bench.libraries import misfit, read_metadata
from desv_export.cli import main
from tests.runtime_only import run_runtime_only

MODE = "q4f16_g128asym"
SIZES = ["--prompt-len", "8", "--gen-len", "4"]  # a context window of 12 tokens
def bench_args(out, libs, *extra) -> list[str]:
    return ["bench", "--synthetic", "tiny", "--target", "llvm", "--modes", MODE, *SIZES, "-o", str(out),
            "--libs", str(libs), *extra]


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    """The library, compiled by a --compile-only run in this (full TVM) process."""
    out = tmp_path_factory.mktemp("compile-only")
    result = CliRunner().invoke(main, bench_args(out / "out", out / "libs", "--compile-only"))
    assert result.exit_code == 0, result.output
    return out


def test_compile_only_writes_the_library_and_no_weights(libs):
    lib = libs / "libs" / f"{MODE}-llvm.so"
    assert lib.is_file()
    assert not list(libs.rglob("params_shard_*.bin"))  # synthetic weights: metadata only, then gone
    assert not (libs / "out" / "work" / MODE).exists() and not list((libs / "out" / "work").iterdir())
    meta = read_metadata(lib)
    assert (meta["context_window_size"], meta["prefill_chunk_size"]) == (12, 8)
    before = lib.stat().st_mtime_ns
    again = CliRunner().invoke(main, bench_args(libs / "out", libs / "libs", "--compile-only"))
    assert again.exit_code == 0, again.output
    assert f"Reusing {lib}" in again.output and again.stdout.strip() == str(lib)
    assert lib.stat().st_mtime_ns == before


def test_runtime_only_bench_measures_with_the_prebuilt_library(libs, tmp_path):
    out = tmp_path / "out"
    args = bench_args(out, libs / "libs", "--baselines", "", "--runs", "1", "--warmup", "0")
    proc = run_runtime_only(tmp_path, args)
    assert proc.returncode == 0, proc.stderr
    assert f"Reusing {libs / 'libs' / f'{MODE}-llvm.so'}" in proc.stderr
    data = json.loads((out / "deploy_tiny_llvm.json").read_text())
    assert [r["mode"] for r in data["rows"]] == [MODE]
    for key in ("prefill_tok_s", "decode_tok_s", "rm_bytes", "wm_bytes", "roofline_pct"):
        assert data["rows"][0][key] > 0, key
    assert not list((out / "work").glob("*.so"))  # nothing compiled beside the weights


def test_runtime_only_library_too_small_is_a_one_line_error(libs, tmp_path):
    args = bench_args(tmp_path / "out", libs / "libs", "--baselines", "", "--gen-len", "8")
    proc = run_runtime_only(tmp_path, args)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and f"{MODE}-llvm.so" in errors[0], proc.stderr
    assert "context window is 12 tokens, this run needs 16" in errors[0] and "--compile-only" in errors[0]


def test_library_too_small_is_recompiled(libs, tmp_path):
    shutil.copytree(libs / "libs", tmp_path / "libs")
    lib = tmp_path / "libs" / f"{MODE}-llvm.so"
    result = CliRunner().invoke(main, bench_args(tmp_path / "out", tmp_path / "libs", "--compile-only",
                                                 "--gen-len", "8"))
    assert result.exit_code == 0, result.output
    assert f"Not reusing {lib}: its context window is 12 tokens, this run needs 16" in result.output
    # compile's own report (this process cannot re-read the replaced .so: dlopen caches it by path)
    assert "for the 16-token context window" in result.output and f"Wrote {lib}" in result.output


def test_cuda_library_fits_or_not_on_a_machine_without_gpu(tmp_path, tiny_llama_dir):
    """A CUDA library's metadata reads without a CUDA driver, and leaves no loader behind."""
    import tvm_ffi

    from tests.engine import libraries as L

    wd = L.weight_dir(tmp_path, tiny_llama_dir, MODE)
    built = L.library(tmp_path, wd, target="cuda", arch="sm_80")  # shared with tests/compile
    assert tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None
    sizes = {"context_window_size": 24, "prefill_chunk_size": 16}
    assert misfit(built, wd, target="cuda", arch="sm_80", **sizes) is None
    assert misfit(built, wd, target="cuda", arch="sm_90", **sizes) == "it was compiled for cuda sm_80, not cuda sm_90"
    assert "compiled for cuda" in misfit(built, wd, target="llvm", arch=None, **sizes)
    assert tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None
    (tmp_path / "libs").mkdir()
    shutil.copy(built, tmp_path / "libs" / f"{MODE}-cuda.so")
    result = CliRunner().invoke(main, ["bench", str(wd), "--target", "cuda", "--arch", "sm_80", "--prompt-len", "16",
                                       "--gen-len", "8", "-o", str(tmp_path / "out"), "--libs",
                                       str(tmp_path / "libs"), "--compile-only"])
    assert result.exit_code == 0, result.output
    assert f"Reusing {tmp_path / 'libs' / f'{MODE}-cuda.so'}" in result.output


def test_measuring_cuda_without_gpu_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--synthetic", "tiny", "--target", "cuda", "--modes", MODE,
                                  "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "no" in r.output and "GPU" in r.output and "--compile-only" in r.output
    assert not (tmp_path / "o" / "work" / MODE).exists()  # refused before any weights were written
