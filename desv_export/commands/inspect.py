"""``desv-export inspect``: what an MLC weight directory holds, and whether its shards are intact."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("weight_dir", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Re-read every shard and check its size and md5 against tensor-cache.json.")
def inspect(weight_dir: Path, verify: bool) -> None:
    """Summarise WEIGHT_DIR: params, bytes and bits per param by tensor kind, mode, shards."""
    from ..errors import UserError
    from ..mlc.summary import KINDS, summarize
    from ..mlc.tensor_cache import verify_shards

    s = summarize(weight_dir)
    click.echo(f"{weight_dir}")
    click.echo(f"quantization: {s.quantization}   shards: {s.shards}   "
               f"embedding: {'quantized' if s.embedding_quantized else 'float16'}")
    click.echo(f"{'kind':<10} {'params':>14} {'bytes':>14} {'bits/param':>10}  stored")
    rows = [(k, s.kinds[k]) for k in KINDS if k in s.kinds] + [("linear", s.linear), ("total", s.total())]
    for kind, st in rows:
        if kind in ("linear", "total"):
            click.echo("-" * 58)
        stored = "quantized" if st.quantized else "float16"
        click.echo(f"{kind:<10} {st.params:>14,} {st.nbytes:>14,} {st.bits_per_param:>10.4f}  {stored}")
    if "BitsPerParam" in s.metadata:
        click.echo(f"tensor-cache.json metadata: {s.metadata}")
    if verify:
        problems = verify_shards(weight_dir)
        for p in problems:
            click.echo(f"MISMATCH {p}", err=True)
        if problems:
            raise UserError(f"{weight_dir}: {problems[0]} ({len(problems)} problem(s)); re-export the directory")
        click.echo(f"verify: {s.shards} shard(s) OK (size and md5)")
