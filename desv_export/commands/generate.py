"""``desv-export generate``: one prompt through a compiled library; only the text on stdout."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.argument("weight_dir", type=click.Path(path_type=Path))
@click.option("--model-lib", type=click.Path(path_type=Path), required=True, help="Library from `desv-export compile`.")
@click.option("--prompt", required=True, help="The user message (the conversation template is applied).")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Sampling seed (reproducible sampling).")
@click.option("--stop", "stop", multiple=True, help="Stop string (repeat for several), beside the template's.")
@click.option("--raw", is_flag=True, help="Feed the prompt as is, without the conversation template.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--stats", is_flag=True, help="Print prefill / decode tok/s (MLC's definitions) on stderr.")
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print tokens as they come.")
def generate(weight_dir, model_lib, prompt, max_new_tokens, temperature, top_p, repetition_penalty, seed, stop, raw,
             device, stats, stream) -> None:
    """Generate a reply to PROMPT with the model in WEIGHT_DIR compiled as MODEL_LIB."""
    from desv_export.engine.generation import Generator
    from desv_export.engine.sampler import SamplingConfig

    sampling = SamplingConfig(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    gen = Generator.open(weight_dir, model_lib, device)

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = gen.complete(prompt, use_template=not raw, max_new_tokens=max_new_tokens, sampling=sampling,
                          stop=stop, on_text=emit if stream else None)
    if not stream:
        sys.stdout.write(result.text)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if stats:
        print(result.stats.line(), file=sys.stderr)
    notice = gen.context_notice(result)
    if notice:
        print(notice, file=sys.stderr)
