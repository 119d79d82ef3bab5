"""The deployment benchmark: for each mode export (or synthesize), compile, generate, measure.

Rows are measured one process each (``worker.py``) so each row's running memory is its own.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..mlc.tensor_cache import read_index
from ..modes import get_mode
from .presets import SYNTHETIC
from .timing import copy_bandwidth_cpu, copy_bandwidth_cuda

DEFAULT_MODES = ("q0f16", "q4f16_g128asym", "q3f16_g128asym", "q2f16_g128asym", "q4f16_1", "q3f16_1")
# HF transformers generate() as is, and with torch's int4 weight-only matmul in its linears.
BASELINES = ("hf", "torch-int4")


def bits_label(mode: str) -> str:
    """The paper's column: FP16, W4A16g128, ... (MLC's presets keep their names beside it)."""
    m = get_mode(mode)
    if not m.quantized:
        return "FP16"
    return f"W{m.bits}A16g{m.group_size}" + ("" if not m.symmetric else " sym")


def weight_bytes(weight_dir: Path) -> tuple[int, int]:
    """(WM, bytes read per decoded token): an untied embedding is gathered, not read whole."""
    index = read_index(weight_dir)
    records = [r for shard in index["records"] for r in shard["records"]]
    wm = sum(r["nbytes"] for r in records)
    tied = not any(r["name"].startswith("lm_head.") for r in records)
    gathered = 0 if tied else sum(r["nbytes"] for r in records if r["name"].startswith("model.embed_tokens."))
    return wm, wm - gathered


def _worker(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "desv_export.bench.worker", json.dumps(spec)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"benchmark run of {spec.get('model_lib') or 'the HF baseline'} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def environment(device: str, bandwidth: float) -> dict:
    import torch
    import tvm

    env = {"device": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "tvm": tvm.__version__, "torch": torch.__version__, "python": platform.python_version(),
           "copy_bandwidth_gbs": bandwidth / 1e9}
    if device == "cuda":
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, check=True).stdout.strip()
        env["device"], env["driver"] = [s.strip() for s in q.split(",", 1)]
    else:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    env["device"] = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return env


def run_bench(
    *,
    out_dir: Path,
    source: Path | None = None,
    synthetic: str | None = None,
    modes: tuple[str, ...] = DEFAULT_MODES,
    target: str = "auto",
    arch: str | None = None,
    prompt_len: int = 128,
    gen_len: int = 256,
    runs: int = 3,
    warmup: int = 1,
    baselines: tuple[str, ...] = BASELINES,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every mode and the HF baseline; return the result dict (the report's source)."""
    from ..compile import compile_model, gpu_visible
    from ..export import export_model
    from .synthetic import write_synthetic

    if (source is None) == (synthetic is None):
        raise UserError("pass either a model directory or --synthetic NAME, not both")
    for m in modes:
        get_mode(m)
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise UserError(f"--baselines {','.join(sorted(unknown))} is not one of {', '.join(BASELINES)}")
    if target == "auto":
        target = "cuda" if gpu_visible() else "llvm"
    device = "cuda" if target == "cuda" else "cpu"
    work = Path(out_dir) / "work"
    work.mkdir(parents=True, exist_ok=True)

    if synthetic is not None:
        if synthetic not in SYNTHETIC:
            raise UserError(f"--synthetic {synthetic} is not a preset; choose one of {', '.join(SYNTHETIC)}")
        config, name = SYNTHETIC[synthetic], f"synthetic {synthetic}"
    else:
        source = Path(source)
        if (source / "mlc-chat-config.json").is_file():  # an exported weight directory: its one mode
            cfg = json.loads((source / "mlc-chat-config.json").read_text())
            modes, config = (cfg["quantization"],), None
        else:
            from ..hf import read_config

            config = read_config(source)
        name = source.name
    vocab = (config or {}).get("vocab_size") or cfg["vocab_size"]
    rng = np.random.default_rng(seed)
    prompt_ids = [int(x) for x in rng.integers(3, vocab, prompt_len)]
    common = {"device": device, "prompt_ids": prompt_ids, "gen_len": gen_len, "runs": runs, "warmup": warmup}

    bandwidth = copy_bandwidth_cuda() if device == "cuda" else copy_bandwidth_cpu()
    rows = []
    for mode in modes:
        if synthetic is not None:
            wdir = write_synthetic(synthetic, mode, work / mode, seed=seed)
        elif config is None:
            wdir = source
        else:
            wdir = export_model(source, work / mode, mode, force=True)
        lib = work / f"{mode}-{target}.so"
        # Size the library for this run (MLC's --overrides): the KV cache and temporaries
        # then hold what the benchmark's prompt and generation need, and no more.
        compile_model(wdir, lib, target=target, arch=arch, force=True, context_window_size=prompt_len + gen_len,
                      prefill_chunk_size=prompt_len, log=log)
        log(f"Measuring {mode} ...")
        r = _worker({**common, "kind": "library", "weight_dir": str(wdir), "model_lib": str(lib)})
        wm, read_per_token = weight_bytes(wdir)
        floor_s = read_per_token / bandwidth
        rows.append({"mode": mode, "bits": bits_label(mode), "wm_bytes": wm, "bytes_per_token": read_per_token,
                     "roofline_pct": 100.0 * floor_s * r["decode_tok_s"], **r})
        log(f"  {mode}: prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s")
    for baseline in baselines:
        log(f"Measuring the {baseline} baseline ...")
        if synthetic is None and config is None:
            log("  (skipped: an exported weight directory has no HF checkpoint to compare)")
            continue
        spec = {**common, "kind": "hf", "int4": baseline == "torch-int4"}
        spec |= {"hf_config": config} if synthetic is not None else {"hf_dir": str(source)}
        r = _worker(spec)
        label = f"HF transformers ({r['dtype']})"
        bits = "FP16" if device == "cuda" else "FP32"
        if spec["int4"]:
            label = f"HF + torch int4 weight-only (g{'/'.join(map(str, r['int4_groups']))})"
            bits = "W4 (tinygemm)"
        rows.append({"mode": label, "bits": bits, "bytes_per_token": r["wm_bytes"],
                     "roofline_pct": 100.0 * r["wm_bytes"] / bandwidth * r["decode_tok_s"], **r})
    return {
        "model": name, "target": target, "prompt_len": prompt_len, "gen_len": gen_len, "runs": runs,
        "warmup": warmup, "rm_method": rows[0]["rm_method"], "environment": environment(device, bandwidth),
        "rows": rows,
    }
