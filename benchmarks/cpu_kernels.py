"""CPU benchmark of the decode GEMV (``tvm_schedules.cpu.CPUVectorGEMV``), every export mode.

For SmolLM2-135M's linears at one token (qkv 960x576, o 576x576, gate_up 3072x576, down
576x1536, lm_head 49152x576) it times the kernel the rule builds for this host and, with
``--baseline FILE`` (another version of ``tvm_schedules/cpu/gemv.py``), that version's kernel
in the same process, the two interleaved call by call, because the machines this runs on are
shared and noisy. Weights are rotated over enough copies to exceed the last-level cache, as in
a decode step, where every layer's weights come from memory. Reports min and median per call,
GB/s of the weights as stored (codes, scales, zeros; float16 for q0f16) at the median and the
speedup of the medians; writes ``benchmarks/results/cpu_kernels_<cpu>.{md,json}``.

    TVM_NUM_THREADS=2 python benchmarks/cpu_kernels.py [--quick] [--baseline old_gemv.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tvm  # noqa: E402

from desv_export.compile import host_cpu_target  # noqa: E402
from desv_export.modes import MODES  # noqa: E402
from tvm_schedules.cpu import CPUVectorGEMV  # noqa: E402
from tvm_schedules.workloads import dequant_matmul, llama_shapes, random_quantized  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SHAPES = [(s.name, s.n, s.k) for s in llama_shapes(576, 1536, 49152, heads=9, kv_heads=3)]
# q0f16: the float16 GEMV (q0f16's linears, the asymmetric modes' float16 tied lm_head).
ALL_MODES = list(MODES)
QUICK_MODES = ["q0f16", "q4f16_1", "q3f16_1", "q4f16_g128asym", "q3f16_g128asym", "q2f16_g128asym"]
ROTATE_BYTES = 96 << 20  # weight copies per kernel: > 2x a 32 MiB L3


def cpu_name() -> str:
    """Model name and LLVM's name for this CPU (``AMD EPYC (znver5)``)."""
    model = platform.processor() or "cpu"
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
    except (OSError, AttributeError):
        pass
    return f"{model} ({tvm.target.codegen.llvm_get_system_cpu()})"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def load_rule(path: Path):
    """``CPUVectorGEMV`` of another version of gemv.py, imported inside tvm_schedules.cpu so
    its relative imports resolve."""
    spec = importlib.util.spec_from_file_location("tvm_schedules.cpu._baseline_gemv", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.CPUVectorGEMV()


def build(rule, mode: str, n: int, k: int, target):
    func = dequant_matmul(mode, n, k, x_dtype="float32", out_dtype="float32")
    sch = rule.apply(func, target, False)
    return tvm.compile(sch.mod, target=target)


def copies(mode: str, n: int, k: int, dev, rng) -> list[list]:
    """Argument lists over distinct weight copies, together larger than ROTATE_BYTES."""
    if MODES[mode].quantized:
        t = random_quantized(mode, n, k, rng)
        weights = [t["q_weight"], t["q_scale"]] + ([t["q_zero"]] if "q_zero" in t else [])
    else:
        weights = [rng.standard_normal((n, k)).astype("float16")]
    nbytes = sum(w.nbytes for w in weights)
    x = tvm.runtime.tensor(rng.standard_normal((1, 1, k)).astype("float32"), dev)
    out = tvm.runtime.tensor(np.zeros((1, 1, n), "float32"), dev)
    count = max(2, -(-ROTATE_BYTES // nbytes))
    return [[x, *[tvm.runtime.tensor(w.copy(), dev) for w in weights], out]
            for _ in range(count)], nbytes


def time_pair(libs: dict, arg_sets: list, reps: int, dev) -> dict[str, np.ndarray]:
    """ms per call of each library, calls interleaved over the weight copies."""
    timers = {name: lib.mod.time_evaluator("main", dev, number=1, repeat=1)
              for name, lib in libs.items()}
    for name, lib in libs.items():  # warm up (thread pool, page faults)
        for args in arg_sets:
            lib["main"](*args)
    samples = {name: [] for name in libs}
    for _ in range(reps):
        for args in arg_sets:
            for name, timer in timers.items():
                samples[name].append(timer(*args).mean * 1e3)
    return {name: np.array(v) for name, v in samples.items()}


def check(libs: dict, args: list) -> float:
    """Largest relative difference between the libraries' outputs (0 without a baseline)."""
    outs = []
    for lib in libs.values():
        lib["main"](*args)
        outs.append(args[-1].numpy().copy())
    return max(float(np.abs(o - outs[0]).max() / np.abs(outs[0]).max()) for o in outs)


def run(modes: list[str], shapes: list, reps: int, baseline: Path | None) -> list[dict]:
    target, dev = host_cpu_target(), tvm.cpu()
    rules = {"new": CPUVectorGEMV()}
    if baseline is not None:
        rules = {"old": load_rule(baseline), **rules}
    rows = []
    for mode in modes:
        for name, n, k in shapes:
            libs = {label: build(rule, mode, n, k, target) for label, rule in rules.items()}
            arg_sets, nbytes = copies(mode, n, k, dev, np.random.default_rng(0))
            diff = check(libs, arg_sets[0])
            times = time_pair(libs, arg_sets, max(1, reps // len(arg_sets) + 1), dev)
            row = {"mode": mode, "linear": name, "n": n, "k": k, "weight_bytes": nbytes,
                   "max_rel_diff": diff}
            for label, t in times.items():
                row[label] = {"min_ms": float(t.min()), "median_ms": float(np.median(t)),
                              "gbps": nbytes / float(np.median(t)) / 1e6, "calls": len(t)}
            if "old" in row:
                row["speedup"] = row["old"]["median_ms"] / row["new"]["median_ms"]
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    cells = [row["mode"], f'{row["linear"]} {row["n"]}x{row["k"]}']
    for label in ("old", "new"):
        if label in row:
            t = row[label]
            cells.append(f'{t["min_ms"]:.4f} / {t["median_ms"]:.4f} ({t["gbps"]:.1f} GB/s)')
    if "speedup" in row:
        cells.append(f'{row["speedup"]:.2f}x')
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict], meta: dict) -> str:
    head = ["mode", "linear"]
    if any("old" in r for r in rows):
        head.append("old ms min / median (GB/s)")
    head.append("new ms min / median (GB/s)")
    if any("speedup" in r for r in rows):
        head.append("speedup")
    lines = [f"# CPU decode GEMV: {meta['cpu']}", "",
             f"{meta['date']}, TVM_NUM_THREADS={meta['threads']}, {meta['command']}", "",
             "1-minute load average of the machine before / after the run (other processes "
             "count too): " + " / ".join(f"{v:.2f}" for v in meta["load_average"]) + ".", "",
             "ms per call over weight copies larger than the L3 (weights from memory, as in "
             "decode); GB/s = stored weight bytes / median; old = " + meta["baseline"] + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [format_row(r) for r in rows]
    labels = [label for label in ("old", "new") if any(label in r for r in rows)]
    steps = decode_step(rows, labels)
    if steps:
        lines += ["", "GEMV time of one SmolLM2 decode step (30 layers + lm_head), ms, from the "
                  "per-call min / median:", "", "| mode | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        lines += [f"| {mode} | " + " | ".join(f"{v['min_ms']:.2f} / {v['median_ms']:.2f}"
                                             for v in step.values()) + " |"
                  for mode, step in steps.items()]
    return "\n".join(lines) + "\n"


def decode_step(rows: list[dict], labels: list[str]) -> dict:
    """mode -> label -> summed min / median ms of every linear of a decode step (modes with
    all five linears measured)."""
    steps = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        if {r["linear"] for r in mine} != {name for name, _, _ in SHAPES}:
            continue
        steps[mode] = {label: {stat: sum(r[label][stat] * (1 if r["linear"] == "lm_head" else 30)
                                         for r in mine) for stat in ("min_ms", "median_ms")}
                       for label in labels}
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"modes {', '.join(QUICK_MODES)}, fewer calls")
    parser.add_argument("--modes", help="comma-separated modes (default: every mode)")
    parser.add_argument("--baseline", type=Path,
                        help="another version of tvm_schedules/cpu/gemv.py to compare with")
    parser.add_argument("--baseline-label", help="what the baseline is, for the report")
    parser.add_argument("--reps", type=int, help="calls per kernel (default 200, quick 60)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    modes = args.modes.split(",") if args.modes else QUICK_MODES if args.quick else ALL_MODES
    reps = args.reps or (60 if args.quick else 200)
    load_before = os.getloadavg()[0]
    rows = run(modes, SHAPES, reps, args.baseline)
    meta = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"),
            "load_average": [load_before, os.getloadavg()[0]],
            "threads": os.environ.get("TVM_NUM_THREADS", "TVM default"),
            "command": "python benchmarks/cpu_kernels.py " + shlex.join(argv or sys.argv[1:]),
            "baseline": args.baseline_label or (str(args.baseline) if args.baseline else "none")}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cpu_kernels_{slug(meta['cpu'])}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    stem.with_suffix(".md").write_text(markdown(rows, meta))
    print(f"wrote {stem}.md / .json")


if __name__ == "__main__":
    main()
