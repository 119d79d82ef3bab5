"""What a weight directory holds, by tensor kind: parameters, bytes, bits per parameter.

Shared by ``desv-export export`` (which prints the bits per parameter it achieved) and
``desv-export inspect``. A quantized parameter's logical size N x K is not in the tensor cache
(q_weight's columns include the group padding), so K comes from mlc-chat-config.json's
``model_config``: o_proj reads heads x head_dim, down_proj the intermediate size, everything
else the hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .chat_config import read_chat_config
from .tensor_cache import TensorCache

KINDS = ("embedding", "attention", "mlp", "lm_head", "norm", "bias")
QUANT_SUFFIXES = ("q_weight", "q_scale", "q_zero")


@dataclass
class KindStats:
    params: int = 0
    nbytes: int = 0
    quantized: bool = False

    @property
    def bits_per_param(self) -> float:
        return self.nbytes * 8.0 / self.params if self.params else 0.0


@dataclass
class Summary:
    quantization: str
    shards: int
    kinds: dict[str, KindStats] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def total(self, kinds: tuple[str, ...] = KINDS) -> KindStats:
        out = KindStats()
        for k in kinds:
            if k in self.kinds:
                out.params += self.kinds[k].params
                out.nbytes += self.kinds[k].nbytes
                out.quantized |= self.kinds[k].quantized
        return out

    @property
    def linear(self) -> KindStats:
        return self.total(("attention", "mlp"))

    @property
    def embedding_quantized(self) -> bool:
        return self.kinds.get("embedding", KindStats()).quantized


def kind_of(name: str) -> str:
    if name.startswith("model.embed_tokens"):
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if name.endswith(".bias"):
        return "bias"
    if name.endswith("norm.weight"):
        return "norm"
    if ".self_attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    return "other"


def in_features(prefix: str, model_config: dict) -> int:
    """K of the quantized weight ``prefix`` (an MLC parameter name without its suffix)."""
    if prefix.endswith("o_proj"):
        return model_config["num_attention_heads"] * model_config["head_dim"]
    if prefix.endswith("down_proj"):
        return model_config["intermediate_size"]
    return model_config["hidden_size"]


def summarize(weight_dir: Path) -> Summary:
    cache = TensorCache(weight_dir)
    cfg = read_chat_config(weight_dir)
    mc = cfg["model_config"]
    out = Summary(cfg.get("quantization", "?"), len(cache.shards), metadata=cache.metadata)
    for name, rec in cache.records.items():
        kind = kind_of(name)
        stats = out.kinds.setdefault(kind, KindStats())
        stats.nbytes += rec.nbytes
        prefix, _, suffix = name.rpartition(".")
        if suffix == "q_scale":
            stats.params += rec.shape[0] * in_features(prefix, mc)
            stats.quantized = True
        elif suffix not in QUANT_SUFFIXES:
            n = 1
            for d in rec.shape:
                n *= d
            stats.params += n
    return out
