"""Calibration end to end on the tiny model: on-grid folding, the format, resume."""

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from calib.blockwise import KILL_AFTER_BLOCK_ENV
from calib.checkpoint import codes, read_checkpoint, verify
from calib.quantizer import dequantize, quantize
from desv_export.commands.calibrate import work_dir_for

from .conftest import TINY, cli

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def test_checkpoint_format(tiny_desv_ckpt, tiny_llama_dir, calib_text):
    meta, qt = read_checkpoint(tiny_desv_ckpt)
    assert meta["format"] == "desv-calibrated" and meta["version"] == 1
    assert (meta["method"], meta["bits"], meta["group_size"], meta["mode"]) == ("desv", 3, 64, "q3f16_g64asym")
    assert meta["symmetric"] is False
    assert meta["settings"]["n_diag"] == 8 and meta["settings"]["dataset"] == str(calib_text)
    assert meta["quantized"] == sorted(f"model.layers.{i}.{n}.weight" for i in range(2) for n in LINEARS)
    assert [b["index"] for b in meta["blocks"]] == [0, 1]
    assert all(b["loss"] > 0 and b["seconds"] > 0 for b in meta["blocks"])
    model = load_file(str(tiny_desv_ckpt / "model.safetensors"))
    assert "lm_head.weight" not in model  # tied: stored once
    assert all(t.dtype == torch.float16 for t in model.values())
    src = load_file(str(tiny_llama_dir / "model.safetensors"))
    assert set(model) == set(src) - {"lm_head.weight"}
    for name in meta["quantized"]:
        n, k = model[name].shape
        assert qt[f"{name}.scale"].shape == (n, -(-k // 64)) and qt[f"{name}.scale"].dtype == torch.float16
        assert qt[f"{name}.zero"].shape == (n, -(-k // 64)) and qt[f"{name}.zero"].dtype == torch.uint8
    # non-quantized tensors are the source's
    assert torch.equal(model["model.embed_tokens.weight"], src["model.embed_tokens.weight"])
    cfg = json.loads((tiny_desv_ckpt / "config.json").read_text())
    assert cfg["torch_dtype"] == "float16"
    assert (tiny_desv_ckpt / "tokenizer.json").is_file()
    assert not work_dir_for(tiny_desv_ckpt).exists()


def test_folded_weights_are_exactly_on_the_grid(tiny_desv_ckpt):
    assert verify(tiny_desv_ckpt) == 14
    meta, qt = read_checkpoint(tiny_desv_ckpt)
    with safe_open(str(tiny_desv_ckpt / "model.safetensors"), "pt") as f:
        w = f.get_tensor("model.layers.1.mlp.down_proj.weight")
    s, z = qt["model.layers.1.mlp.down_proj.weight.scale"], qt["model.layers.1.mlp.down_proj.weight.zero"]
    # re-quantizing w_hat on its own scale/zero gives codes that dequantize to w_hat itself
    c = codes(w, s, z, 64)
    assert int(c.max()) <= 7
    assert torch.equal(dequantize(c, s, z, w.shape[1]), w)


def test_training_changes_the_grid_from_rtn(tiny_desv_ckpt, tiny_llama_dir):
    src = load_file(str(tiny_llama_dir / "model.safetensors"))
    model = load_file(str(tiny_desv_ckpt / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    rtn = quantize(src[name].float(), 3, 64).w_hat
    assert not torch.equal(model[name], rtn)


def test_rtn_is_plain_round_to_nearest(tiny_llama_dir, tmp_path):
    out = tmp_path / "rtn"
    res = cli("calibrate", tiny_llama_dir, "-o", out, "--method", "rtn", "--bits", "2", "--group-size", "128", "--quiet")
    assert res.exit_code == 0, res.output
    src = load_file(str(tiny_llama_dir / "model.safetensors"))
    model = load_file(str(out / "model.safetensors"))
    for i in range(2):
        for n in LINEARS:
            name = f"model.layers.{i}.{n}.weight"
            assert torch.equal(model[name], quantize(src[name].float(), 2, 128).w_hat), name
    meta = json.loads((out / "quantization.json").read_text())
    assert meta["method"] == "rtn" and meta["settings"]["dataset"] is None
    assert all(b["loss"] is None for b in meta["blocks"])


def test_kill_and_resume_gives_identical_checkpoint(tiny_desv_ckpt, tiny_llama_dir, calib_text, tmp_path):
    out = tmp_path / "desv"
    args = ["calibrate", tiny_llama_dir, "-o", out, "--method", "desv", "--data-file", calib_text, *TINY]
    killed = cli(*args, env={KILL_AFTER_BLOCK_ENV: "0"})
    assert killed.exit_code != 0 and "simulated kill" in str(killed.exception)
    assert not out.exists()  # nothing that looks complete
    partial = work_dir_for(out)
    assert (partial / "block_0000.json").is_file() and not (partial / "block_0001.json").exists()

    changed = cli(*args, "--seed", "3")
    assert changed.exit_code == 2
    assert "different settings" in changed.output and "seed" in changed.output
    assert len(changed.output.strip().splitlines()) == 1

    resumed = cli(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    for f in ("model.safetensors", "quantization.safetensors"):
        assert (out / f).read_bytes() == (tiny_desv_ckpt / f).read_bytes(), f
    a = json.loads((out / "quantization.json").read_text())
    b = json.loads((tiny_desv_ckpt / "quantization.json").read_text())
    drop = lambda m: {**m, "blocks": [{k: v for k, v in x.items() if k != "seconds"} for x in m["blocks"]]}
    assert drop(a) == drop(b)
    assert not partial.exists()


def test_qwen2_with_qkv_bias(tmp_path, calib_text):
    from tests.tiny_models import make_tiny_llama

    src = make_tiny_llama(tmp_path / "qwen2", arch="qwen2", layers=1, hidden=64, intermediate=96)
    out = tmp_path / "lsi"
    res = cli("calibrate", src, "-o", out, "--method", "lsi", "--bits", "4", "--group-size", "32",
              "--nsamples", "2", "--seqlen", "16", "--epochs", "1", "--data-file", calib_text, "--quiet")
    assert res.exit_code == 0, res.output
    assert verify(out) == 7
    model = load_file(str(out / "model.safetensors"))
    assert torch.equal(model["model.layers.0.self_attn.q_proj.bias"],
                       load_file(str(src / "model.safetensors"))["model.layers.0.self_attn.q_proj.bias"])
    assert json.loads((out / "quantization.json").read_text())["settings"]["n_diag"] == 0
