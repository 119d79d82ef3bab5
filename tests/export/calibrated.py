"""Build a calibrated checkpoint (CONTEXT.md contract 1) in the test itself.

The exporter's tests must not wait for ``desv-export calibrate``: this writes the contract's
files directly from ``calib.quantizer.quantize``. With ``perturb`` the LWC logits are random,
so the grid is not the RTN grid: export must keep it, not recompute it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from calib.quantizer import quantize
from desv_export.hf import copy_tokenizer_files

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_calibrated(src: Path, out: Path, bits: int, group_size: int, perturb: bool = True, seed: int = 0) -> Path:
    """Quantize every linear of the HF dir ``src`` on an (LWC-like) grid; write contract 1."""
    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    config = json.loads((src / "config.json").read_text())
    if config.get("tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    gen = torch.Generator().manual_seed(seed)
    quant = {}
    names = sorted(n for n in tensors if n.endswith(".weight") and n.split(".")[-2] in LINEARS)
    for name in names:
        w = tensors[name].float()
        n, k = w.shape
        ng = -(-k // group_size)
        up = low = None
        if perturb:
            up = 1.0 + 3.0 * torch.rand(n, ng, generator=gen)
            low = 1.0 + 3.0 * torch.rand(n, ng, generator=gen)
        q = quantize(w, bits, group_size, up, low)
        tensors[name] = q.w_hat
        quant[f"{name}.scale"] = q.scale.contiguous()
        quant[f"{name}.zero"] = q.zero.contiguous()
    save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    save_file(quant, str(out / "quantization.safetensors"))
    config["torch_dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    copy_tokenizer_files(src, out)
    if (src / "generation_config.json").is_file():
        shutil.copy(src / "generation_config.json", out / "generation_config.json")
    meta = {
        "format": "desv-calibrated",
        "version": 1,
        "method": "lwc" if perturb else "rtn",
        "bits": bits,
        "group_size": group_size,
        "symmetric": False,
        "mode": f"q{bits}f16_g{group_size}asym",
        "settings": {"seed": seed},
        "quantized": names,
        "blocks": [],
    }
    (out / "quantization.json").write_text(json.dumps(meta, indent=2))
    return out
