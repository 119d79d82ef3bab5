"""Static audit of the GPU benchmark's kernels, ours and dlight's: no GPU needed, only nvcc.

For every kernel ``benchmarks/kernels.py`` times (LLaMA-7B / 13B projections, every quantized
mode, decode batches and prefill), it reports what nvcc makes of it for one architecture:
registers, local memory (stack frame and spills), shared memory, global loads by width and
int -> float16 conversions (``tvm_schedules/resources.py`` says why each matters). It is the
part of the kernel table a machine without a GPU can produce, and it finds the defects that
would cost bandwidth before a GPU session is spent on them; the timings stay with
``kernels.py``.

    python benchmarks/kernel_audit.py --arch sm_90                    # 7B, decode b1 + b4
    python benchmarks/kernel_audit.py --arch sm_80 --models llama-7b,llama-13b --batches b1,b4,b16

Writes ``benchmarks/results/kernel-audit-<arch>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.kernels import BATCHES, MODELS, QUANT_MODES, RESULTS, kernel_table, scheduled_groups  # noqa: E402
from tvm_schedules.resources import cuobjdump  # noqa: E402


def audit(arch: str, models, modes, batches, log=print) -> list[dict]:
    """One row per kernel: its spec and its resources (one nvcc run per model and mode)."""
    from desv_export.compile import resolve_target
    from tvm_schedules.cpu_check import cuda_source
    from tvm_schedules.resources import kernel_resources

    target = resolve_target("cuda", arch)  # the compile pipeline's: same kernels
    rows = []
    t0 = time.time()
    for model, mode, specs, mod in scheduled_groups(kernel_table(models, modes, batches), target):
        resources = kernel_resources(cuda_source(mod, target), arch)
        for spec in specs:
            res = timed_kernel(resources, spec.symbol)
            rows.append({"id": spec.id, "model": model, "linear": spec.linear, "mode": mode,
                         "batch_class": spec.batch_class, "schedule": spec.schedule,
                         "rule": spec.rule, **asdict(res),
                         "instructions_per_fma": (res.instructions_per_mma_code
                                                  if spec.schedule == "ours-tc"
                                                  else res.instructions_per_fma),
                         "blocks_per_sm": res.blocks_per_sm(arch)})
        log(f"{model} {mode}: {len(specs)} kernels in {time.time() - t0:.1f}s")
        t0 = time.time()
    return rows


def timed_kernel(resources: dict, symbol: str):
    """The kernel a spec's rows run: its function's last one. Every function has one kernel
    except a symbolic prefill of ours (``LowBatchDispatch``: one-row GEMV, dlight's low-batch
    GEMVs, then the GEMM that 512 rows take; TVM numbers them in that order)."""
    names = [n for n in resources
             if n == f"{symbol}_kernel" or n.startswith(f"{symbol}_kernel_")]
    return resources[max(names, key=lambda n: 0 if n.endswith("_kernel") else int(n.rsplit("_", 1)[1]))]


def markdown(rows: list[dict], arch: str) -> str:
    lines = [
        f"# Kernel audit, {arch} (static: nvcc and ptxas -v, no GPU)",
        "",
        "Registers, local memory (stack frame / spill bytes), shared memory, global loads by",
        "width (bits x static count in the PTX) and int -> float16 conversions of each kernel",
        "`benchmarks/kernels.py` times. `tvm_schedules/resources.py` says why each matters;",
        "these are not timings.",
        "",
    ]
    local = [r for r in rows if r["stack_bytes"] or r["spill_bytes"]]
    count = {s: sum(1 for r in rows if r["schedule"] == s) for s in ("ours", "ours-tc", "dlight")}
    with_local = {s: sum(1 for r in local if r["schedule"] == s) for s in count}
    lines += [
        f"- {len(rows)} kernels; ours with local memory: {with_local['ours']} of {count['ours']}; "
        f"the tensor-core GEMV's (`ours-tc`, experimental): {with_local['ours-tc']} of "
        f"{count['ours-tc']}; dlight's: {with_local['dlight']} of {count['dlight']}.",
        f"- int -> float16 conversions: {sum(r['int_to_half'] for r in rows)} in all kernels.",
        "- SASS (loop instr / FMA): " + ("read with cuobjdump." if cuobjdump() else
                                         "not read (no cuobjdump; `pip install -e '.[audit]'`), shown as 0."),
        "",
        *summary(rows),
        "",
        "## Every kernel",
        "",
        "| model | linear | mode | batch | schedule | rule | regs | stack B | spill B | smem B | global loads | int->f16 | loop instr / FMA | loop LDG B / thread | blocks / SM |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        loads = " ".join(f"{b}b x{n}" for b, n in sorted(r["global_loads"].items(), key=lambda kv: -int(kv[0])))
        lines.append(f"| {r['model']} | {r['linear']} | {r['mode']} | {r['batch_class']} | {r['schedule']} "
                     f"| {r['rule']} | {r['registers']} | {r['stack_bytes']} | {r['spill_bytes']} "
                     f"| {r['shared_bytes']} | {loads} | {r['int_to_half']} "
                     f"| {r['instructions_per_fma']:.2f} | {r['loop_load_bytes']} | {r['blocks_per_sm']} |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> list[str]:
    """Per mode and batch: ours vs dlight, worst case over the model's projections."""
    lines = [
        "## Per mode (worst projection)",
        "",
        "Loop instr / FMA: SASS instructions of the main loop per float32 FMA, i.e. per weight",
        "code and batch row (for `ours-tc`, which has no FMA: per code, 8 a lane per HMMA);",
        "a decode GEMV issuing more per code than the GPU can issue while",
        "its weights stream in is bound by instructions, not bandwidth (see docs/schedules.md).",
        "Warps / SM: resident warps by the occupancy rules (registers, shared memory), fewest",
        "over the projections; a memory-bound kernel needs enough of them with loads in flight",
        "to cover the memory latency.",
        "",
        "| mode | batch | ours: loop instr / FMA | dlight: loop instr / FMA | ours: warps / SM | dlight: warps / SM | ours: max local B | ours: widest load | ours-tc: loop instr / code | ours-tc: warps / SM |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["mode"], r["batch_class"]) for r in rows})
    for mode, bc in keys:
        group = {sched: [r for r in rows if (r["mode"], r["batch_class"], r["schedule"]) == (mode, bc, sched)]
                 for sched in ("ours", "dlight", "ours-tc")}
        worst = {k: max((r["instructions_per_fma"] for r in v), default=0.0) for k, v in group.items()}
        local = max((r["stack_bytes"] + r["spill_bytes"] for r in group["ours"]), default=0)
        widest = min((max(map(int, r["global_loads"]), default=0) for r in group["ours"]), default=0)
        warps = {k: min((r["blocks_per_sm"] * r["threads_per_block"] // 32 for r in v), default=0)
                 for k, v in group.items()}
        lines.append(f"| {mode} | {bc} | {worst['ours']:.2f} | {worst['dlight']:.2f} | {warps['ours']} "
                     f"| {warps['dlight']} | {local} | {widest} bits | "
                     + (f"{worst['ours-tc']:.2f} | {warps['ours-tc']} |" if group["ours-tc"] else "- | - |"))
    return lines


def write(rows: list[dict], arch: str, out: Path) -> tuple[Path, Path]:
    import tvm

    from desv_export.atomic import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"kernel-audit-{arch}.json", out / f"kernel-audit-{arch}.md"
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    with atomic_file(js) as tmp:
        tmp.write_text(json.dumps({"arch": arch, "tvm": tvm.__version__, "nvcc": nvcc[-1] if nvcc else "",
                                   "sass": cuobjdump() is not None, "kernels": rows}, indent=1))
    with atomic_file(md) as tmp:
        tmp.write_text(markdown(rows, arch))
    return js, md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--models", default="llama-7b", help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--modes", default=",".join(QUANT_MODES))
    p.add_argument("--batches", default="b1,b4", help=f"comma-separated: {', '.join(BATCHES)}")
    p.add_argument("-o", "--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    models, modes, batches = (s.split(",") for s in (args.models, args.modes, args.batches))
    for name, given, known in (("--models", models, MODELS), ("--modes", modes, QUANT_MODES),
                               ("--batches", batches, BATCHES)):
        unknown = [g for g in given if g not in known]
        if unknown:
            print(f"error: {name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}",
                  file=sys.stderr)
            return 2
    rows = audit(args.arch, models, modes, batches)
    for path in write(rows, args.arch, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
