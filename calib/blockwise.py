"""Block-wise reconstruction (OmniQuant's loop) for RTN, LWC, LSI and DESV, resumable.

For each decoder block i, in order:

1. fp targets: the float block on the float inputs (``fp_inps`` -> ``fp_outs``);
2. learn: AdamW on the LWC logits of every linear (and, for LSI/DESV, the SVD band; with
   ``--let``, the block's LET scales, ``calib.let``) to minimise
   MSE(fp_outs, block_with_fake_quant_weights(q_inps)); batch 1, windows in order;
3. fold: each linear's W' = W + U B Vh (times LET's column scales) goes through
   ``calib.quantizer.quantize`` with the learned clipping, and the block's weights become the
   float16 grid values w_hat (LET's norm gains and biases take their divided values);
4. propagate: ``q_inps`` <- folded block(q_inps); ``fp_inps`` <- ``fp_outs``.

RTN skips 1, 2 and 4 (it needs no data). Block-0 inputs, and the extra arguments the HF decoder
layer needs (rotary ``position_embeddings``, ``attention_mask``, ``position_ids``), are caught
with a hook on block 0 while the embedding runs, so the blocks are called exactly as the HF
model calls them.

Precision: float32, or bf16 autocast (``--precision``; the default on CUDA). The grid, the
fold and the stored weights are float32/float16 either way; autocast only changes the block's
matmuls while learning and propagating.

Resume: after each block, its folded weights, scales, zeros, LET tensors, loss and seconds are written to
``work_dir/block_NNNN.*`` (a small file: one block's weights). A restarted run with the same
settings replays the finished blocks' forward passes (float and folded; no training) to rebuild
the activations, then carries on. Replaying, rather than saving activations, keeps the work dir
as small as the checkpoint (activations are nsamples x seqlen x hidden floats, twice, per
block: 1.2 GB for the defaults at hidden 576) and costs a few forward passes per finished
block. Training has no randomness (zero/constant init, windows in order) and each block also
reseeds torch, so the resumed result is bit-identical to an uninterrupted run on the same machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from desv_export.atomic import atomic_file
from desv_export.errors import UserError

from .desv import SVDBand
from .let import BlockLET
from .model import decoder_layers, quantized_linears
from .quantizer import LWC, GroupQuant, fake_quant, quantize

METHODS = ("rtn", "lwc", "lsi", "desv")
PRECISIONS = ("fp32", "bf16")
BITS = (2, 3, 4)
GROUP_SIZES = (32, 64, 128)
# Test hook: raise after this block is saved, to simulate a killed run.
KILL_AFTER_BLOCK_ENV = "DESV_EXPORT_KILL_AFTER_BLOCK"


@dataclass
class Settings:
    """Everything that determines the result; stored in quantization.json and the work dir."""

    method: str
    bits: int
    group_size: int
    n_diag: int = 100
    nsamples: int = 128
    seqlen: int = 2048
    epochs: int = 20
    lwc_lr: float = 1e-2
    band_lr: float = 1.5e-4
    weight_decay: float = 0.0
    dataset: str | None = "ptb"
    seed: int = 2
    device: str = "cpu"
    precision: str | None = None  # fp32 | bf16; None: bf16 on CUDA, fp32 on the CPU
    let: bool = False
    let_lr: float = 5e-3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"--method {self.method}: choose one of {', '.join(METHODS)}")
        if self.bits not in BITS:
            raise UserError(f"--bits {self.bits}: choose 2, 3 or 4")
        if self.group_size not in GROUP_SIZES:
            raise UserError(f"--group-size {self.group_size}: choose 32, 64 or 128")
        for name in ("nsamples", "seqlen", "epochs"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} {getattr(self, name)}: must be at least 1")
        if self.n_diag < 0:
            raise UserError(f"--n-diag {self.n_diag}: must be 0 or more")
        if self.method == "lsi":
            self.n_diag = 0
        if self.precision is None:
            self.precision = "bf16" if self.device.startswith("cuda") else "fp32"
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision}: choose {' or '.join(PRECISIONS)}")
        if self.let and not self.needs_data:
            raise UserError("--let learns from data; use it with --method lwc, lsi or desv, not rtn")

    @property
    def uses_band(self) -> bool:
        return self.method in ("lsi", "desv")

    @property
    def needs_data(self) -> bool:
        return self.method != "rtn"

    def to_json(self) -> dict:
        d = asdict(self)
        if not self.needs_data:  # RTN learns nothing: the data settings did not shape it
            for k in ("nsamples", "seqlen", "epochs", "lwc_lr", "band_lr", "weight_decay", "dataset", "n_diag",
                      "precision", "let_lr"):
                d[k] = None
        elif not self.uses_band:
            d["n_diag"] = d["band_lr"] = None
        if not self.let:
            d["let_lr"] = None
        return d


@dataclass
class Calibrated:
    """The result: per quantized HF weight name its grid, plus the per-block summary."""

    quants: dict[str, GroupQuant]
    blocks: list[dict]


def _block_forward(layer, x, kwargs, weights=None):
    if weights is None:
        out = layer(x, **kwargs)
    else:
        out = torch.func.functional_call(layer, weights, (x,), kwargs, strict=False)
    return out[0] if isinstance(out, tuple) else out


def _autocast(settings: Settings):
    """bf16 mixed precision (no loss scaling needed), the CUDA default; float32 otherwise. The
    same autocast runs on the CPU with ``--precision bf16``, which is how it is tested here."""
    if settings.precision == "bf16":
        return torch.autocast(torch.device(settings.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Caught(Exception):
    pass


@torch.no_grad()
def catch_block0_inputs(model, windows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, dict]:
    """Hidden states entering block 0 for each window [ns, L, H] (float32) and block kwargs."""
    inner = model.model
    moved = [inner.embed_tokens, inner.rotary_emb, inner.layers[0]]
    for m in moved:
        m.to(device)
    caught: list[torch.Tensor] = []
    kwargs: dict = {}

    def hook(_module, args, kw):
        caught.append((args[0] if args else kw["hidden_states"]).float())
        if not kwargs:
            kwargs.update({k: v for k, v in kw.items() if k not in ("hidden_states", "past_key_values", "use_cache")})
        raise _Caught

    handle = inner.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for w in windows:
            try:
                inner(input_ids=w.unsqueeze(0).to(device), use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
        for m in moved:
            m.to("cpu")
    return torch.cat(caught), kwargs


@torch.no_grad()
def _propagate(layer, inps: torch.Tensor, kwargs: dict, settings: Settings) -> torch.Tensor:
    outs = torch.empty_like(inps)
    with _autocast(settings):
        for s in range(inps.shape[0]):
            outs[s : s + 1] = _block_forward(layer, inps[s : s + 1], kwargs).float()
    return outs


@dataclass
class Folded:
    """One block's result: the grid of each linear, and the other tensors LET rescaled."""

    quants: dict[str, GroupQuant]
    extra: dict[str, torch.Tensor]


def _train_block(layer, fp_outs, q_inps, kwargs, settings: Settings, device, bar) -> tuple[Folded, float]:
    """Learn the block's clipping (and band, and LET scales), fold; return it and the
    last-epoch mean loss."""
    linears = quantized_linears(layer)
    layer.requires_grad_(False)
    lwcs = {n: LWC(m.out_features, m.in_features, settings.group_size).to(device) for n, m in linears.items()}
    bands = {n: SVDBand(m.weight, settings.n_diag) for n, m in linears.items()} if settings.uses_band else {}
    let = BlockLET(layer) if settings.let else None
    groups = [{"params": [p for l in lwcs.values() for p in l.parameters()], "lr": settings.lwc_lr,
               "weight_decay": settings.weight_decay}]
    if bands:
        groups.append({"params": [b.band for b in bands.values()], "lr": settings.band_lr, "weight_decay": 0.0})
    if let is not None:
        groups.append({"params": list(let.parameters()), "lr": settings.let_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    b, g = settings.bits, settings.group_size

    def block_tensors() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Float weights to quantize, and the other tensors that LET changes."""
        weights = {n: bands[n].weight() if bands else m.weight for n, m in linears.items()}
        return let.transform(weights) if let is not None else (weights, {})

    loss_mean = float("nan")
    for _epoch in range(settings.epochs):
        total = 0.0
        for s in range(q_inps.shape[0]):
            weights, extra = block_tensors()
            params = {f"{n}.weight": fake_quant(weights[n], b, g, lwcs[n].up, lwcs[n].low) for n in linears}
            params.update(extra)
            with _autocast(settings):
                out = _block_forward(layer, q_inps[s : s + 1], kwargs, params)
            loss = F.mse_loss(out.float(), fp_outs[s : s + 1])
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()} in training; lower --lwc-lr/--band-lr/--let-lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3e}")
        loss_mean = total / q_inps.shape[0]
    with torch.no_grad():
        weights, extra = block_tensors()
        quants = {n: quantize(weights[n], b, g, lwcs[n].up, lwcs[n].low) for n in linears}
        return Folded(quants, {k: v.detach().clone() for k, v in extra.items()}), loss_mean


def _set_folded(layer, folded: Folded) -> None:
    """Make the block compute what ships: w_hat in every linear, LET's norm gains and biases."""
    linears = quantized_linears(layer)
    params = dict(layer.named_parameters())
    with torch.no_grad():
        for n, q in folded.quants.items():
            linears[n].weight.copy_(q.w_hat.float())
        for k, v in folded.extra.items():
            params[k].copy_(v)


def _save_block(work_dir: Path, i: int, folded: Folded, summary: dict) -> None:
    tensors = {f"extra.{k}": v.cpu().contiguous() for k, v in folded.extra.items()}
    for n in sorted(folded.quants):
        q = folded.quants[n]
        tensors[f"{n}.weight"] = q.w_hat.cpu().contiguous()
        tensors[f"{n}.scale"] = q.scale.cpu().contiguous()
        tensors[f"{n}.zero"] = q.zero.cpu().contiguous()
    with atomic_file(work_dir / f"block_{i:04d}.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_file(work_dir / f"block_{i:04d}.json") as tmp:  # written last: marks the block done
        tmp.write_text(json.dumps(summary))


def _load_block(work_dir: Path, i: int, names) -> tuple[Folded, dict]:
    t = load_file(str(work_dir / f"block_{i:04d}.safetensors"))
    quants = {n: GroupQuant(w_hat=t[f"{n}.weight"], codes=None, scale=t[f"{n}.scale"], zero=t[f"{n}.zero"]) for n in names}
    extra = {k[len("extra."):]: v for k, v in t.items() if k.startswith("extra.")}
    return Folded(quants, extra), json.loads((work_dir / f"block_{i:04d}.json").read_text())


def prepare_work_dir(work_dir: Path, identity: dict) -> int:
    """Create or check the resume directory; return how many blocks are already done."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
        if diff:
            k = diff[0]
            raise UserError(
                f"{work_dir} holds a run with different settings ({k}: {old.get(k)} there, "
                f"{identity.get(k)} now); rerun with the same options or delete {work_dir}"
            )
    else:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(identity, indent=1, sort_keys=True))
    done = 0
    while (work_dir / f"block_{done:04d}.json").is_file():
        done += 1
    return done


def calibrate(
    model,
    settings: Settings,
    work_dir: Path,
    windows: torch.Tensor | None = None,
    identity: dict | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Calibrated:
    """Quantize every decoder block of ``model`` in place (weights become w_hat); resumable."""
    from tqdm.auto import tqdm

    device = torch.device(settings.device)
    layers = decoder_layers(model)
    done = prepare_work_dir(Path(work_dir), identity if identity is not None else settings.to_json())
    if done:
        log(f"resuming from {work_dir}: {done} of {len(layers)} blocks done")
    kill_after = os.environ.get(KILL_AFTER_BLOCK_ENV)

    fp_inps = q_inps = kwargs = None
    if settings.needs_data and done < len(layers):
        if windows is None:
            raise ValueError("calibration windows are needed for method " + settings.method)
        fp_inps, kwargs = catch_block0_inputs(model, windows, device)
        q_inps = fp_inps.clone()
        kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else
                      tuple(t.to(device) for t in v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}

    quants: dict[str, GroupQuant] = {}
    blocks: list[dict] = []
    for i, layer in enumerate(layers):
        names = list(quantized_linears(layer))
        layer.to(device)
        last = i == len(layers) - 1
        torch.manual_seed(settings.seed * 100_003 + i)
        if i < done:
            folded, summary = _load_block(Path(work_dir), i, names)
            if fp_inps is not None and not last:
                fp_outs = _propagate(layer, fp_inps, kwargs, settings)
                _set_folded(layer, folded)
                q_inps = _propagate(layer, q_inps, kwargs, settings)
                fp_inps = fp_outs
            else:
                _set_folded(layer, folded)
        else:
            t0 = time.perf_counter()
            loss = None
            if settings.needs_data:
                fp_outs = _propagate(layer, fp_inps, kwargs, settings)
                total = settings.epochs * settings.nsamples
                with tqdm(total=total, desc=f"block {i + 1}/{len(layers)}", leave=False, disable=not progress,
                          dynamic_ncols=True) as bar:
                    folded, loss = _train_block(layer, fp_outs, q_inps, kwargs, settings, device, bar)
                _set_folded(layer, folded)
                if not last:
                    q_inps = _propagate(layer, q_inps, kwargs, settings)
                fp_inps = fp_outs
            else:
                folded = Folded({n: quantize(m.weight, settings.bits, settings.group_size)
                                 for n, m in quantized_linears(layer).items()}, {})
                _set_folded(layer, folded)
            summary = {"index": i, "loss": loss, "seconds": round(time.perf_counter() - t0, 3)}
            _save_block(Path(work_dir), i, folded, summary)
            loss_txt = "-" if loss is None else f"{loss:.4e}"
            log(f"block {i + 1}/{len(layers)}: loss {loss_txt}, {summary['seconds']:.1f} s")
            if kill_after is not None and int(kill_after) == i:
                raise RuntimeError(f"{KILL_AFTER_BLOCK_ENV}={i}: simulated kill after block {i}")
        layer.to("cpu")
        blocks.append(summary)
        for n, q in folded.quants.items():
            quants[f"model.layers.{i}.{n}.weight"] = GroupQuant(q.w_hat.cpu(), None, q.scale.cpu(), q.zero.cpu())
    return Calibrated(quants=quants, blocks=blocks)
