"""Time `desv-export calibrate` on the built-in example model, per method.

Writes benchmarks/results/calibration_time.{json,md}: for each method, the wall time of the
whole command (model load, data, all blocks, checkpoint write) and the mean seconds per block
from the checkpoint's quantization.json. Example (what the committed results used):

    python benchmarks/calibration_time.py --bits 3 --nsamples 8 --seqlen 256 --epochs 2

Calibration cost per block is roughly epochs x nsamples x (one forward+backward of the block on
seqlen tokens), plus for LSI/DESV one U B Vh product per step (independent of seqlen).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cli(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-c", "from desv_export.cli import main; main()", *args]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="HF dir [default: write the example model to a temp dir]")
    p.add_argument("--methods", default="rtn,lwc,lsi,desv")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--let", action="store_true", help="calibrate with --let (not for rtn)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs")
    p.add_argument("--out", type=Path, default=RESULTS / "calibration_time")
    args = p.parse_args()

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="calib-time-") as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "smollm2"
            cli("example-model", str(model))
        rows = []
        for method in args.methods.split(","):
            out = Path(tmp) / f"ckpt-{method}"
            cmd = ["calibrate", str(model), "-o", str(out), "--method", method, "--bits", str(args.bits),
                   "--group-size", str(args.group_size), "--nsamples", str(args.nsamples), "--seqlen",
                   str(args.seqlen), "--epochs", str(args.epochs), "--device", args.device, "--quiet"]
            if args.let and method != "rtn":
                cmd.append("--let")
            t0 = time.perf_counter()
            cli(*cmd, env=env)
            wall = time.perf_counter() - t0
            meta = json.loads((out / "quantization.json").read_text())
            blocks = [b["seconds"] for b in meta["blocks"]]
            rows.append({"method": method, "wall_s": round(wall, 1), "blocks": len(blocks),
                         "block_mean_s": round(sum(blocks) / len(blocks), 2), "blocks_total_s": round(sum(blocks), 1),
                         "command": "desv-export " + " ".join(cmd)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"settings": vars(args) | {"model": str(args.model or "example-model"), "out": str(args.out)},
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "threads": args.threads}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Calibration time, W{args.bits}g{args.group_size}, {args.nsamples} x {args.seqlen} tokens, "
             f"{args.epochs} epochs, {args.device}{', --let' if args.let else ''}", "",
             "| method | wall (s) | blocks | mean s/block |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['wall_s']} | {r['blocks']} | {r['block_mean_s']} |" for r in rows]
    lines += ["", f"{os.cpu_count()} CPU cores, OMP threads {args.threads or 'default'}. Wall time includes loading the",
              "model and tokenising the calibration text; with few steps per block the one-off SVD of every",
              "linear (LSI, DESV) is a large part of a block's time.", "",
              "Command: `python benchmarks/calibration_time.py " + " ".join(sys.argv[1:]) + "`"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
