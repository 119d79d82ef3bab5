"""LET (calib/let.py): the transform is exact in float, it is learned, folded, stored and resumed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from calib.blockwise import KILL_AFTER_BLOCK_ENV, _block_forward, catch_block0_inputs
from calib.checkpoint import verify
from calib.let import BlockLET
from calib.model import load_model, quantized_linears
from desv_export.commands.calibrate import work_dir_for
from tests.calib.conftest import TINY, cli
from tests.tiny_models import make_tiny_llama


def _block_and_inputs(tmp_path, arch: str, heads: int, kv_heads: int):
    src = make_tiny_llama(tmp_path / arch, arch=arch, layers=1, hidden=64, intermediate=96,
                          heads=heads, kv_heads=kv_heads)
    model, _ = load_model(src)
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    x, kw = catch_block0_inputs(model, ids, torch.device("cpu"))
    return model.model.layers[0], x, kw


@pytest.mark.parametrize("arch,heads,kv_heads", [("llama", 4, 2), ("llama", 4, 4), ("qwen2", 4, 1)])
def test_folded_transform_leaves_the_float_block_unchanged(tmp_path, arch, heads, kv_heads):
    layer, x, kw = _block_and_inputs(tmp_path, arch, heads, kv_heads)
    with torch.no_grad():
        before = _block_forward(layer, x, kw)
        let = BlockLET(layer)
        for p in let.parameters():  # scales between 1/e and e, different per channel
            p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 2 - 1)
        weights, extra = let.transform({n: m.weight for n, m in quantized_linears(layer).items()})
        assert set(extra) >= {"input_layernorm.weight", "post_attention_layernorm.weight"}
        assert ("self_attn.v_proj.bias" in extra) == (arch == "qwen2")
        changed = {n: w for n, w in weights.items() if not torch.equal(w, quantized_linears(layer)[n].weight)}
        assert len(changed) == 7  # every linear is a consumer or a producer
        linears = quantized_linears(layer)
        for n, w in weights.items():
            linears[n].weight.copy_(w)
        params = dict(layer.named_parameters())
        for k, v in extra.items():
            params[k].copy_(v)
        after = _block_forward(layer, x, kw)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-5), (after - before).abs().max()


def test_let_is_learned_folded_and_stored(tiny_llama_dir, calib_text, tmp_path):
    out = tmp_path / "lwc-let"
    res = cli("calibrate", tiny_llama_dir, "-o", out, "--method", "lwc", "--let", "--let-lr", "5e-2",
              "--data-file", calib_text, *TINY)
    assert res.exit_code == 0, res.output
    assert "lwc+let" in res.output
    assert verify(out) == 14
    meta = json.loads((out / "quantization.json").read_text())
    assert meta["settings"]["let"] is True and meta["settings"]["let_lr"] == 5e-2
    src, got = load_file(str(tiny_llama_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for i in range(2):  # the learned gains were folded into the stored norms
        for norm in ("input_layernorm", "post_attention_layernorm"):
            name = f"model.layers.{i}.{norm}.weight"
            assert not torch.equal(got[name], src[name].to(torch.float16)), name
    assert torch.equal(got["model.norm.weight"], src["model.norm.weight"].to(torch.float16))


def test_let_resumes_to_the_same_checkpoint(tiny_llama_dir, calib_text, tmp_path):
    args = ["--method", "lwc", "--let", "--let-lr", "5e-2", "--data-file", calib_text, *TINY]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli("calibrate", tiny_llama_dir, "-o", whole, *args).exit_code == 0
    res = cli("calibrate", tiny_llama_dir, "-o", killed, *args, env={KILL_AFTER_BLOCK_ENV: "0"})
    assert res.exit_code != 0 and (work_dir_for(killed) / "block_0000.json").is_file()
    resumed = cli("calibrate", tiny_llama_dir, "-o", killed, *args)
    assert resumed.exit_code == 0 and "resuming" in resumed.output, resumed.output
    for f in ("model.safetensors", "quantization.safetensors"):
        assert (killed / f).read_bytes() == (whole / f).read_bytes(), f


def test_let_needs_a_learning_method(tiny_llama_dir, tmp_path):
    res = cli("calibrate", tiny_llama_dir, "-o", tmp_path / "o", "--method", "rtn", "--let")
    assert res.exit_code == 2 and "--let" in res.output and "rtn" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_bf16_autocast_runs_on_the_cpu(tiny_llama_dir, calib_text, tmp_path):
    """The CUDA default (bf16 autocast) through the same code on the CPU: a valid checkpoint,
    and a different one from float32, so autocast really was in effect."""
    outs = {}
    for precision in ("fp32", "bf16"):
        outs[precision] = tmp_path / precision
        res = cli("calibrate", tiny_llama_dir, "-o", outs[precision], "--method", "lwc", "--precision", precision,
                  "--data-file", calib_text, *TINY)
        assert res.exit_code == 0, res.output
        assert verify(outs[precision]) == 14
        assert json.loads((outs[precision] / "quantization.json").read_text())["settings"]["precision"] == precision
    a = load_file(str(outs["fp32"] / "quantization.safetensors"))
    b = load_file(str(outs["bf16"] / "quantization.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)

