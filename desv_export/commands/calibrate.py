"""``desv-export calibrate``: an HF directory in, a calibrated checkpoint out (calib/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click


def work_dir_for(out: Path) -> Path:
    """Where finished blocks are kept until the checkpoint is written: ``OUT.partial``."""
    return out.with_name(out.name + ".partial")


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="Calibrated checkpoint directory to write.")
@click.option("--method", type=click.Choice(["rtn", "lwc", "lsi", "desv"]), default="desv", show_default=True)
@click.option("--bits", type=int, default=3, show_default=True, help="2, 3 or 4.")
@click.option("--group-size", type=int, default=128, show_default=True, help="32, 64 or 128 (a last partial group is padded).")
@click.option("--nsamples", type=int, default=128, show_default=True, help="Calibration windows.")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per calibration window.")
@click.option("--epochs", type=int, default=None, help="Passes over the windows per block [default: 20, 40 for 2 bits].")
@click.option("--n-diag", type=int, default=100, show_default=True, help="DESV band half-width n (2n+1 diagonals; capped at rank-1).")
@click.option("--lwc-lr", type=float, default=1e-2, show_default=True, help="AdamW lr of the clipping logits.")
@click.option("--lr", "--band-lr", "band_lr", type=float, default=1.5e-4, show_default=True, help="AdamW lr of the DESV/LSI band.")
@click.option("--wd", "weight_decay", type=float, default=0.0, show_default=True, help="AdamW weight decay of the clipping logits (the band has none).")
@click.option("--let", is_flag=True, help="Also learn LET scales (norm gains -> qkv/gate/up, v -> o, up -> down), folded into the checkpoint.")
@click.option("--let-lr", type=float, default=5e-3, show_default=True, help="AdamW lr of the LET log-scales.")
@click.option("--dataset", default="ptb", show_default=True, help="ptb, wikitext2 (train.txt in --data-dir) or a .txt/.jsonl path.")
@click.option("--data-file", type=click.Path(path_type=Path), default=None, help="A .txt or .jsonl file to calibrate on (overrides --dataset).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Directory of wikitext2 split files.")
@click.option("--seed", type=int, default=2, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (one block at a time on the device).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="Block matmuls in float32 or bf16 autocast [default: bf16 on cuda, fp32 on cpu].")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def calibrate(model_dir, out, method, bits, group_size, nsamples, seqlen, epochs, n_diag, lwc_lr, band_lr,
              weight_decay, let, let_lr, dataset, data_file, data_dir, seed, device, precision, force, quiet) -> None:
    """Quantize MODEL_DIR block by block (RTN, LWC, LSI or DESV) into a calibrated checkpoint.

    Finished blocks are kept in OUT.partial; rerunning the same command after a kill resumes.
    """
    from calib.blockwise import Settings
    from calib.model import resolve_device
    from desv_export.atomic import check_output
    from desv_export.hf import read_config, weight_files

    config = read_config(model_dir)
    weight_files(model_dir)
    if epochs is None:
        epochs = 40 if bits == 2 else 20
    source = str(data_file) if data_file is not None else dataset
    settings = Settings(method=method, bits=bits, group_size=group_size, n_diag=n_diag, nsamples=nsamples,
                        seqlen=seqlen, epochs=epochs, lwc_lr=lwc_lr, band_lr=band_lr, weight_decay=weight_decay,
                        dataset=source, seed=seed, device=device, precision=precision, let=let, let_lr=let_lr)
    resolve_device(device)
    check_output(out, force)
    run_calibration(model_dir, out, config, settings, data_dir=data_dir, force=force, progress=not quiet)


def run_calibration(model_dir: Path, out: Path, config: dict, settings, data_dir: Path | None = None,
                    force: bool = False, progress: bool = True) -> None:
    """Load, (load data,) calibrate with resume, write atomically, drop the work dir."""
    import torch

    from calib.blockwise import calibrate as run, prepare_work_dir
    from calib.checkpoint import write_checkpoint
    from calib.data import load_calibration
    from calib.model import load_model, load_tokenizer
    from desv_export.atomic import atomic_dir
    from desv_export.hf import weight_files

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    identity = dict(settings.to_json())
    identity["model"] = str(Path(model_dir).resolve())
    identity["weights"] = {p.name: p.stat().st_size for p in weight_files(model_dir)}
    work = work_dir_for(Path(out))
    fresh = not work.exists()
    prepare_work_dir(work, identity)  # refuse a mismatched resume before any slow work
    try:
        windows = None
        if settings.needs_data:
            tokenizer = load_tokenizer(model_dir)
            windows = load_calibration(tokenizer, settings.dataset, settings.nsamples, settings.seqlen,
                                       settings.seed, data_dir)
        model, _ = load_model(model_dir, torch.float32)
        result = run(model, settings, work, windows=windows, identity=identity, log=log, progress=progress)
    except BaseException:
        if fresh and not any(work.glob("block_*.json")):  # nothing worth resuming: leave nothing
            shutil.rmtree(work, ignore_errors=True)
        raise
    with atomic_dir(Path(out), force=force) as tmp:
        write_checkpoint(tmp, model_dir, config, model, result.quants, settings.to_json(), result.blocks)
    shutil.rmtree(work, ignore_errors=True)
    total = sum(b["seconds"] for b in result.blocks)
    method = settings.method + ("+let" if settings.let else "")
    log(f"wrote {out} ({method} W{settings.bits}g{settings.group_size}, "
        f"{len(result.quants)} linears, {total:.1f} s in blocks)")
