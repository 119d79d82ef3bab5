"""Timing and memory probes shared by our engine's runs and the baselines'.

Speed is defined as MLC-LLM defines it: prefill tok/s = prompt tokens / time to first token,
decode tok/s = (generated tokens - 1) / (finish - first token). Each figure is the median of
several runs after warm-up runs that are not counted, pooled over rounds when the benchmark
visits every row more than once (``pool``).
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Run:
    """One generation: wall-clock stamps of the start, the first token and the finish."""

    prompt_len: int
    start: float
    first_token: float
    finish: float
    generated: int

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_len / (self.first_token - self.start)

    @property
    def decode_tok_s(self) -> float:
        return (self.generated - 1) / (self.finish - self.first_token)


@dataclass
class Timer:
    """Collects stamps for one run: call ``token()`` as each generated token arrives."""

    prompt_len: int
    stamps: list[float] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def token(self) -> None:
        self.stamps.append(time.perf_counter())

    def run(self) -> Run:
        return Run(self.prompt_len, self.start, self.stamps[0], self.stamps[-1], len(self.stamps))


def summarize(runs: list[Run]) -> dict:
    """Medians plus every raw stamp, so the JSON lets anyone recompute the table."""
    return {
        "prefill_tok_s": statistics.median(r.prefill_tok_s for r in runs),
        "decode_tok_s": statistics.median(r.decode_tok_s for r in runs),
        "raw": [
            {"prefill_s": r.first_token - r.start, "decode_s": r.finish - r.first_token,
             "generated": r.generated, "prompt_len": r.prompt_len}
            for r in runs
        ],
    }


def pool(results: list[dict]) -> dict:
    """One row from the worker results of several rounds: their runs pooled into one median,
    the highest running memory of any round."""
    if len(results) == 1:
        return results[0]
    runs = [Run(r["prompt_len"], 0.0, r["prefill_s"], r["prefill_s"] + r["decode_s"], r["generated"])
            for result in results for r in result["raw"]]
    out = {**results[0], **summarize(runs)}
    if "rm_bytes" in out:
        out["rm_bytes"] = max(result["rm_bytes"] for result in results)
    return out


def reset_peak_rss() -> None:
    """Start a new high-water mark at the current resident size (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory since start or ``reset_peak_rss``.

    Read from /proc (VmHWM) rather than ru_maxrss, which Linux carries over from the parent
    across fork and exec and so would report the benchmark driver's peak, not this process's.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_bandwidth_cpu(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes/s that a sum over a buffer far larger than the caches reads, on every thread torch
    uses: decode streams its weights so, read-only. A memcpy is no ceiling for that: it writes
    as much as it reads, and on the Zen 4 VM of 2026-12-03 it gave 22-27 GB/s (both streams
    counted) where this gives 30-31 and a q0f16 decode step read 24."""
    import torch

    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def copy_bandwidth_cuda(nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, timed with CUDA events (torch)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return 2 * nbytes / statistics.median(times)
