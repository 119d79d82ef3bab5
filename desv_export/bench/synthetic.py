"""Random weights written straight into the export format, for speed and memory benchmarks.

Decode speed and memory depend on shapes and bytes, not on values, so a LLaMA-7B/13B table
needs no 13 GB checkpoint and no float16 copy: each parameter of the exporter's plan is drawn
at random (codes as random words, small positive scales) and streamed through the same tensor
cache writer and mlc-chat-config writer as a real export.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic import atomic_dir
from ..errors import UserError
from ..export import Target, plan
from ..mlc import chat_config, tensor_cache
from ..modes import QuantMode, get_mode
from .presets import SYNTHETIC


def hf_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Shape of every HF tensor the exporter's plan reads, from config.json alone."""
    h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hd = config.get("head_dim") or h // heads
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(config["num_hidden_layers"]):
        a, m, p = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp", f"model.layers.{i}"
        shapes |= {
            f"{a}.q_proj.weight": (heads * hd, h), f"{a}.k_proj.weight": (kv * hd, h),
            f"{a}.v_proj.weight": (kv * hd, h), f"{a}.o_proj.weight": (h, heads * hd),
            f"{a}.q_proj.bias": (heads * hd,), f"{a}.k_proj.bias": (kv * hd,), f"{a}.v_proj.bias": (kv * hd,),
            f"{m}.gate_proj.weight": (inter, h), f"{m}.up_proj.weight": (inter, h),
            f"{m}.down_proj.weight": (h, inter),
            f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,),
        }
    return shapes


def _random_params(config: dict, mode: QuantMode, seed: int) -> tuple[Iterator[tuple[str, np.ndarray]], list[int]]:
    """Generator of (MLC name, array) in the exporter's order; the list fills with weight counts."""
    rng = np.random.default_rng(seed)
    shapes = hf_shapes(config)
    counted: list[int] = []

    def fp16(shape, std: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16)

    def one(t: Target) -> Iterator[tuple[str, np.ndarray]]:
        parts = [shapes[s] for s in t.sources]
        n, k = sum(p[0] for p in parts), parts[0][-1] if len(parts[0]) > 1 else None
        counted.append(n * (k or 1))
        if t.kind == "norm":
            yield t.name, np.ones((n,), np.float16)
        elif t.kind == "bias":
            yield t.name, fp16((n,), 0.02)
        elif not mode.quantized or (t.kind in ("embedding", "lm_head") and not mode.quantize_embedding_default):
            yield f"{t.name}.weight", fp16((n, k), 0.02)
        else:
            for suffix, shape in mode.shapes(n, k).items():
                if suffix == "q_scale":
                    yield f"{t.name}.{suffix}", rng.uniform(1e-3, 4e-3, shape).astype(np.float16)
                else:
                    yield f"{t.name}.{suffix}", rng.integers(0, 2**32, shape, dtype=np.uint32)

    def stream() -> Iterator[tuple[str, np.ndarray]]:
        for t in plan(config):
            yield from one(t)

    return stream(), counted


def write_synthetic(name: str, mode: str, out: Path, *, seed: int = 0, force: bool = True) -> Path:
    """An MLC weight directory of preset ``name`` in ``mode`` with random weights."""
    if name not in SYNTHETIC:
        raise UserError(f"--synthetic {name} is not a preset; choose one of {', '.join(SYNTHETIC)}")
    config = SYNTHETIC[name]
    qmode = get_mode(mode)
    with atomic_dir(Path(out), force) as tmp, tempfile.TemporaryDirectory() as src:
        (Path(src) / "config.json").write_text(json.dumps(config))
        params, counted = _random_params(config, qmode, seed)
        tensor_cache.write_tensor_cache(params, tmp, lambda: sum(counted))
        chat_config.write_chat_config(Path(src), config, qmode.name, tmp)
    return Path(out)
