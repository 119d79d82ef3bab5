"""The LLaMA family (Llama, Mistral, Qwen2) written with ``tvm.relax.frontend.nn``.

The exported functions and their signatures are MLC-LLM's model-library interface
(``get_default_spec``; DESIGN.md section 3): ``embed``, ``prefill``, ``decode``,
``batch_prefill``, ``batch_decode``, ``batch_verify``, ``get_logits``,
``create_tir_paged_kv_cache``, ``softmax_with_temperature`` (``_metadata`` is attached by
``desv_export.compile``). The parameter tuple is passed last; parameter names are the tensor
cache's (CONTRACT 2): fused ``qkv_proj`` (rows q, k, v) and ``gate_up_proj`` (rows gate, up).

RoPE and attention run inside TVM's paged KV cache (TIR kernels, which also exist for llvm),
so the same module compiles for CPU and CUDA.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tvm import relax as rx
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
from tvm.target import Target

from ..errors import UserError
from ..modes import MODES, QuantMode
from .quantized import QuantizedEmbedding, QuantizedLinear, RMSNorm

KV_PAGE_SIZE = 16
# Embedding / untied lm_head storage when the export keeps them float16.
_Q0F16 = MODES["q0f16"]


@dataclasses.dataclass
class LlamaConfig:
    """The ``model_config`` of mlc-chat-config.json (MLC's LlamaConfig fields we use)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    rms_norm_eps: float
    vocab_size: int
    tie_word_embeddings: bool = False
    position_embedding_base: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    context_window_size: int = 2048
    prefill_chunk_size: int = 2048
    num_key_value_heads: int = 0
    head_dim: int = 0
    attention_bias: bool = False  # Qwen2: q/k/v projections carry a bias

    @classmethod
    def from_chat_config(cls, chat_config: dict) -> "LlamaConfig":
        mc = dict(chat_config.get("model_config", {}))
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in mc.items() if k in names}
        missing = [
            n
            for n in ("hidden_size", "intermediate_size", "num_attention_heads",
                      "num_hidden_layers", "rms_norm_eps", "vocab_size")
            if n not in kwargs
        ]
        if missing:
            raise UserError(
                f"mlc-chat-config.json: model_config lacks {', '.join(missing)}; re-export the model"
            )
        if "position_embedding_base" not in kwargs and "rope_theta" in mc:
            kwargs["position_embedding_base"] = mc["rope_theta"]
        if chat_config.get("model_type") == "qwen2" and "attention_bias" not in mc:
            kwargs["attention_bias"] = True
        for key in ("context_window_size", "prefill_chunk_size"):
            if chat_config.get(key):
                kwargs[key] = chat_config[key]
        cfg = cls(**kwargs)
        if not cfg.num_key_value_heads:
            cfg.num_key_value_heads = cfg.num_attention_heads
        if not cfg.head_dim:
            cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise UserError("mlc-chat-config.json: num_attention_heads must be a multiple of num_key_value_heads")
        cfg.prefill_chunk_size = min(cfg.prefill_chunk_size, cfg.context_window_size)
        return cfg

    @property
    def rope_scaling_for_kv_cache(self) -> dict[str, Any]:
        """Only llama3-style scaling changes the kernels; anything else runs plain RoPE."""
        rs = self.rope_scaling or {}
        return dict(rs) if rs.get("rope_type") == "llama3" else {}

    @property
    def kv_cache_rope(self) -> dict[str, Any]:
        """The RoPE arguments ``TIRPagedKVCache`` gets, under its names: the CPU pipeline
        builds its RoPE kernel from the same ones."""
        return {"rope_theta": self.position_embedding_base, "rope_scale": 1,
                "rope_scaling": self.rope_scaling_for_kv_cache, "rotary_dim": self.head_dim}


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, mode: QuantMode) -> None:
        self.head_dim = cfg.head_dim
        self.num_q_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        qkv_out = (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = QuantizedLinear(cfg.hidden_size, qkv_out, mode, bias=cfg.attention_bias)
        self.o_proj = QuantizedLinear(self.num_q_heads * self.head_dim, cfg.hidden_size, mode)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        d, hq, hkv = self.head_dim, self.num_q_heads, self.num_kv_heads
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, hq + 2 * hkv, d))
        out = kv.attention_with_fused_qkv(layer_id, qkv, hq, sm_scale=d**-0.5)
        return self.o_proj(op.reshape(out, (b, s, hq * d)))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig, mode: QuantMode) -> None:
        self.gate_up_proj = QuantizedLinear(cfg.hidden_size, 2 * cfg.intermediate_size, mode)
        self.down_proj = QuantizedLinear(cfg.intermediate_size, cfg.hidden_size, mode)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, mode: QuantMode) -> None:
        self.self_attn = LlamaAttention(cfg, mode)
        self.mlp = LlamaMLP(cfg, mode)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), kv, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig, mode: QuantMode, quantize_embedding: bool) -> None:
        emb_mode = mode if quantize_embedding else _Q0F16
        self.embed_tokens = QuantizedEmbedding(cfg.vocab_size, cfg.hidden_size, emb_mode)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(cfg, mode) for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, kv: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, kv, layer_id)
        return self.norm(x)


def _last_token(x: Tensor) -> Tensor:
    """[b, s, H] -> [b, 1, H]: the position whose logits prefill returns."""

    def compute(x: te.Tensor) -> te.Tensor:
        b, s, h = x.shape
        return te.compute((b, 1, h), lambda i, _, k: x[i, s - 1, k], name="index_last_token")

    return op.tensor_expr_op(compute, "index_last_token", [x])


class LlamaForCausalLM(nn.Module):
    """The whole model; ``dtype`` is the compute (activation and KV cache) dtype."""

    def __init__(
        self,
        cfg: LlamaConfig,
        mode: QuantMode,
        *,
        quantize_embedding: bool,
        dtype: str,
        target: Target,
    ) -> None:
        self.cfg = cfg
        self.mode = mode
        self.dtype = dtype
        self.target = target
        self.model = LlamaModel(cfg, mode, quantize_embedding)
        self.tie_word_embeddings = cfg.tie_word_embeddings
        if not cfg.tie_word_embeddings:
            head_mode = mode if quantize_embedding else _Q0F16
            self.lm_head = QuantizedLinear(cfg.hidden_size, cfg.vocab_size, head_mode)

    # --- pieces -------------------------------------------------------------------------------
    def get_logits(self, hidden_states: Tensor) -> Tensor:
        """float32 logits for hidden states of any leading shape."""
        if self.tie_word_embeddings:
            return self.model.embed_tokens.lm_head_forward(hidden_states)
        return self.lm_head.matmul(hidden_states, "float32", "lm_head_matmul")

    def _forward(self, embeds: Tensor, kv: PagedKVCache, logit_positions: Tensor | None = None):
        hidden = self.model(embeds, kv)
        if logit_positions is not None:
            hidden = op.take(hidden, logit_positions, axis=1)
        return self.get_logits(hidden)

    # --- exported functions -------------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids, self.dtype)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        return self.get_logits(_last_token(hidden)), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self._forward(input_embed, paged_kv_cache), paged_kv_cache

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache):
        return self._forward(input_embeds, paged_kv_cache, logit_positions), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache):
        return self._forward(input_embeds, paged_kv_cache), paged_kv_cache

    def batch_verify(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache):
        return self._forward(input_embeds, paged_kv_cache), paged_kv_cache

    def softmax_with_temperature(self, logits: Tensor, temperature: Tensor) -> Tensor:
        """Softmax of logits / temperature per row; a temperature <= 1e-5 leaves logits as they are."""
        b = logits.shape[0]
        t = op.reshape(temperature, (b, 1, 1))
        t = op.where(t > op.full((1, 1, 1), 1e-5, "float32"), t, op.ones((1, 1, 1), "float32"))
        return op.softmax(logits / t, axis=-1)

    def create_tir_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        cfg = self.cfg
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=rx.ShapeExpr([0, cfg.num_hidden_layers]),
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            qk_head_dim=cfg.head_dim,
            v_head_dim=cfg.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL,
            rope_ext_factors=rx.prim_value(0),
            **cfg.kv_cache_rope,
            enable_disaggregation=False,
            dtype=self.dtype,
            target=self.target,
        )

    def get_default_spec(self) -> nn.spec.ModuleSpec:
        h, dt = self.cfg.hidden_size, self.dtype
        packed = {"param_mode": "packed", "effect_mode": "none"}
        none = {"param_mode": "none", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        spec = {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "get_logits": {"hidden_states": nn.spec.Tensor(["seq_len", h], dt), "$": packed},
            "prefill": {
                "input_embed": nn.spec.Tensor([1, "seq_len", h], dt),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "decode": {
                "input_embed": nn.spec.Tensor([1, 1, h], dt),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_prefill": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", h], dt),
                "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_decode": {
                "input_embeds": nn.spec.Tensor(["batch_size", 1, h], dt),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_verify": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", h], dt),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "create_tir_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": none,
            },
            "softmax_with_temperature": {
                "logits": nn.spec.Tensor(["batch_size", 1, "vocab_size"], "float32"),
                "temperature": nn.spec.Tensor(["batch_size"], "float32"),
                "$": none,
            },
        }
        return nn.spec.ModuleSpec.from_raw(spec, self)

