"""The ``desv-export`` command line: one click group, one module per sub-command.

Sub-commands are imported only when they run, so ``desv-export --help`` stays fast and a
command's heavy imports (torch, tvm) are paid only by that command. The data path reads
top to bottom: example-model -> calibrate -> export -> compile -> generate/chat -> bench.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click.Command, in data-path order.
COMMANDS: dict[str, str] = {
    "quickstart": "desv_export.commands.quickstart:quickstart",
    "example-model": "desv_export.commands.example_model:example_model",
    "calibrate": "desv_export.commands.calibrate:calibrate",
    "eval": "desv_export.commands.evaluate:evaluate",
    "export": "desv_export.commands.export:export",
    "inspect": "desv_export.commands.inspect:inspect",
    "compile": "desv_export.commands.compile:compile_",
    "generate": "desv_export.commands.generate:generate",
    "chat": "desv_export.commands.chat:chat",
    "bench": "desv_export.commands.bench:bench",
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, invoke_without_command=True)
@click.version_option(package_name="desv-export")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Quantize a Hugging Face LLaMA-family model with DESV and ship it to MLC-LLM / TVM.

    With no sub-command, runs `quickstart`: the whole path on the built-in example model.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(main.get_command(ctx, "quickstart"))
