"""Decode speed of two model libraries of one weight directory, alternating in one process.

A schedule change is judged by the model it speeds up, and on a shared machine two runs
minutes apart differ by more than most changes do; so both libraries are loaded once and
take turns, round after round, each round a fresh sequence: prefill a fixed prompt, then
greedy decode. Reports the median ms per decoded token (MLC's decode definition: decode
time over decoded tokens, prefill excluded) and the per-round values.

    python benchmarks/decode_ab.py WEIGHT_DIR OLD.so NEW.so [--rounds 4] [--prompt-len 128] [--gen-len 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from desv_export.engine.library import ModelLibrary  # noqa: E402


def one_round(lib: ModelLibrary, prompt: list[int], gen_len: int) -> tuple[float, float]:
    """(prefill ms, decode ms per token) of one fresh sequence."""
    lib.reset()
    t0 = time.perf_counter()
    token = int(np.argmax(lib.prefill(prompt)))
    t1 = time.perf_counter()
    for _ in range(gen_len):
        token = int(np.argmax(lib.decode(token)))
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) / gen_len * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weight_dir", type=Path)
    p.add_argument("libs", type=Path, nargs=2, metavar="LIB")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=64)
    a = p.parse_args(argv)
    libs = {path.name: ModelLibrary(a.weight_dir, path) for path in a.libs}
    prompt = [1000 + i for i in range(a.prompt_len)]  # fixed ids: speed does not read them
    runs = {name: [] for name in libs}
    for _ in range(a.rounds):
        for name, lib in libs.items():
            runs[name].append(one_round(lib, prompt, a.gen_len))
    for name, rs in runs.items():
        prefill, decode = (np.array(v) for v in zip(*rs))
        print(f"{name}: decode {np.median(decode):.2f} ms/token ({1e3 / np.median(decode):.1f} tok/s), "
              f"rounds {', '.join(f'{d:.2f}' for d in decode)}; prefill {a.prompt_len} tokens "
              f"{np.median(prefill):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
