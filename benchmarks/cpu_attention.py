"""CPU benchmark of the decode attention kernel (``tvm_schedules.cpu.attention``) over context length.

One sequence, one query, its keys and values in a shuffled page pool, for SmolLM2-135M's heads
(9 q heads, 3 KV heads, head_dim 64) by default, built for this host (``-mcpu``) as a model
library is. With ``--baseline FILE`` (another version of ``tvm_schedules/cpu/attention.py``) that
version's kernel is built too and the two are timed alternately, call batch by call batch,
because the machines this runs on are shared. Reports the median and min of
``time_evaluator``'s repeats per context length, and the speedup of the medians; writes
``benchmarks/results/cpu_attention_<cpu>.{md,json}``, named as ``cpu_kernels.py`` names its report.

    TVM_NUM_THREADS=2 python benchmarks/cpu_attention.py [--baseline old_attention.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tvm  # noqa: E402

from benchmarks.cpu_kernels import RESULTS, cpu_name, slug  # noqa: E402
from desv_export.compile import host_cpu_target  # noqa: E402
from tvm_schedules.cpu import attention  # noqa: E402

PAGE = 16


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(module: ModuleType, heads: tuple[int, int, int]):
    h_kv, h_q, d = heads
    func = module.fast_attention_decode_cpu(h_kv, h_q, d, "float32", {}, page_size=PAGE)
    name = module.DECODE_NAME
    lib = tvm.compile(tvm.IRModule({name: func.with_attr("global_symbol", name)}), target=host_cpu_target())
    return lib.mod.time_evaluator(name, tvm.cpu(), number=100, repeat=1)


def case(n: int, heads: tuple[int, int, int], seed: int = 0) -> list:
    """Q, pages, page_table_indptr, page_table_values, last page length, k_rope_pos_offset,
    q_rope_position, output, lse: ``n`` keys in pages scattered over a pool twice as large."""
    h_kv, h_q, d = heads
    rng = np.random.default_rng(seed)
    n_pages = -(-n // PAGE)
    pool = 2 * n_pages
    arrays = [
        rng.standard_normal((1, h_q, d)).astype(np.float32),
        rng.standard_normal((pool, 2, h_kv, PAGE, d)).astype(np.float32),
        np.array([0, n_pages], np.int32),
        rng.permutation(pool)[:n_pages].astype(np.int32),
        np.array([n - (n_pages - 1) * PAGE], np.int32),
        np.zeros(1, np.int32),
        np.array([n - 1], np.int32),
        np.zeros((1, h_q, d), np.float32),
        np.zeros((1, h_q), np.float32),
    ]
    return [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another version of tvm_schedules/cpu/attention.py")
    parser.add_argument("--baseline-label", help="what the baseline is, for the report")
    parser.add_argument("--heads", default="3,9,64", help="KV heads, q heads, head_dim [SmolLM2's]")
    parser.add_argument("--contexts", default="128,256,1024,4096")
    parser.add_argument("--rounds", type=int, default=7, help="alternating batches of 100 calls")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    heads = tuple(int(x) for x in args.heads.split(","))
    _, _, d = heads
    kernels = {"new": build(attention, heads)}
    if args.baseline:
        kernels = {"old": build(_load(args.baseline), heads), **kernels}
    rows = []
    for n in (int(x) for x in args.contexts.split(",")):
        inputs = case(n, heads)
        times: dict[str, list[float]] = {k: [] for k in kernels}
        for _ in range(args.rounds):
            for label, timer in kernels.items():
                times[label].append(timer(*inputs, 0, 1.0, 10000.0, 1 / math.sqrt(d)).mean * 1e6)
        row = {"keys": n, **{f"{k}_us": {"median": float(np.median(v)), "min": float(min(v)), "all": v}
                             for k, v in times.items()}}
        if "old" in kernels:
            row["speedup"] = row["old_us"]["median"] / row["new_us"]["median"]
        rows.append(row)
        print(json.dumps({k: (round(v["median"], 2) if isinstance(v, dict) else v) for k, v in row.items()}))

    cpu = cpu_name()
    stem = f"cpu_attention_{slug(cpu)}"
    env = {"cpu": cpu, "threads": os.environ.get("TVM_NUM_THREADS", "default"), "heads": heads,
           "date": time.strftime("%Y-%m-%d"), "command": shlex.join(sys.argv),
           "baseline": args.baseline_label or (str(args.baseline) if args.baseline else None)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    labels = list(kernels)
    lines = [
        f"# CPU decode attention: {cpu}", "",
        f"{env['date']}, TVM_NUM_THREADS={env['threads']}, heads (KV, q, dim) {heads}, `python {env['command']}`",
        *([f"\nold = {env['baseline']}"] if args.baseline else []), "",
        "us per call, median / min of the rounds (each the mean of 100 calls, one sequence, one query)", "",
        "| keys | " + " | ".join(labels) + (" | speedup |" if args.baseline else " |"),
        "|---|" + "---|" * (len(labels) + bool(args.baseline)),
    ]
    for row in rows:
        cells = [f"{row[f'{k}_us']['median']:.1f} / {row[f'{k}_us']['min']:.1f}" for k in labels]
        if args.baseline:
            cells.append(f"{row['speedup']:.2f}x")
        lines.append(f"| {row['keys']} | " + " | ".join(cells) + " |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / stem}.md / .json")


if __name__ == "__main__":
    main()
