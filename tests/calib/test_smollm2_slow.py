"""End to end on the real example model (SmolLM2-135M-Instruct): example-model, a DESV W3g128
calibration over all 30 blocks with tiny settings, the format check, and perplexity."""

import json
import math

import pytest
from safetensors import safe_open

from calib.checkpoint import verify

from .conftest import cli

pytestmark = pytest.mark.slow


def test_example_model_calibrate_eval(tmp_path):
    pytest.importorskip("gguf")
    model = tmp_path / "smollm2"
    res = cli("example-model", model)
    assert res.exit_code == 0, res.output
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == 30
    assert cfg["hidden_size"] == 576 and cfg["tie_word_embeddings"] is True
    tok_cfg = json.loads((model / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_cfg["chat_template"]
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert str(f.get_tensor("model.norm.weight").dtype) == "torch.float16"

    ckpt = tmp_path / "desv"
    res = cli("calibrate", model, "-o", ckpt, "--method", "desv", "--bits", "3", "--group-size", "128",
              "--nsamples", "1", "--seqlen", "32", "--epochs", "1", "--quiet")
    assert res.exit_code == 0, res.output
    assert verify(ckpt) == 30 * 7
    meta = json.loads((ckpt / "quantization.json").read_text())
    assert len(meta["blocks"]) == 30 and meta["settings"]["n_diag"] == 100
    assert all(math.isfinite(b["loss"]) for b in meta["blocks"])

    args = ["--dataset", "ptb", "--seqlen", "128", "--max-windows", "2", "--json", "--quiet"]
    fp = json.loads(cli("eval", model, *args).stdout.strip().splitlines()[-1])["ptb"]
    q = json.loads(cli("eval", ckpt, *args).stdout.strip().splitlines()[-1])["ptb"]
    assert 5 < fp < 500  # a real language model, not noise (vocab 49152)
    assert fp < q < 50 * fp  # 3-bit costs perplexity but the model still works
