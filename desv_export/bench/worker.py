"""One measurement in a fresh process, so each row's memory is its own.

``python -m desv_export.bench.worker SPEC_JSON`` prints one JSON object on its last stdout
line. Running memory (RM) is measured where the model lives:

* CPU: peak resident memory of the process (VmHWM, reset just before loading) minus the resident memory just before
  the weights were loaded, so the interpreter and libraries are not counted;
* CUDA: the driver's used memory after generation minus before loading (nvidia-smi). TVM's
  pooled allocator keeps every buffer it allocated, so "after" is the peak.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from .timing import Run, Timer, peak_rss_bytes, reset_peak_rss, summarize


def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _cuda_used() -> int:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True, text=True, check=True,
    )
    return int(out.stdout.split()[0]) * 2**20


def bench_library(spec: dict) -> dict:
    """Our engine: greedy generation of exactly gen_len tokens after a prompt_len prompt."""
    from ..engine.library import ModelLibrary

    cuda = spec["device"] == "cuda"
    reset_peak_rss()
    before = _cuda_used() if cuda else _rss_now()
    lib = ModelLibrary(spec["weight_dir"], spec["model_lib"], spec["device"])
    prompt = spec["prompt_ids"]
    runs: list[Run] = []
    for i in range(spec["warmup"] + spec["runs"]):
        lib.reset()
        timer = Timer(len(prompt))
        logits = lib.prefill(prompt)  # returns host logits: the device work is finished
        timer.token()
        for _ in range(spec["gen_len"] - 1):
            logits = lib.decode(int(np.argmax(logits)))
            timer.token()
        if i >= spec["warmup"]:
            runs.append(timer.run())
    rm = (_cuda_used() if cuda else peak_rss_bytes()) - before
    method = ("CUDA driver used memory after generation minus before loading (nvidia-smi)" if cuda
              else "process peak RSS (VmHWM) minus RSS before loading the weights")
    return {**summarize(runs), "rm_bytes": rm, "rm_method": method}


def bench_hf(spec: dict) -> dict:
    import importlib
    from pathlib import Path

    from .hf_baseline import bench_hf as run

    importlib.import_module("transformers.models.llama.modeling_llama")  # imports are not running memory

    cuda = spec["device"] == "cuda"
    reset_peak_rss()
    before = _rss_now()
    source = spec["hf_config"] if spec.get("hf_config") else Path(spec["hf_dir"])
    out = run(source, spec["device"], spec["prompt_ids"], spec["gen_len"], spec["runs"], spec["warmup"],
              int4=spec.get("int4", False))
    if not cuda:
        out["rm_bytes"] = peak_rss_bytes() - before
        out["rm_method"] = "process peak RSS (VmHWM) minus RSS before loading the weights"
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = bench_hf(spec) if spec["kind"] == "hf" else bench_library(spec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
