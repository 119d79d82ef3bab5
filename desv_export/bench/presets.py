"""Architectures for ``bench --synthetic``: speed and memory do not depend on weight values,
so a 7B/13B table needs only the shapes, never a 13 GB download.

Each preset is the ``config.json`` a Hugging Face checkpoint of that model carries.
"""

from __future__ import annotations

_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float16",
}

SYNTHETIC: dict[str, dict] = {
    # LLaMA-1/2-7B: the model of the paper's Table 6.
    "llama-7b": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                 "max_position_embeddings": 2048},
    "llama-13b": {**_LLAMA, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                  "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
                  "max_position_embeddings": 2048},
    "llama3-8b": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                  "max_position_embeddings": 8192, "rope_theta": 500000.0, "bos_token_id": 128000,
                  "eos_token_id": 128001},
    # Small enough for CI on two cores; hidden 96 is not a multiple of 64/128, like SmolLM2's 576.
    "tiny": {**_LLAMA, "hidden_size": 96, "intermediate_size": 160, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 384,
             "max_position_embeddings": 512, "tie_word_embeddings": True},
}
