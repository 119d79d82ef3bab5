"""Independent references for the export tests, written the slow, obvious way.

* per-element pack/unpack, MLC's float16 symmetric quantizer and dequantize (Python loops),
  and weights built to break naive quantizers;
* CONTEXT.md contract 2 written out by hand: the MLC Llama parameter list of an HF config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from desv_export.modes import get_mode

DTYPES = {"q_weight": "uint32", "q_scale": "float16", "q_zero": "uint32"}


def ref_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    epw = 32 // bits
    n, length = codes.shape
    out = np.zeros((n, math.ceil(length / epw)), np.uint32)
    for r in range(n):
        for i in range(length):
            word, slot = divmod(i, epw)
            out[r, word] = int(out[r, word]) | (int(codes[r, i]) << (slot * bits))
    return out


def ref_unpack(words: np.ndarray, bits: int, length: int) -> np.ndarray:
    epw = 32 // bits
    out = np.zeros((words.shape[0], length), np.uint8)
    for r in range(words.shape[0]):
        for i in range(length):
            out[r, i] = (int(words[r, i // epw]) >> ((i % epw) * bits)) & ((1 << bits) - 1)
    return out


def f16(x: float) -> float:
    """One float16 rounding of an (exactly computed, then float64) result."""
    return float(np.float16(x))


def ref_quantize_sym(w: np.ndarray, bits: int, g: int) -> tuple[np.ndarray, np.ndarray]:
    """MLC's float16 maths element by element; scale 0 -> code max_int (our guard)."""
    max_int = 2 ** (bits - 1) - 1
    n, k = w.shape
    ng = math.ceil(k / g)
    codes = np.zeros((n, ng * g), np.uint8)
    scale = np.zeros((n, ng), np.float16)
    for r in range(n):
        for j in range(ng):
            cols = [c for c in range(j * g, (j + 1) * g) if c < k]
            absmax = max(abs(float(w[r, c])) for c in cols)
            s = f16(absmax / max_int)
            scale[r, j] = s
            for c in cols:
                if s == 0:
                    q = max_int
                else:
                    t = f16(float(w[r, c]) / s)
                    u = f16(t + max_int)
                    q = min(max(round(u), 0), 2 * max_int)  # Python round: half to even
                codes[r, c] = q
    return codes, scale


def ref_dequantize(codes: np.ndarray, scale: np.ndarray, offsets: np.ndarray, k: int, g: int) -> np.ndarray:
    """(q - offset) * scale, one float16 rounding per element (inf past float16's range)."""
    n = codes.shape[0]
    out = np.zeros((n, k), np.float16)
    with np.errstate(over="ignore"):
        for r in range(n):
            for c in range(k):
                out[r, c] = np.float16((int(codes[r, c]) - int(offsets[r, c // g])) * float(scale[r, c // g]))
    return out


def adversarial(rows: int, k: int, g: int, seed: int = 0) -> np.ndarray:
    """Random rows plus groups that break naive quantizers: zero, constant, outliers, ties..."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, k)) * 0.05).astype(np.float16)
    specials = [
        np.zeros(k),  # all-zero: MLC would compute 0/0
        np.full(k, 0.37),  # constant positive
        np.full(k, -1.5),  # constant negative
        np.where(np.arange(k) % 17 == 3, 60000.0, rng.standard_normal(k) * 1e-3),  # outliers
        np.full(k, 2.0**-24) * (np.arange(k) % 3),  # float16 subnormals
        np.tile([-6.5, -5.5, 0.5, 1.5, 2.5, 7.0, -7.0, 3.5], k // 8 + 1)[:k],  # exact .5 ties
        np.tile([65504.0, -65504.0, 1.0, -0.0], k // 4 + 1)[:k],  # float16 extremes
        np.where(np.arange(k) < g, 0.0, rng.standard_normal(k)),  # first group all zero
    ]
    rows_special = np.stack(specials).astype(np.float16)
    return np.concatenate([w, rows_special])


def hf_weights(model_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        if f.name != "quantization.safetensors":
            out.update(load_file(str(f)))
    return out


def config_of(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def expected_params(config: dict, mode_name: str, quantize_embedding: bool) -> dict[str, tuple[tuple, str]]:
    """Contract 2 written out by hand: MLC Llama name -> (shape, dtype)."""
    mode = get_mode(mode_name)
    h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or h // heads
    qkv_rows = (heads + 2 * kv) * hd
    out: dict[str, tuple[tuple, str]] = {}

    def weight(name: str, n: int, k: int, quantized: bool) -> None:
        if quantized and mode.quantized:
            for suffix, shape in mode.shapes(n, k).items():
                out[f"{name}.{suffix}"] = (tuple(shape), DTYPES[suffix])
        else:
            out[f"{name}.weight"] = ((n, k), "float16")

    weight("model.embed_tokens", v, h, quantize_embedding)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        weight(f"{p}.self_attn.qkv_proj", qkv_rows, h, True)
        if config["architectures"][0] == "Qwen2ForCausalLM":
            out[f"{p}.self_attn.qkv_proj.bias"] = ((qkv_rows,), "float16")
        weight(f"{p}.self_attn.o_proj", h, heads * hd, True)
        weight(f"{p}.mlp.gate_up_proj", 2 * inter, h, True)
        weight(f"{p}.mlp.down_proj", h, inter, True)
        out[f"{p}.input_layernorm.weight"] = ((h,), "float16")
        out[f"{p}.post_attention_layernorm.weight"] = ((h,), "float16")
    out["model.norm.weight"] = ((h,), "float16")
    if not config.get("tie_word_embeddings", False):
        weight("lm_head", v, h, quantize_embedding)
    return out


def fused_sources(config: dict) -> dict[str, list[str]]:
    """MLC quantized-weight prefix -> HF weights stacked along rows, in order."""
    out = {"model.embed_tokens": ["model.embed_tokens.weight"]}
    for i in range(config["num_hidden_layers"]):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        out[f"{a}.qkv_proj"] = [f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"]
        out[f"{a}.o_proj"] = [f"{a}.o_proj.weight"]
        out[f"{m}.gate_up_proj"] = [f"{m}.gate_proj.weight", f"{m}.up_proj.weight"]
        out[f"{m}.down_proj"] = [f"{m}.down_proj.weight"]
    if not config.get("tie_word_embeddings", False):
        out["lm_head"] = ["lm_head.weight"]
    return out
