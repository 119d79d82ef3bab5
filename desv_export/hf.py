"""Reading a Hugging Face checkpoint directory: config, weights (streamed), tokenizer files.

Shared by calibration (which loads the whole model) and export (which streams tensors one at a
time so a 7B model never sits in memory twice).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import UserError, read_user_json

# LLaMA-family architectures: RMSNorm, RoPE, SwiGLU MLP, (G)QA; Qwen2 adds a qkv bias.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

# Every tokenizer file MLC-LLM copies into a weight directory (gen_config.py).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
)
# Copied with the tokenizer so a calibrated checkpoint stays a loadable HF directory.
SIDE_FILES = ("generation_config.json", "special_tokens_map.json", "chat_template.jinja")


def read_config(model_dir: Path) -> dict:
    """Return config.json of a supported model directory, or raise a one-line UserError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir} is not a directory; pass a Hugging Face model directory")
    path = model_dir / "config.json"
    config = read_user_json(path, "a Hugging Face model directory needs config.json")
    archs = config.get("architectures") or [config.get("model_type", "?")]
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"{path}: architecture {archs[0]} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return config


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files: *.safetensors, else pytorch_model*.bin."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    if not files:
        raise UserError(
            f"{model_dir} holds no weights; expected *.safetensors or pytorch_model*.bin"
        )
    return files


def iter_tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, float32-or-native numpy array) one tensor at a time."""
    import torch

    for path in weight_files(model_dir):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, _to_numpy(f.get_tensor(name))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            for name in list(state):
                yield name, _to_numpy(state.pop(name))


def _to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def copy_tokenizer_files(src: Path, dst: Path, with_side_files: bool = True) -> list[str]:
    """Copy whichever tokenizer files exist; return their names. No tokenizer is an error."""
    names = [n for n in TOKENIZER_FILES if (Path(src) / n).is_file()]
    if not names:
        raise UserError(
            f"{src} has no tokenizer files; expected one of {', '.join(TOKENIZER_FILES)}"
        )
    extra = [n for n in SIDE_FILES if with_side_files and (Path(src) / n).is_file()]
    for n in names + extra:
        shutil.copy2(Path(src) / n, Path(dst) / n)
    return names
