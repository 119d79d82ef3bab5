"""Loading a Hugging Face LLaMA-family directory into torch for calibration and evaluation.

The architecture is validated by ``desv_export.hf.read_config`` first, so an unsupported model
fails with one line before transformers spends seconds loading it. Calibration keeps the model
in float32 on the CPU and moves one decoder block at a time to the device (a 7B model then
needs device memory for one block, as in OmniQuant); evaluation loads float32 on the CPU and
float16 on CUDA.
"""

from __future__ import annotations

from pathlib import Path

import torch

from desv_export.errors import UserError
from desv_export.hf import read_config, weight_files


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda[:i]``; a missing GPU is the user's to fix, so a one-line error."""
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
        return torch.device(device)
    raise UserError(f"--device {device}: unknown device; use cpu or cuda")


def load_model(model_dir: Path, dtype: torch.dtype = torch.float32):
    """Return (model, config dict) of a supported HF directory, on the CPU in ``dtype``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars say what is happening
    config = read_config(model_dir)
    weight_files(model_dir)  # one-line error when the directory holds no weights
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model.eval()
    model.config.use_cache = False
    return model, config


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: cannot load its tokenizer ({type(e).__name__}); "
                        "the directory needs tokenizer.json or tokenizer.model") from None


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a LLaMA-family CausalLM (``model.model.layers``)."""
    return model.model.layers


def quantized_linears(layer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The linears calibration quantizes in one block: q/k/v/o_proj and gate/up/down_proj."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
