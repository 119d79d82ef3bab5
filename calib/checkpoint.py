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


class CalibratedCheckpoint:
    """Reader of a calibrated checkpoint's grid: quantization.json, validated, and the scale and
    zero of each quantized weight, read lazily (the exporter streams one tensor at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        meta_path = self.path / META_FILE
        self.meta = read_user_json(meta_path, f"{self.path} is not a calibrated checkpoint; run desv-export calibrate")
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise UserError(
                f"{meta_path}: format {self.meta.get('format')} v{self.meta.get('version')} is not "
                f"{FORMAT} v{VERSION}; re-run desv-export calibrate"
            )
        try:
            self.bits = int(self.meta["bits"])
            self.group_size = int(self.meta["group_size"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{meta_path} lacks integer 'bits' and 'group_size'; re-run desv-export calibrate") from None
        self.mode_name: str = self.meta.get("mode") or asym_mode_name(self.bits, self.group_size)
        self.quantized: set[str] = set(self.meta.get("quantized", []))
        self._qpath = self.path / QUANT_FILE
        if not self._qpath.is_file():
            raise UserError(f"{self._qpath} not found; a calibrated checkpoint needs its scales and zeros")
        self._file = safe_open(str(self._qpath), framework="pt")
        self._keys = set(self._file.keys())

    def grid(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale float16 [N, groups], zero uint8 [N, groups]) of the quantized weight ``name``."""
        missing = [k for k in (f"{name}.scale", f"{name}.zero") if k not in self._keys]
        if missing:
            raise UserError(f"{self._qpath} has no {missing[0]}, but quantization.json lists {name} as quantized")
        return (self._file.get_tensor(f"{name}.scale").to(torch.float16),
                self._file.get_tensor(f"{name}.zero").to(torch.uint8))


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(quantization.json, {"<name>.scale"/"<name>.zero": tensor}) of a calibrated checkpoint."""
    ckpt = CalibratedCheckpoint(path)
    tensors = {}
    for name in sorted(ckpt.quantized):
        tensors[f"{name}.scale"], tensors[f"{name}.zero"] = ckpt.grid(name)
    return ckpt.meta, tensors


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
