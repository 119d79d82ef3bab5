"""``desv-export eval``: perplexity of an HF directory, a calibrated checkpoint, or a compiled
model library (``--model-lib``, on an MLC weight directory), all on the same token windows."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--dataset", "datasets", multiple=True, default=("wikitext2",), show_default=True,
              help="ptb, wikitext2 or a .txt/.jsonl path; repeat for several.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Directory with WikiText-2 {valid,test}.txt [default: ../shared/data/wikitext-2].")
@click.option("--split", default="test", show_default=True, help="test or valid (named datasets).")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per window.")
@click.option("--max-windows", type=int, default=None, help="Score only the first N windows.")
@click.option("--device", default="cpu", show_default=True, help="cpu (float32) or cuda (float16).")
@click.option("--model-lib", type=click.Path(path_type=Path), default=None,
              help="Compiled model library: MODEL is then its MLC weight directory.")
@click.option("--json", "as_json", is_flag=True, help='Print {"dataset": ppl, ...} on stdout.')
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(model, datasets, data_dir, split, seqlen, max_windows, device, model_lib, as_json, quiet) -> None:
    """Perplexity of MODEL (GPTQ protocol: windows of SEQLEN tokens, exp(mean NLL))."""
    from calib.data import load_eval
    from calib.model import load_tokenizer, resolve_device
    from desv_export.errors import UserError

    if seqlen < 2:
        raise UserError(f"--seqlen {seqlen}: must be at least 2")
    if max_windows is not None and max_windows < 1:
        raise UserError(f"--max-windows {max_windows}: must be at least 1")
    dev = resolve_device(device)
    if not Path(model).is_dir():
        raise UserError(f"{model} is not a directory; pass a model directory")
    if model_lib is None:  # validate before the slow tokenisation
        from desv_export.hf import read_config, weight_files

        read_config(model)
        weight_files(model)
    elif not Path(model_lib).is_file():
        raise UserError(f"--model-lib {model_lib} not found; compile one with desv-export compile")
    tokenizer = load_tokenizer(model)
    windows = {name: load_eval(tokenizer, name, seqlen, max_windows, data_dir, split) for name in datasets}
    results: dict[str, float] = {}
    if model_lib is None:
        import torch

        from calib.evaluate import perplexity
        from calib.model import load_model

        net, _ = load_model(model, torch.float16 if dev.type == "cuda" else torch.float32)
        net.to(dev)
        for name, w in windows.items():
            results[name] = perplexity(net, w, dev, progress=not quiet, desc=name)
    else:
        from desv_export.engine.perplexity import library_perplexity

        for name, w in windows.items():
            results[name] = library_perplexity(str(model), str(model_lib), w, device, progress=not quiet, desc=name)
    if as_json:
        click.echo(json.dumps(results))
    else:
        for name, ppl in results.items():
            click.echo(f"{name}: perplexity {ppl:.3f} ({len(windows[name])} windows x {seqlen} tokens)")
