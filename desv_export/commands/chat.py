"""``desv-export chat``: a terminal chat on a compiled library, like ``mlc_llm chat``.

Reads lines from stdin (a terminal or a script). The conversation stays in the KV cache across
turns; ``/stats`` prints the last turn's speed, ``/reset`` starts over, ``/set`` changes the
sampling between turns in MLC's syntax, ``/exit`` (or end of input) quits, ``/help`` lists
these. A line that looks like a command but is none is refused rather than sent to the model,
so a typo such as ``/stat`` does not become a turn of the conversation.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from desv_export.engine.sampler import SamplingConfig
from desv_export.errors import UserError

HELP = """You can use the following special commands:
  /help               print this help
  /exit               quit the chat
  /stats              print the speed of the last turn (prefill and decode tok/s)
  /reset              restart a fresh conversation (clears the KV cache)
  /set [overrides]    change the sampling for the next turns, e.g.
                      `/set temperature=0.5;top_p=0.8;seed=23;max_tokens=100;stop=str1,str2`
                      (stop strings separated by commas; `/set` alone prints the settings)"""
COMMANDS = ("/help", "/exit", "/stats", "/reset", "/set")


@dataclasses.dataclass(frozen=True)
class TurnSettings:
    """What the next reply is generated with: the command line's options, then ``/set``'s."""

    sampling: SamplingConfig
    max_new_tokens: int
    stop: tuple[str, ...] = ()

    def line(self) -> str:
        s = self.sampling
        return (f"temperature={s.temperature};top_p={s.top_p};repetition_penalty={s.repetition_penalty};"
                f"seed={'' if s.seed is None else s.seed};max_tokens={self.max_new_tokens};stop={','.join(self.stop)}")


# /set keys (mlc_llm chat's names) -> how their value is read
SET_KEYS = {"temperature": float, "top_p": float, "repetition_penalty": float, "seed": int, "max_tokens": int,
            "stop": str}


def apply_set(settings: TurnSettings, overrides: str) -> TurnSettings:
    """``key=value;...`` applied to ``settings``; a bad key or value is a UserError naming it."""
    sampling = dataclasses.asdict(settings.sampling)
    max_new_tokens, stop = settings.max_new_tokens, settings.stop
    for item in filter(None, (part.strip() for part in overrides.split(";"))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SET_KEYS:
            raise UserError(f"/set {item}: expected key=value with key one of {', '.join(SET_KEYS)}")
        if key == "stop":
            stop = tuple(x for x in value.split(",") if x)
            continue
        try:
            number = SET_KEYS[key](value.strip())
        except ValueError:
            raise UserError(f"/set {key}={value}: not {'an integer' if SET_KEYS[key] is int else 'a number'}") from None
        if key == "max_tokens":
            max_new_tokens = number
        else:
            sampling[key] = number
    if max_new_tokens < 1:
        raise UserError("/set max_tokens must be at least 1")
    try:
        return TurnSettings(SamplingConfig(**sampling), max_new_tokens, stop)
    except UserError as e:  # SamplingConfig names the command-line option; say the /set key
        message = e.message
        for key in sampling:
            message = message.replace("--" + key.replace("_", "-"), key)
        raise UserError(f"/set {message}") from None


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

    sampling = SamplingConfig(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    settings = TurnSettings(sampling, max_new_tokens)
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
        name, _, overrides = command.partition(" ")
        if name == "/set":
            try:
                settings = apply_set(settings, overrides)
            except UserError as e:
                print(f"Error: {e.message}", file=sys.stderr)
                continue
            print(settings.line())
            continue
        if name.startswith("/") and name not in COMMANDS and not overrides:
            print(f"unknown command {name}: /help lists the commands", file=sys.stderr)
            continue

        def emit(delta: str) -> None:
            sys.stdout.write(delta)
            sys.stdout.flush()

        try:
            result = gen.chat(text, max_new_tokens=settings.max_new_tokens, sampling=settings.sampling,
                              stop=settings.stop, on_text=emit)
        except ContextWindowFull as e:  # the turn was not added: the chat goes on
            print(f"Error: {e.message}; /reset starts a fresh conversation", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        last = result.stats
        notice = gen.context_notice(result)
        if notice:
            print(f"{notice}, or /reset", file=sys.stderr)
