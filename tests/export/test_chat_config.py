"""mlc-chat-config.json fields, tokenizer_info detection and conv_template recognition."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from desv_export.cli import main
from desv_export.mlc.chat_config import model_config
from desv_export.mlc.conv_template import conversation_for
from desv_export.mlc.summary import summarize
from desv_export.mlc.tokenizer_info import detect_tokenizer_info
from desv_export.modes import get_mode

# MLCChatConfig's fields in model_dump order (mlc_llm/protocol/mlc_chat_config.py).
MLC_FIELDS = [
    "version", "model_type", "quantization", "model_config", "vocab_size", "context_window_size",
    "sliding_window_size", "prefill_chunk_size", "attention_sink_size", "tensor_parallel_shards",
    "pipeline_parallel_stages", "active_vocab_size", "temperature", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "top_p", "tokenizer_files", "tokenizer_info",
    "conv_template", "pad_token_id", "bos_token_id", "eos_token_id", "model_task", "embedding_metadata",
]
# LlamaConfig.asdict() (mlc_llm/model/llama/llama_model.py), kwargs dropped.
LLAMA_FIELDS = [
    "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "rms_norm_eps",
    "vocab_size", "tie_word_embeddings", "position_embedding_base", "rope_scaling",
    "context_window_size", "prefill_chunk_size", "num_key_value_heads", "head_dim",
    "tensor_parallel_shards", "pipeline_parallel_stages", "max_batch_size", "disaggregation",
]
CONV_FIELDS = [
    "name", "system_template", "system_message", "add_role_after_system_message", "roles",
    "role_templates", "messages", "seps", "role_content_sep", "role_empty_sep", "stop_str",
    "stop_token_ids", "strip_reasoning_in_history", "function_string", "use_function_calling",
]


def test_chat_config_fields(exported, sources):
    out = exported("tied", "q3f16_g128asym")
    cfg = json.loads((out / "mlc-chat-config.json").read_text())
    assert list(cfg) == MLC_FIELDS
    assert list(cfg["model_config"]) == LLAMA_FIELDS
    hf = json.loads((sources["tied"] / "config.json").read_text())
    mc = cfg["model_config"]
    assert cfg["version"] == "0.1.0" and cfg["model_type"] == "llama" and cfg["model_task"] == "chat"
    assert cfg["quantization"] == "q3f16_g128asym"
    assert mc["hidden_size"] == hf["hidden_size"] and mc["num_key_value_heads"] == hf["num_key_value_heads"]
    assert mc["head_dim"] == 24 and mc["tie_word_embeddings"] is True
    assert mc["position_embedding_base"] == hf["rope_parameters"]["rope_theta"]
    assert cfg["context_window_size"] == mc["context_window_size"] == 512
    assert cfg["prefill_chunk_size"] == 512 and mc["max_batch_size"] == 128
    assert cfg["sliding_window_size"] == -1 and cfg["attention_sink_size"] == -1
    assert cfg["vocab_size"] == 384 and cfg["active_vocab_size"] == 384
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)
    assert cfg["temperature"] == 1.0 and cfg["top_p"] == 1.0 and cfg["repetition_penalty"] == 1.0
    assert cfg["tokenizer_files"] == ["tokenizer.json", "tokenizer_config.json"]
    for name in cfg["tokenizer_files"]:
        assert (out / name).read_bytes() == (sources["tied"] / name).read_bytes()
    assert cfg["tokenizer_info"] == {
        "token_postproc_method": "byte_level", "prepend_space_in_encode": False, "strip_space_in_decode": False}
    conv = cfg["conv_template"]
    assert list(conv) == CONV_FIELDS  # system_prefix_token_ids is None: left out, as MLC does
    assert conv["name"] == "chatml_nosystem" and conv["stop_token_ids"] == [2]
    assert conv["stop_str"] == ["<|im_end|>"] and conv["seps"] == ["<|im_end|>\n"]


def test_generation_config_fills_sampling_fields(tmp_path, sources):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(sources["tied"], src)
    gen = json.loads((src / "generation_config.json").read_text())
    gen.update(temperature=0.2, top_p=0.9, eos_token_id=[2, 0])
    (src / "generation_config.json").write_text(json.dumps(gen))
    from desv_export.export import export_model

    out = export_model(src, tmp_path / "out", "q0f16")
    cfg = json.loads((out / "mlc-chat-config.json").read_text())
    assert cfg["temperature"] == 0.2 and cfg["top_p"] == 0.9 and cfg["eos_token_id"] == [2, 0]
    assert cfg["presence_penalty"] == 0.0  # MLC's system default
    assert cfg["conv_template"]["stop_token_ids"] == [2, 0]


def test_rope_and_context_rules():
    base = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=1,
                rms_norm_eps=1e-6, vocab_size=10)
    mc = model_config({**base, "max_position_embeddings": 16384, "rope_theta": 500000.0,
                       "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    assert mc["position_embedding_base"] == 500000.0 and mc["rope_scaling"]["rope_type"] == "llama3"
    assert mc["prefill_chunk_size"] == 8192 and mc["num_key_value_heads"] == 4 and mc["head_dim"] == 16
    mc = model_config({**base, "max_position_embeddings": 128, "rope_scaling": {"factor": 2.0}})
    assert mc["rope_scaling"] is None and mc["position_embedding_base"] == 10000
    from desv_export.errors import UserError

    with pytest.raises(UserError, match="yarn"):
        model_config({**base, "max_position_embeddings": 128, "rope_parameters": {"rope_type": "yarn"}})
    with pytest.raises(UserError, match="context length"):
        model_config(base)


def write_tok(tmp_path, tok: dict):
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    return tmp_path


@pytest.mark.parametrize("tok,expected", [
    ({}, ("byte_fallback", False, False)),  # no decoder: MLC's default
    ({"decoder": {"type": "ByteLevel"}}, ("byte_level", False, False)),
    ({"decoder": {"type": "WordPiece"}}, ("byte_fallback", False, False)),
    (  # LLaMA-2 / Mistral sentencepiece-style tokenizer.json
        {"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace"}]},
         "decoder": {"type": "Sequence", "decoders": [
             {"type": "Replace"}, {"type": "ByteFallback"}, {"type": "Fuse"},
             {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}},
        ("byte_fallback", True, True)),
    ({"normalizer": {"type": "Prepend", "prepend": " "},
      "decoder": {"type": "Sequence", "decoders": [
          {"type": "ByteFallback"}, {"type": "ByteLevel"}, {"type": "Strip", "content": " ", "start": 2, "stop": 0}]}},
     ("byte_level", False, False)),  # last decoder type wins; Prepend needs "▁"; Strip needs start 1
])
def test_tokenizer_info_detection(tmp_path, tok, expected):
    info = detect_tokenizer_info(write_tok(tmp_path, tok))
    assert (info["token_postproc_method"], info["prepend_space_in_encode"], info["strip_space_in_decode"]) == expected


def test_tokenizer_info_without_tokenizer_json(tmp_path):
    assert detect_tokenizer_info(tmp_path)["token_postproc_method"] == "byte_fallback"


SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer_dir(tmp_path, template: str | None, added: list[str]):
    tok = {"added_tokens": [{"id": i, "content": c} for i, c in enumerate(added)], "model": {"vocab": {}}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    cfg = {} if template is None else {"chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_conv_template_chatml_with_default_system(tmp_path):
    d = tokenizer_dir(tmp_path, SMOL_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    conv = conversation_for(d, bos_token_id=1, eos_token_id=2).to_json_dict()
    assert conv["name"] == "chatml"
    assert conv["system_message"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert conv["system_template"] == "<|im_start|>system\n{system_message}<|im_end|>\n"
    assert conv["stop_token_ids"] == [2]


def test_conv_template_llama3_and_plain(tmp_path):
    added = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    d = tokenizer_dir(tmp_path, "{{ '<|start_header_id|>' }}", added)
    conv = conversation_for(d, bos_token_id=0, eos_token_id=1).to_json_dict()
    assert conv["name"] == "llama-3" and conv["stop_token_ids"] == [1, 2]
    assert conv["system_prefix_token_ids"] == [0]
    plain = tmp_path / "plain"
    plain.mkdir()
    d2 = tokenizer_dir(plain, None, ["<s>", "</s>"])
    conv = conversation_for(d2, bos_token_id=0, eos_token_id=1).to_json_dict()
    assert conv["name"] == "LM" and conv["stop_token_ids"] == [1] and conv["system_prefix_token_ids"] == [0]
    assert conv["roles"] == {"user": "", "assistant": ""} and conv["seps"] == [""]


def test_export_command_prints_bits_per_param(sources, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["export", str(sources["untied"]), "-o", str(out),
                                  "--quantization", "q3f16_g64asym", "--quiet"])
    assert r.exit_code == 0, r.output
    mode = get_mode("q3f16_g64asym")
    # linear layers of the tiny model: K = 96 everywhere except down_proj (K = 160)
    hidden, inter = 96, 160
    rows_k96 = (4 + 2 * 2) * 24 + hidden + 2 * inter  # qkv, o, gate_up
    expect = (rows_k96 * hidden * mode.bits_per_param(hidden) + hidden * inter * mode.bits_per_param(inter)) / (
        rows_k96 * hidden + hidden * inter)
    assert f"bits per param: {expect:.4f} (linear layers)" in r.output
    assert f"{summarize(out).metadata['BitsPerParam']:.4f} (whole model)" in r.output
    again = CliRunner().invoke(main, ["export", str(sources["untied"]), "-o", str(out), "--quantization", "q0f16"])
    assert again.exit_code == 2 and "--force" in again.output


def test_export_command_rejects_unknown_mode(sources, tmp_path):
    r = CliRunner().invoke(main, ["export", str(sources["tied"]), "-o", str(tmp_path / "o"), "--quantization", "q5f16"])
    assert r.exit_code == 2 and not (tmp_path / "o").exists()
