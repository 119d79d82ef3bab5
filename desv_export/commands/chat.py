"""``desv-export chat``: a terminal chat on a compiled library, like ``mlc_llm chat``.

Reads lines from stdin (a terminal or a script). The conversation stays in the KV cache across
turns; ``/stats`` prints the last turn's speed, ``/reset`` starts over, ``/exit`` (or end of
input) quits, ``/help`` lists these.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

HELP = """You can use the following special commands:
  /help   print this help
  /exit   quit the chat
  /stats  print the speed of the last turn (prefill and decode tok/s)
  /reset  restart a fresh conversation (clears the KV cache)"""


@click.command()
@click.argument("weight_dir", type=click.Path(path_type=Path))
@click.option("--model-lib", type=click.Path(path_type=Path), required=True, help="Library from `desv-export compile`.")
@click.option("--max-new-tokens", type=int, default=512, show_default=True, help="Per reply.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
def chat(weight_dir, model_lib, max_new_tokens, temperature, top_p, repetition_penalty, seed, device) -> None:
    """Chat with the model in WEIGHT_DIR compiled as MODEL_LIB."""
    from desv_export.engine.generation import Generator
    from desv_export.engine.library import ContextWindowFull
    from desv_export.engine.sampler import SamplingConfig

    sampling = SamplingConfig(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    gen = Generator.open(weight_dir, model_lib, device)
    gen.reset()
    interactive = sys.stdin.isatty()
    print(HELP)
    last = None
    while True:
        if interactive:
            sys.stdout.write(">>> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        command = text.strip()
        if not command:
            continue
        if command == "/exit":
            break
        if command == "/help":
            print(HELP)
            continue
        if command == "/reset":
            gen.reset()
            last = None
            print("RESET CHAT SUCCESSFULLY")
            continue
        if command == "/stats":
            print(last.line() if last is not None else "no statistics yet: say something first")
            continue

        def emit(delta: str) -> None:
            sys.stdout.write(delta)
            sys.stdout.flush()

        try:
            result = gen.chat(text, max_new_tokens=max_new_tokens, sampling=sampling, on_text=emit)
        except ContextWindowFull as e:  # the turn was not added: the chat goes on
            print(f"Error: {e.message}; /reset starts a fresh conversation", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        last = result.stats
        notice = gen.context_notice(result)
        if notice:
            print(f"{notice}, or /reset", file=sys.stderr)
