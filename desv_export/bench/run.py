"""The deployment benchmark: for each mode export (or synthesize), compile, generate, measure.

Rows are measured one process each (``worker.py``) so each row's running memory is its own;
with ``rounds`` > 1 every row is measured once a round and its runs are pooled.
Measuring needs only TVM's runtime: libraries compiled beforehand (``build_libraries``, the
``--compile-only`` run) are reused, and the compiler and exporter are imported only when a
library or a weight directory has to be built here.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..engine.library import gpu_visible
from ..errors import UserError
from ..mlc.tensor_cache import read_index
from ..modes import get_mode
from .libraries import ensure_library, library_path
from .presets import SYNTHETIC
from .timing import copy_bandwidth_cuda, pool, read_bandwidth_cpu

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


# What the roofline's bandwidth is: on a GPU MLC's and the device-to-device copy; on a
# CPU a read-only sum, since a memcpy's write stream makes it slower than a weight read.
BANDWIDTH_METHODS = {
    "cuda": "device-to-device copy, read + write bytes counted (torch, CUDA events)",
    "cpu": "read-only sum over 512 MiB on every torch thread (timing.read_bandwidth_cpu)",
}


def environment(device: str, bandwidth: float) -> dict:
    import torch
    import tvm

    env = {"device": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "tvm": tvm.__version__, "torch": torch.__version__, "python": platform.python_version(),
           "bandwidth_gbs": bandwidth / 1e9,
           "bandwidth_method": BANDWIDTH_METHODS[device]}
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


@dataclass
class _Source:
    """What the modes are built from: a synthetic preset, an HF directory or one weight dir."""

    name: str  # the report's model name
    modes: tuple[str, ...]
    config: dict | None  # config.json (preset or HF directory); None for an exported weight dir
    vocab_size: int
    synthetic: str | None = None
    path: Path | None = None

    def weight_dir(self, mode: str, work: Path, seed: int, *, shards: bool = True) -> Path:
        """The weight directory of ``mode``: written (synthetic), exported (HF) or given."""
        if self.synthetic is not None:
            from .synthetic import write_synthetic

            return write_synthetic(self.synthetic, mode, work / mode, seed=seed, shards=shards)
        if self.config is None:
            return self.path
        from ..export import export_model

        return export_model(self.path, work / mode, mode, force=True)


def _source(source: Path | None, synthetic: str | None, modes: tuple[str, ...]) -> _Source:
    if (source is None) == (synthetic is None):
        raise UserError("pass either a model directory or --synthetic NAME, not both")
    for m in modes:
        get_mode(m, "--modes")
    if synthetic is not None:
        if synthetic not in SYNTHETIC:
            raise UserError(f"--synthetic {synthetic} is not a preset; choose one of {', '.join(SYNTHETIC)}")
        config = SYNTHETIC[synthetic]
        return _Source(f"synthetic {synthetic}", modes, config, config["vocab_size"], synthetic=synthetic)
    source = Path(source)
    if (source / "mlc-chat-config.json").is_file():  # an exported weight directory: its one mode
        cfg = json.loads((source / "mlc-chat-config.json").read_text())
        return _Source(source.name, (cfg["quantization"],), None, cfg["vocab_size"], path=source)
    from ..hf import read_config

    config = read_config(source)
    return _Source(source.name, modes, config, config["vocab_size"], path=source)


def _target(target: str, arch: str | None) -> str:
    """``auto`` resolved with TVM's runtime only (cuda when a GPU is visible)."""
    if target == "auto":
        target = "cuda" if gpu_visible() else "llvm"
    if arch and target != "cuda":
        raise UserError("--arch applies only to --target cuda")
    return target


def _dirs(out_dir: Path, libs_dir: Path | None) -> tuple[Path, Path]:
    """(OUT/work: the weight directories, the libraries' directory: --libs, default OUT/work)."""
    work = Path(out_dir) / "work"
    work.mkdir(parents=True, exist_ok=True)
    return work, Path(libs_dir) if libs_dir is not None else work


def _sizes(prompt_len: int, gen_len: int) -> dict[str, int]:
    """The library sized for this run (MLC's --overrides): the KV cache and temporaries then hold
    what the benchmark's prompt and generation need, and no more."""
    return {"context_window_size": prompt_len + gen_len, "prefill_chunk_size": prompt_len}


def build_libraries(
    *,
    out_dir: Path,
    source: Path | None = None,
    synthetic: str | None = None,
    modes: tuple[str, ...] = DEFAULT_MODES,
    target: str = "auto",
    arch: str | None = None,
    prompt_len: int = 128,
    gen_len: int = 256,
    libs_dir: Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """``--compile-only``: every mode's library in ``libs_dir`` (default OUT/work), reused or
    compiled, for a later run (on a GPU machine with TVM's runtime only) to measure.

    Synthetic weights are written without their shards (a 7B model's are 4-13 GB a mode),
    in a temporary directory: compiling reads only their names, shapes and dtypes.
    """
    src = _source(source, synthetic, modes)
    target = _target(target, arch)
    work, libs = _dirs(out_dir, libs_dir)
    built = {}
    with tempfile.TemporaryDirectory(prefix=".metadata-only-", dir=work) as tmp:
        for mode in src.modes:
            wdir = src.weight_dir(mode, Path(tmp) if src.synthetic else work, seed, shards=False)
            built[mode] = ensure_library(wdir, library_path(libs, mode, target), target=target, arch=arch,
                                         log=log, **_sizes(prompt_len, gen_len))
    return built


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
    rounds: int = 1,
    baselines: tuple[str, ...] = BASELINES,
    libs_dir: Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every mode and the HF baseline; return the result dict (the report's source).

    Each mode's library is ``libs_dir``/<mode>-<target>.so (default OUT/work), reused when it
    fits the run (``libraries.misfit``); TVM's compiler is imported only to build one that does not.
    """
    src = _source(source, synthetic, modes)
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise UserError(f"--baselines {','.join(sorted(unknown))} is not one of {', '.join(BASELINES)}")
    target = _target(target, arch)
    device = "cuda" if target == "cuda" else "cpu"
    if device == "cuda" and not gpu_visible():
        raise UserError("--target cuda measures on a GPU and none is visible here; pass --compile-only "
                        "to build the libraries only (--libs DIR), and measure them on a GPU machine")
    work, libs = _dirs(out_dir, libs_dir)

    rng = np.random.default_rng(seed)
    prompt_ids = [int(x) for x in rng.integers(3, src.vocab_size, prompt_len)]
    common = {"device": device, "prompt_ids": prompt_ids, "gen_len": gen_len, "runs": runs, "warmup": warmup}

    bandwidth = copy_bandwidth_cuda() if device == "cuda" else read_bandwidth_cpu()
    built = {}
    for mode in src.modes:
        wdir = src.weight_dir(mode, work, seed)
        built[mode] = wdir, ensure_library(wdir, library_path(libs, mode, target), target=target, arch=arch,
                                           log=log, **_sizes(prompt_len, gen_len))
    if src.config is None and baselines:
        log("Baselines skipped: an exported weight directory has no HF checkpoint to compare")
        baselines = ()
    # Every row once a round, so the minutes-long drift of a shared machine falls on all alike.
    measured: dict[str, list[dict]] = {name: [] for name in (*built, *baselines)}
    for i in range(rounds):
        tag = f" (round {i + 1} of {rounds})" if rounds > 1 else ""
        for mode, (wdir, lib) in built.items():
            log(f"Measuring {mode}{tag} ...")
            r = _worker({**common, "kind": "library", "weight_dir": str(wdir), "model_lib": str(lib)})
            measured[mode].append(r)
            log(f"  {mode}: prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s")
        for baseline in baselines:
            log(f"Measuring the {baseline} baseline{tag} ...")
            spec = {**common, "kind": "hf", "int4": baseline == "torch-int4"}
            spec |= {"hf_config": src.config} if src.synthetic is not None else {"hf_dir": str(src.path)}
            measured[baseline].append(_worker(spec))

    rows = []
    for mode, (wdir, _) in built.items():
        r = pool(measured[mode])
        wm, read_per_token = weight_bytes(wdir)
        floor_s = read_per_token / bandwidth
        rows.append({"mode": mode, "bits": bits_label(mode), "wm_bytes": wm, "bytes_per_token": read_per_token,
                     "roofline_pct": 100.0 * floor_s * r["decode_tok_s"], **r})
    for baseline in baselines:
        r = pool(measured[baseline])
        label = f"HF transformers ({r['dtype']})"
        bits = "FP16" if device == "cuda" else "FP32"
        if baseline == "torch-int4":
            label = f"HF + torch int4 weight-only (g{'/'.join(map(str, r['int4_groups']))})"
            bits = "W4 (tinygemm)"
        rows.append({"mode": label, "bits": bits, "bytes_per_token": r["wm_bytes"],
                     "roofline_pct": 100.0 * r["wm_bytes"] / bandwidth * r["decode_tok_s"], **r})
    return {
        "model": src.name, "target": target, "prompt_len": prompt_len, "gen_len": gen_len, "runs": runs,
        "warmup": warmup, "rounds": rounds, "rm_method": rows[0]["rm_method"],
        "environment": environment(device, bandwidth), "rows": rows,
    }
