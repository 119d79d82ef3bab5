"""``desv-export export``: an HF directory or calibrated checkpoint in, an MLC weight directory out."""

from __future__ import annotations

from pathlib import Path

import click

from ..modes import MODES


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="MLC weight directory to write.")
@click.option("--quantization", "mode", type=click.Choice(list(MODES)), required=True,
              help="Export mode: q0f16 (fp16), MLC's q4f16_1 / q3f16_1, or our q{2,3,4}f16_g{32,64,128}asym.")
@click.option("--quantize-embedding/--fp16-embedding", "quantize_embedding", default=None,
              help="Quantize the embedding and an untied lm_head, or keep them float16 "
                   "[default: quantized for q4f16_1/q3f16_1 as in MLC, float16 for the asym modes].")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export(model: Path, out: Path, mode: str, quantize_embedding: bool | None, force: bool, quiet: bool) -> None:
    """Convert MODEL (an HF LLaMA-family directory or a calibrated checkpoint) for MLC-LLM.

    A calibrated checkpoint keeps its learned grid exactly (its own asym mode, or q0f16); a plain
    HF directory is quantized by round-to-nearest (asym modes) or MLC's maths (q4f16_1, q3f16_1).
    """
    from tqdm import tqdm

    from ..export import export_model
    from ..mlc.summary import summarize

    def bar(items):
        return tqdm(items, desc=f"export {mode}", unit="tensor", disable=quiet)

    export_model(model, out, mode, force=force, quantize_embedding=quantize_embedding, progress=bar)
    s = summarize(out)
    lin, whole = s.linear, s.total()
    click.echo(
        f"{out}: {mode}, {whole.params:,} params, {whole.nbytes / 2**20:.1f} MiB in {s.shards} shard(s); "
        f"embedding {'quantized' if s.embedding_quantized else 'float16'}"
    )
    click.echo(
        f"bits per param: {lin.bits_per_param:.4f} (linear layers), "
        f"{s.metadata.get('BitsPerParam', whole.bits_per_param):.4f} (whole model)"
    )
