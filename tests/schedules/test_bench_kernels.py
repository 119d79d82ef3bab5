"""The CPU side of benchmarks/kernels.py: shape tables, kernel building, result formatting."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kernels():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks/kernels.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernels"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_shape_table_is_llama(kernels):
    shapes = {name: (n, k) for name, n, k in kernels.linear_shapes("llama-7b")}
    assert shapes == {"qkv_proj": (12288, 4096), "o_proj": (4096, 4096),
                      "gate_up_proj": (22016, 4096), "down_proj": (4096, 11008),
                      "lm_head": (32000, 4096)}
    assert dict((n, (a, b)) for n, a, b in kernels.linear_shapes("llama-13b"))["down_proj"] == (
        5120, 13824)
    table = kernels.kernel_table(["llama-7b", "llama-13b"], kernels.QUANT_MODES,
                                 list(kernels.BATCHES))
    # ours and dlight for every kernel; the tensor-core GEMV for b1 where groups hold whole
    # words (the 7 2- and 4-bit modes and q3f16_1)
    assert len(table) == 2 * 5 * 11 * 4 * 2 + 2 * 5 * 8
    assert len({k.id for k in table}) == len(table)
    tc = [k for k in table if k.schedule == "ours-tc"]
    assert {k.batch_class for k in tc} == {"b1"}
    assert "q3f16_1" in {k.mode for k in tc} and "q3f16_g128asym" not in {k.mode for k in tc}


def test_moved_bytes_count_packed_weights(kernels):
    spec = kernels.KernelSpec("x", "llama-7b", "o_proj", 4096, 4096, "q4f16_1", "b1", 1, 1,
                              "ours")
    # 4096 x 4096 4-bit codes + one float16 scale per 32 codes
    assert spec.weight_bytes() == 4096 * 4096 // 2 + 4096 * 128 * 2
    assert spec.moved_bytes() == spec.weight_bytes() + 2 * (4096 + 4096)


def test_schedules_match_the_pipelines(kernels, sm90):
    owners = {}
    for spec in kernels.kernel_table(["tiny"], ["q2f16_g128asym"], list(kernels.BATCHES)):
        # dlight's Matmul imports TVM's CUDA tensor intrinsics on first use (~50 s here).
        if spec.linear != "o_proj" or (spec.schedule == "dlight" and spec.rows > 8):
            continue
        kernels.schedule_kernel(spec, sm90)
        owners[(spec.batch_class, spec.schedule)] = spec.rule
    assert owners[("b1", "ours")] == "ours.DecodeGEMV"
    assert owners[("b1", "ours-tc")] == "ours.TensorCoreGEMV"
    assert ("b4", "ours-tc") not in owners
    assert owners[("b4", "ours")] == "ours.LowBatchGEMV"
    assert owners[("b16", "ours")] == "ours.DequantGEMM"
    assert owners[("prefill512", "ours")] == "ours.LowBatchDispatch"  # as the model's prefill
    assert owners[("b4", "dlight")] == "dlight.LowBatchGEMV"  # MLC's symbolic-batch path
    assert owners[("b1", "dlight")].startswith("dlight.")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_build_writes_libraries_binaries_and_manifest(kernels, tmp_path):
    out = tmp_path / "k"
    kernels.build(out, "sm_80", ["tiny"], ["q4f16_1"], ["b1"], log=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    # 5 linears x (ours, dlight, the tensor-core GEMV)
    assert len(manifest["kernels"]) == 15 and manifest["arch"] == "sm_80"
    assert {k["rule"] for k in manifest["kernels"] if k["schedule"] == "ours-tc"} == {
        "ours.TensorCoreGEMV"}
    first = manifest["kernels"][0]
    assert (out / first["lib"]).stat().st_size > 0 and first["symbol"].startswith("k")
    assert first["arg_shapes"][0] == [[1, 1, 256], "float16"]
    assert len(list(out.glob("*.fatbin"))) == 1
    with pytest.raises(Exception):  # existing output needs force
        kernels.build(out, "sm_80", ["tiny"], ["q4f16_1"], ["b1"], log=lambda *_: None)


def test_results_markdown_and_files(kernels, tmp_path):
    rows = [
        {"model": "llama-7b", "linear": "o_proj", "mode": "q2f16_g128asym", "batch": "b1",
         "schedule": "ours", "us": 5.0, "gbs": 900.0, "pct_copy": 45.0, "rule": "ours.DecodeGEMV"},
        {"model": "llama-7b", "linear": "o_proj", "mode": "q2f16_g128asym", "batch": "b1",
         "schedule": "dlight", "us": 10.0, "gbs": 450.0, "pct_copy": 22.5, "rule": "dlight.GEMV"},
    ]
    result = {"gpu": "NVIDIA H100 80GB HBM3", "copy_gbs": 2000.0, "arch": "sm_90", "tvm": "0.27",
              "timer": "cuda-events-rotated", "date": "2026-11-23", "host": "h",
              "kernels": kernels.add_speedups(rows),
              "peers": [{"peer": "gemlite", "bits": 2, "error": "ImportError: no gemlite"}]}
    assert rows[0]["speedup_vs_dlight"] == 2.0
    md = kernels.markdown(result)
    assert "NVIDIA H100 80GB HBM3" in md and "2000.0 GB/s" in md
    assert "| q2f16_g128asym | o_proj | 5.00 | 900 | 45.0 | 10.00 | 22.5 | 2.0 | - | - |" in md
    assert "error: ImportError" in md
    js, mdp = kernels.write_results(result, tmp_path)
    assert js.name == "kernels-nvidia-h100-80gb-hbm3.json" and mdp.read_text() == md
    assert json.loads(js.read_text())["kernels"][0]["speedup_vs_dlight"] == 2.0


def test_timings_carry_the_static_audit(kernels, tmp_path):
    """The GPU report puts the audit's instructions per code and warps per SM beside each time."""
    rows = [{"id": "a", "model": "llama-7b", "linear": "o_proj", "mode": "q4f16_1", "batch": "b1",
             "schedule": s, "us": 5.0 * (i + 1), "gbs": 900.0, "pct_copy": 45.0}
            for i, s in enumerate(("ours", "dlight"))]
    rows[1]["id"] = "b"
    audit = {"kernels": [{"id": "a", "instructions_per_fma": 4.781, "blocks_per_sm": 10, "threads_per_block": 128},
                         {"id": "b", "instructions_per_fma": 8.12, "blocks_per_sm": 2, "threads_per_block": 1024}]}
    (tmp_path / "kernel-audit-sm_90.json").write_text(json.dumps(audit))
    rows = kernels.attach_audit(kernels.add_speedups(rows), "sm_90", tmp_path)
    assert rows[0]["static_instr_per_code"] == 4.78 and rows[0]["static_warps_per_sm"] == 40
    assert rows[1]["static_warps_per_sm"] == 64
    md = kernels.markdown({"gpu": "g", "copy_gbs": 1.0, "arch": "sm_90", "timer": "t", "date": "d",
                           "kernels": rows, "peers": []})
    assert "| 2.0 | 4.78 : 8.12 | 40 : 64 |" in md
    assert kernels.attach_audit([{"id": "a"}], "sm_80", tmp_path) == [{"id": "a"}]  # no audit there


def test_audit_reads_the_kernel_the_rows_run():
    """A dispatched prefill function holds four kernels, the GEMM last; others hold one."""
    spec = importlib.util.spec_from_file_location("kernel_audit", ROOT / "benchmarks/kernel_audit.py")
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    resources = {"k1_kernel": "gemv", "k1_kernel_1": "low2", "k1_kernel_2": "low4",
                 "k1_kernel_3": "gemm", "k10_kernel": "only", "k2_kernel": "decode"}
    assert audit.timed_kernel(resources, "k1") == "gemm"
    assert audit.timed_kernel(resources, "k10") == "only"
    assert audit.timed_kernel(resources, "k2") == "decode"


def test_tensor_core_gemv_rows_compare_with_ours(kernels):
    """The experimental kernel's time goes beside DecodeGEMV's, with its speedup over it."""
    base = {"model": "llama-7b", "linear": "o_proj", "mode": "q2f16_g128asym", "batch": "b1",
            "gbs": 900.0, "pct_copy": 45.0}
    rows = [{**base, "id": s, "schedule": s, "us": us}
            for s, us in (("ours", 6.0), ("dlight", 12.0), ("ours-tc", 4.0))]
    rows = kernels.add_speedups(rows)
    assert rows[2]["speedup_vs_ours"] == 1.5 and rows[2]["speedup_vs_dlight"] == 3.0
    assert "speedup_vs_ours" not in rows[0]
    md = kernels.markdown({"gpu": "g", "copy_gbs": 1.0, "arch": "sm_90", "timer": "t", "date": "d",
                           "kernels": rows, "peers": []})
    assert "| 4.00 (45.0 %, 1.5x) |" in md
