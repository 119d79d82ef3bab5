"""``desv-export bench``: the deployment table (paper Table 6) on the machine at hand."""

from __future__ import annotations

from pathlib import Path

import click

from ..bench.presets import SYNTHETIC
from ..bench.run import BASELINES, DEFAULT_MODES


@click.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--synthetic", type=click.Choice(sorted(SYNTHETIC)), help="Random weights of this architecture.")
@click.option("--modes", default=",".join(DEFAULT_MODES), show_default=True, help="Comma-separated export modes.")
@click.option("--target", type=click.Choice(["llvm", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--arch", default=None, help="CUDA arch (sm_80, sm_90, ...); default: the visible GPU's.")
@click.option("--prompt-len", default=128, show_default=True, type=click.IntRange(1))
@click.option("--gen-len", default=256, show_default=True, type=click.IntRange(2))
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1), help="Measured runs (median).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0))
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1),
              help="Measure every row this many times in turn (each time --warmup then --runs) and "
                   "pool the runs: on a shared machine whose speed drifts over minutes, the drift "
                   "then falls on every row alike.")
@click.option("--baselines", default=",".join(BASELINES), show_default=True,
              help="Comma-separated baseline rows: hf (transformers generate), torch-int4 (the same "
                   "with torch's int4 weight-only matmul); empty for none.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Report directory.")
@click.option("--libs", "libs_dir", default=None, type=click.Path(path_type=Path),
              help="Directory of the model libraries, <mode>-<target>.so: each one that fits the run "
                   "(target, arch, weights, context window) is reused, the others are compiled there. "
                   "[default: OUT/work]")
@click.option("--compile-only", is_flag=True,
              help="Compile (or reuse) every mode's library into --libs and stop: nothing is measured, "
                   "and synthetic weights are not written (compiling reads only their shapes).")
def bench(model, synthetic, modes, target, arch, prompt_len, gen_len, runs, warmup, rounds, baselines, out_dir,
          libs_dir, compile_only) -> None:
    """Weight memory, running memory, prefill and decode tok/s per mode, beside the baselines.

    MODEL is an HF directory (exported in each mode), or an exported weight directory (its one
    mode); or pass --synthetic NAME. Writes OUT/<name>.md, .json and .png. To measure on a
    machine with TVM's runtime only, build the libraries first where the compiler is
    (--compile-only --libs DIR; --target cuda --arch sm_90 needs no GPU) and pass --libs DIR.
    """
    from ..bench import report
    from ..bench.run import build_libraries, run_bench

    common = dict(
        out_dir=out_dir, source=model, synthetic=synthetic,
        modes=tuple(m.strip() for m in modes.split(",") if m.strip()), target=target, arch=arch,
        prompt_len=prompt_len, gen_len=gen_len, libs_dir=libs_dir, log=lambda s: click.echo(s, err=True),
    )
    if compile_only:
        for lib in build_libraries(**common).values():
            click.echo(lib)
        return
    result = run_bench(
        **common, runs=runs, warmup=warmup, rounds=rounds,
        baselines=tuple(b.strip() for b in baselines.split(",") if b.strip()),
    )
    stem = f"deploy_{(synthetic or Path(model).name)}_{result['target']}"
    paths = report.write(result, out_dir, stem)
    click.echo(report.markdown(result))
    click.echo(f"Wrote {', '.join(str(p) for p in paths)}", err=True)
