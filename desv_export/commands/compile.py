"""``desv-export compile``: an MLC weight directory in, one model library (.so) out."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("compile")
@click.argument("weight_dir", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["llvm", "cuda", "auto"]), default="auto", show_default=True,
              help="llvm: this CPU; cuda: NVIDIA GPU (--arch); auto: cuda when a GPU is visible.")
@click.option("--arch", type=click.Choice(["sm_80", "sm_86", "sm_89", "sm_90"]), default=None,
              help="CUDA architecture (needed without a visible GPU).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Library to write (.so).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="Compute dtype [default: float32 on llvm, float16 on cuda].")
@click.option("--schedules", type=click.Choice(["ours", "dlight"]), default="ours", show_default=True,
              help="CUDA matmul schedules: tvm_schedules + dlight, or dlight only (MLC-LLM's baseline).")
@click.option("--context-window-size", type=int, default=None, help="Override mlc-chat-config.json.")
@click.option("--prefill-chunk-size", type=int, default=None, help="Override mlc-chat-config.json.")
@click.option("--max-batch-size", type=int, default=None, help="Override mlc-chat-config.json.")
@click.option("--cuda-cache", type=click.Path(path_type=Path), default=None,
              help="cuda: also compile the kernels with nvcc into this directory; on the GPU machine "
                   "point DESV_EXPORT_CUDA_CACHE at it and the library loads without compiling.")
@click.option("--force", is_flag=True, help="Overwrite an existing library.")
def compile_(weight_dir, target, arch, output, dtype, schedules, context_window_size, prefill_chunk_size,
             max_batch_size, cuda_cache, force) -> None:
    """Compile WEIGHT_DIR (from `desv-export export`) into a model library for MLC-LLM's interface."""
    from desv_export.compile import compile_model

    compile_model(
        weight_dir, output, target=target, arch=arch, dtype=dtype, schedules=schedules,
        context_window_size=context_window_size, prefill_chunk_size=prefill_chunk_size,
        max_batch_size=max_batch_size, cuda_cache=cuda_cache, force=force, log=lambda m: print(m, file=sys.stderr),
    )
