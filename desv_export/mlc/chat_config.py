"""mlc-chat-config.json: every field MLC-LLM's ``gen_config`` writes, from the HF directory.

Follows mlc_llm/interface/gen_config.py and protocol/mlc_chat_config.py (``MLCChatConfig``,
version "0.1.0"), field for field and in the same order:

1. ``model_config`` is MLC's ``LlamaConfig.asdict()`` after its ``__post_init__`` and after
   gen_config's overrides (``max_batch_size`` 128, the CLI default); the top-level
   ``context_window_size``/``prefill_chunk_size``/... are copied from it, ``sliding_window_size``
   and ``attention_sink_size`` are -1 (Llama has neither).
2. ``generation_config.json`` then ``config.json`` fill the fields still unset (sampling
   parameters, pad/bos/eos ids); MLC's system defaults fill the rest.
3. ``tokenizer_files`` lists the copied tokenizer files in MLC's order; ``tokenizer_info`` as
   MLC detects it; ``active_vocab_size`` is the tokenizer's length (vocab + added tokens).

One deliberate difference: MLC's ``LlamaConfig`` only reads ``rope_theta`` at the top level, so
for a transformers-5 config (``rope_parameters: {rope_theta, rope_type}``) it would silently
fall back to 10000; we read ``rope_parameters`` too.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError, read_user_json
from .conv_template import conversation_for
from .tokenizer_info import detect_tokenizer_info, load_tokenizer_json

CONFIG_FILE = "mlc-chat-config.json"
VERSION = "0.1.0"
# gen_config.TOKENIZER_FILES, in its order.
MLC_TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
)
SYSTEM_DEFAULTS = {
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "temperature": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "top_p": 1.0,
}
GEN_CONFIG_MAX_BATCH_SIZE = 128  # mlc_llm gen_config --max-batch-size default
MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


def _rope(config: dict) -> tuple[float, dict | None]:
    """(position_embedding_base, rope_scaling) as MLC's LlamaConfig understands them."""
    params = config.get("rope_parameters") or {}
    base = config.get("rope_theta", params.get("rope_theta", 10000))
    scaling = config.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None and "rope_type" not in scaling:
        scaling = None  # MLC drops a rope_scaling without rope_type
    if scaling is not None and scaling["rope_type"] not in ("llama3", "default"):
        raise UserError(
            f"config.json: RoPE scaling {scaling['rope_type']!r} is not supported "
            "(MLC-LLM's Llama supports only 'llama3')"
        )
    if scaling is not None and scaling["rope_type"] == "default":
        scaling = None
    return base, scaling


def model_config(config: dict) -> dict:
    """MLC LlamaConfig.asdict() of an HF config.json (after gen_config's overrides)."""
    try:
        heads = config["num_attention_heads"]
        hidden = config["hidden_size"]
        ctx = config.get("context_window_size") or config.get("max_position_embeddings") or config.get(
            "max_sequence_length"
        )
        if not ctx:
            raise UserError(
                "config.json: none of context_window_size, max_position_embeddings, "
                "max_sequence_length is set; MLC-LLM needs the context length"
            )
        base, scaling = _rope(config)
        prefill = config.get("prefill_chunk_size") or 0
        if prefill == 0 or prefill > ctx:
            prefill = min(ctx, 8192)
        return {
            "hidden_size": hidden,
            "intermediate_size": config["intermediate_size"],
            "num_attention_heads": heads,
            "num_hidden_layers": config["num_hidden_layers"],
            "rms_norm_eps": config["rms_norm_eps"],
            "vocab_size": config["vocab_size"],
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
            "position_embedding_base": base,
            "rope_scaling": scaling,
            "context_window_size": ctx,
            "prefill_chunk_size": prefill,
            "num_key_value_heads": config.get("num_key_value_heads") or heads,
            "head_dim": config.get("head_dim") or hidden // heads,
            "tensor_parallel_shards": 1,
            "pipeline_parallel_stages": 1,
            "max_batch_size": GEN_CONFIG_MAX_BATCH_SIZE,
            "disaggregation": False,
        }
    except KeyError as e:
        raise UserError(f"config.json has no {e.args[0]!r}; it is needed for mlc-chat-config.json") from None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _check_added_tokens(tokenizer_json: Path) -> None:
    """gen_config refuses a tokenizer.json listing an added token twice (it breaks HF tokenizers)."""
    seen: set[str] = set()
    for t in (load_tokenizer_json(tokenizer_json.parent) or {}).get("added_tokens") or []:
        if t["content"] in seen:
            raise UserError(
                f"{tokenizer_json} lists the added token {t['content']!r} twice; "
                "remove the duplicate from added_tokens"
            )
        seen.add(t["content"])


def _active_vocab_size(tokenizer_json: Path) -> int | None:
    """len(tokenizer): vocabulary plus added tokens, what gen_config reads from HF."""
    if not tokenizer_json.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)


def make_chat_config(src: Path, config: dict, quantization: str, out_dir: Path) -> dict:
    """The mlc-chat-config.json dict; ``out_dir`` holds the already-copied tokenizer files."""
    src, out_dir = Path(src), Path(out_dir)
    mc = model_config(config)
    arch = (config.get("architectures") or ["LlamaForCausalLM"])[0]
    cfg: dict = {
        "version": VERSION,
        "model_type": MODEL_TYPES.get(arch, "llama"),
        "quantization": quantization,
        "model_config": mc,
        "vocab_size": mc["vocab_size"],
        "context_window_size": mc["context_window_size"],
        "sliding_window_size": -1,
        "prefill_chunk_size": mc["prefill_chunk_size"],
        "attention_sink_size": -1,
        "tensor_parallel_shards": mc["tensor_parallel_shards"],
        "pipeline_parallel_stages": mc["pipeline_parallel_stages"],
        "active_vocab_size": mc["vocab_size"],
        "temperature": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "repetition_penalty": None,
        "top_p": None,
        "tokenizer_files": [n for n in MLC_TOKENIZER_FILES if (out_dir / n).is_file()],
        "tokenizer_info": detect_tokenizer_info(out_dir),
        "conv_template": None,  # filled below, once bos/eos are known
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
        "model_task": "chat",
        "embedding_metadata": None,
    }
    unset = ("temperature", "presence_penalty", "frequency_penalty", "repetition_penalty", "top_p",
             "pad_token_id", "bos_token_id", "eos_token_id")
    for source in (_read_json(src / "generation_config.json"), config):
        for key in unset:
            if cfg[key] is None and source.get(key) is not None:
                cfg[key] = source[key]
    for key, value in SYSTEM_DEFAULTS.items():
        if cfg[key] is None:
            cfg[key] = value
    tokenizer_json = out_dir / "tokenizer.json"
    _check_added_tokens(tokenizer_json)
    active = _active_vocab_size(tokenizer_json)
    if active is not None:
        cfg["active_vocab_size"] = active
    cfg["conv_template"] = conversation_for(src, cfg["bos_token_id"], cfg["eos_token_id"]).to_json_dict()
    return cfg


def write_chat_config(src: Path, config: dict, quantization: str, out_dir: Path) -> dict:
    cfg = make_chat_config(src, config, quantization, out_dir)
    (Path(out_dir) / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return cfg


def read_chat_config(weight_dir: Path) -> dict:
    return read_user_json(Path(weight_dir) / CONFIG_FILE,
                          f"{weight_dir} is not an MLC weight directory (run desv-export export)")
