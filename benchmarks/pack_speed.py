"""Packing throughput of the exporter, in MB/s of float16 input, on one CPU core.

    python benchmarks/pack_speed.py [--rows 4096 --cols 4096 --repeats 5]

Per mode it times the path the exporter runs for one weight:

* ``q4f16_1`` / ``q3f16_1``: MLC's symmetric quantizer + packing (``pack.quantize_pack_sym``);
* asym modes, calibrated checkpoint: recover codes from w_hat + verify + pack
  (``pack.codes_from_grid`` + ``pack.pack``), and the bare packing of known codes and zeros;
* asym modes, plain HF directory: round-to-nearest with ``calib.quantizer.quantize`` (the
  calibration helper's maths, run by the exporter in cache-sized row blocks) + pack.

The process is pinned to one core and torch to one thread. The best of ``--repeats`` runs is
reported, as wall-clock and as CPU-time throughput (the machine may be shared: the load
average is printed with the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def best_seconds(fn, repeats: int) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds) of ``repeats`` runs after a warm-up.

    CPU time is what one core actually spent; on a shared machine the wall time also counts
    the time other processes held the core, so both are reported.
    """
    fn()  # warm-up (allocations, imports)
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch

    torch.set_num_threads(1)
    from calib.quantizer import quantize
    from desv_export import pack
    from desv_export.export import _rtn_asym
    from desv_export.modes import get_mode

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float16)
    mb = w.nbytes / 1e6
    rows = []

    for name in ("q4f16_1", "q3f16_1"):
        m = get_mode(name)
        t = best_seconds(lambda: pack.quantize_pack_sym(w, m), args.repeats)
        rows.append((name, "MLC sym quantize + pack", t))

    for name in ("q4f16_g128asym", "q3f16_g128asym", "q2f16_g128asym", "q3f16_g32asym"):
        m = get_mode(name)
        gq = quantize(torch.from_numpy(w), m.bits, m.group_size)
        w_hat, scale, zero = gq.w_hat.numpy(), gq.scale.numpy(), gq.zero.numpy()
        codes = gq.codes.numpy()

        def from_grid():
            pack.pack(m, pack.codes_from_grid(w_hat, scale, zero, m), scale, zero)

        t = best_seconds(from_grid, args.repeats)
        rows.append((name, "calibrated: codes from grid + verify + pack", t))
        t = best_seconds(lambda: pack.pack(m, codes, scale, zero), args.repeats)
        rows.append((name, "pack known codes + zeros", t))
        if name == "q3f16_g128asym":
            def rtn():
                pack.pack(m, *_rtn_asym(w, m))

            t = best_seconds(rtn, max(1, args.repeats // 2))
            rows.append((name, "plain HF: calib.quantizer RTN + pack", t))

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"weight {args.rows} x {args.cols} float16 ({mb:.1f} MB), 1 core, best of {args.repeats}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| mode | path | MB/s (wall) | MB/s (per CPU second) |")
    print("|---|---|---:|---:|")
    for mode, path, (wall, cpu) in rows:
        print(f"| {mode} | {path} | {mb / wall:.0f} | {mb / cpu:.0f} |")


if __name__ == "__main__":
    main()
