"""The calibrated checkpoint: the contract between calibration and export.

A directory that is still an ordinary, loadable Hugging Face checkpoint:

* ``config.json`` (``torch_dtype`` float16), tokenizer and side files copied from the source;
* ``model.safetensors``: every tensor under its HF name in float16; each quantized linear's
  ``*.weight`` is w_hat, exactly on its grid; tied embeddings stored once (no lm_head.weight);
* ``quantization.safetensors``: ``<name>.scale`` float16 [N, ceil(K/G)] and ``<name>.zero``
  uint8 [N, ceil(K/G)] for every quantized ``<name>`` (an HF ``*.weight`` name);
* ``quantization.json``: format, version, method, bits, group size, mode, settings, the list of
  quantized names and the per-block summary.

The integer codes are not stored: they are ``round(w_hat / scale) + zero`` exactly (the exporter
recomputes them, and ``verify`` below checks that they reproduce w_hat). See
docs/calibrated-checkpoint.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from desv_export.errors import UserError, read_user_json
from desv_export.hf import copy_tokenizer_files
from desv_export.modes import asym_mode_name

FORMAT = "desv-calibrated"
VERSION = 1
META_FILE = "quantization.json"
QUANT_FILE = "quantization.safetensors"
MODEL_FILE = "model.safetensors"


def model_tensors(model, tied: bool) -> dict[str, torch.Tensor]:
    """The model's persistent tensors under their HF names, float16, tied head dropped."""
    state = model.state_dict()
    if tied:
        state.pop("lm_head.weight", None)
    return {k: v.detach().to(torch.float16).contiguous() for k, v in sorted(state.items())}


def write_checkpoint(out: Path, src_dir: Path, config: dict, model, quants: dict, settings: dict, blocks: list[dict]) -> None:
    """Write the checkpoint into ``out`` (an empty directory; the caller renames it atomically)."""
    out = Path(out)
    tied = bool(config.get("tie_word_embeddings", False))
    tensors = model_tensors(model, tied)
    for name, q in quants.items():  # the model already holds w_hat; make sure it is exactly it
        if not torch.equal(tensors[name], q.w_hat.to(torch.float16)):
            raise AssertionError(f"{name}: model weight is not the folded w_hat")
    save_file(tensors, str(out / MODEL_FILE), metadata={"format": "pt"})
    qt = {}
    for name in sorted(quants):
        qt[f"{name}.scale"] = quants[name].scale.to(torch.float16).contiguous()
        qt[f"{name}.zero"] = quants[name].zero.to(torch.uint8).contiguous()
    save_file(qt, str(out / QUANT_FILE), metadata={"format": "pt"})
    cfg = dict(config)
    cfg["torch_dtype"] = "float16"
    if "dtype" in cfg:
        cfg["dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    copy_tokenizer_files(src_dir, out)
    bits, g = settings["bits"], settings["group_size"]
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "method": settings["method"],
        "bits": bits,
        "group_size": g,
        "symmetric": False,
        "mode": asym_mode_name(bits, g),
        "settings": {k: v for k, v in settings.items() if k not in ("method", "bits", "group_size")},
        "quantized": sorted(quants),
        "blocks": blocks,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def is_calibrated(path: Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(quantization.json, {"<name>.scale"/"<name>.zero": tensor}) of a calibrated checkpoint."""
    path = Path(path)
    meta_path = path / META_FILE
    meta = read_user_json(meta_path, f"{path} is not a calibrated checkpoint; run desv-export calibrate")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"{meta_path}: format {meta.get('format')} v{meta.get('version')} is not {FORMAT} v{VERSION}")
    with safe_open(str(path / QUANT_FILE), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def codes(w_hat: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """Integer codes [N, ng*G] uint8 of an on-grid weight (padded columns repeat the last one)."""
    from .quantizer import to_groups

    wg = to_groups(w_hat.float(), group_size)
    q = (wg / scale.float().unsqueeze(-1)).round() + zero.float().unsqueeze(-1)
    return q.reshape(q.shape[0], -1).to(torch.uint8)


def verify(path: Path) -> int:
    """Check every quantized weight equals dequantize(codes, scale, zero); return how many."""
    from .quantizer import dequantize

    meta, qt = read_checkpoint(path)
    g = meta["group_size"]
    with safe_open(str(Path(path) / MODEL_FILE), framework="pt") as f:
        for name in meta["quantized"]:
            w = f.get_tensor(name)
            s, z = qt[f"{name}.scale"], qt[f"{name}.zero"]
            c = codes(w, s, z, g)
            if int(c.max()) > 2 ** meta["bits"] - 1 or not torch.equal(dequantize(c, s, z, w.shape[1]), w):
                raise AssertionError(f"{name} is not on its grid")
    return len(meta["quantized"])
