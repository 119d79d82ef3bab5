"""Random weights written straight into the export format, for speed and memory benchmarks.

Decode speed and memory depend on shapes and bytes, not on values, so a LLaMA-7B/13B table
needs no 13 GB checkpoint and no float16 copy: each parameter of the exporter's plan is drawn
at random (codes as random words, small positive scales) and streamed through the same tensor
cache writer and mlc-chat-config writer as a real export. Compiling needs only the names,
shapes and dtypes, so ``bench --compile-only`` writes the two JSON files and no shard.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic import atomic_dir
from ..errors import UserError
from ..export import plan
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


@dataclass(frozen=True)
class _Param:
    """One tensor of the export: what compile reads (name, shape, dtype) and how to draw it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    draw: str  # "ones", "normal" (std 0.02), "scale" (small positive), "codes" (random words)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _params(config: dict, mode: QuantMode) -> tuple[list[_Param], int]:
    """Every tensor the exporter writes for ``mode``, in its order, and the source model's
    weight count (MLC's ``total_param_num``)."""
    shapes = hf_shapes(config)
    params: list[_Param] = []
    weights = 0
    for t in plan(config):
        parts = [shapes[s] for s in t.sources]
        n, k = sum(p[0] for p in parts), parts[0][-1] if len(parts[0]) > 1 else None
        weights += n * (k or 1)
        if t.kind == "norm":
            params.append(_Param(t.name, (n,), "float16", "ones"))
        elif t.kind == "bias":
            params.append(_Param(t.name, (n,), "float16", "normal"))
        elif not mode.quantized or (t.kind in ("embedding", "lm_head") and not mode.quantize_embedding_default):
            params.append(_Param(f"{t.name}.weight", (n, k), "float16", "normal"))
        else:
            for suffix, shape in mode.shapes(n, k).items():
                scale = suffix == "q_scale"
                params.append(_Param(f"{t.name}.{suffix}", tuple(shape), "float16" if scale else "uint32",
                                     "scale" if scale else "codes"))
    return params, weights


def _draw(params: list[_Param], seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """(MLC name, random array), one tensor at a time."""
    rng = np.random.default_rng(seed)
    for p in params:
        if p.draw == "ones":
            yield p.name, np.ones(p.shape, np.float16)
        elif p.draw == "normal":
            yield p.name, (rng.standard_normal(p.shape, dtype=np.float32) * 0.02).astype(np.float16)
        elif p.draw == "scale":
            yield p.name, rng.uniform(1e-3, 4e-3, p.shape).astype(np.float16)
        else:
            yield p.name, rng.integers(0, 2**32, p.shape, dtype=np.uint32)


def _write_index(params: list[_Param], weights: int, out: Path) -> None:
    """tensor-cache.json naming every tensor, with no shard behind it: all that compile reads
    (``read_weight_dir``), without drawing or writing the gigabytes of a 7B model's codes.
    One group whose dataPath is null, so nothing mistakes it for loadable weights."""
    nbytes = sum(p.nbytes for p in params)
    records, offset = [], 0
    for p in params:
        records.append({"name": p.name, "shape": list(p.shape), "dtype": p.dtype,
                        "format": tensor_cache.ENCODE_FORMAT, "nbytes": p.nbytes, "byteOffset": offset})
        offset += p.nbytes
    index = {"metadata": tensor_cache.index_metadata(len(params), nbytes, weights),
             "records": [{"dataPath": None, "format": "raw-shard", "nbytes": nbytes, "records": records}]}
    (out / tensor_cache.INDEX_FILE).write_text(json.dumps(index, indent=2))


def write_synthetic(name: str, mode: str, out: Path, *, seed: int = 0, force: bool = True,
                    shards: bool = True) -> Path:
    """An MLC weight directory of preset ``name`` in ``mode`` with random weights.

    ``shards=False`` writes mlc-chat-config.json and tensor-cache.json only (no parameter can be
    loaded from it): enough to compile a library (``bench --compile-only``).
    """
    if name not in SYNTHETIC:
        raise UserError(f"--synthetic {name} is not a preset; choose one of {', '.join(SYNTHETIC)}")
    config = SYNTHETIC[name]
    qmode = get_mode(mode)
    params, weights = _params(config, qmode)
    with atomic_dir(Path(out), force) as tmp, tempfile.TemporaryDirectory() as src:
        (Path(src) / "config.json").write_text(json.dumps(config))
        if shards:
            tensor_cache.write_tensor_cache(_draw(params, seed), tmp, lambda: weights)
        else:
            _write_index(params, weights, tmp)
        chat_config.write_chat_config(Path(src), config, qmode.name, tmp)
    return Path(out)
