"""``desv-export`` with no sub-command: the whole data path on the built-in example model.

example-model -> calibrate (DESV) -> export -> compile -> generate, each step skipped when its
output already exists, so a second run only generates. Calibration settings default to a
quick CPU run; pass OmniQuant's (--nsamples 128 --seqlen 2048 --epochs 20) for the real thing.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..modes import asym_mode_name


@click.command()
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("desv-quickstart"), show_default=True,
              help="Where every stage's output goes.")
@click.option("--method", type=click.Choice(["rtn", "lwc", "lsi", "desv"]), default="desv", show_default=True)
@click.option("--bits", type=click.Choice(["2", "3", "4"]), default="4", show_default=True)
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="128", show_default=True)
@click.option("--nsamples", default=8, show_default=True, type=click.IntRange(1))
@click.option("--seqlen", default=128, show_default=True, type=click.IntRange(16))
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(0))
@click.option("--target", type=click.Choice(["llvm", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--prompt", default="What is the capital of France?", show_default=True)
@click.pass_context
def quickstart(ctx: click.Context, work_dir: Path, method: str, bits: str, group_size: str, nsamples: int,
               seqlen: int, epochs: int, target: str, prompt: str) -> None:
    """Run example-model, calibrate, export, compile and generate on SmolLM2-135M-Instruct."""
    from ..cli import main

    def step(name: str, result: Path, **kwargs) -> None:
        if result.exists():
            click.echo(f"== {name}: {result} exists, skipped", err=True)
            return
        click.echo(f"== {name} -> {result}", err=True)
        ctx.invoke(main.get_command(ctx, name), **kwargs)

    b, g = int(bits), int(group_size)
    mode = asym_mode_name(b, g)
    hf_dir = work_dir / "SmolLM2-135M-Instruct"
    ckpt = work_dir / f"SmolLM2-135M-Instruct-{method}-w{b}g{g}"
    weights = work_dir / f"SmolLM2-135M-Instruct-{method}-{mode}-MLC"
    lib = work_dir / f"SmolLM2-135M-Instruct-{method}-{mode}-{target}.so"
    step("example-model", hf_dir, out=hf_dir)
    step("calibrate", ckpt, model_dir=hf_dir, out=ckpt, method=method, bits=b, group_size=g,
         nsamples=nsamples, seqlen=seqlen, epochs=epochs)
    step("export", weights, model=ckpt, out=weights, mode=mode)
    step("compile", lib, weight_dir=weights, target=target, output=lib)
    click.echo(f"== generate: {prompt}", err=True)
    ctx.invoke(main.get_command(ctx, "generate"), weight_dir=weights, model_lib=lib, prompt=prompt,
               max_new_tokens=64, temperature=0.0, stats=True)
