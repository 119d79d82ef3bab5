"""export_model on the tiny models: contract 2 names/shapes, exact weights, options, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from calib.quantizer import quantize as calib_quantize
from desv_export import pack
from desv_export.errors import UserError
from desv_export.export import export_model
from desv_export.mlc.summary import summarize
from desv_export.mlc.tensor_cache import TensorCache
from desv_export.modes import MODES, get_mode
from tests.export.reference import config_of, expected_params, fused_sources, hf_weights, ref_dequantize, ref_quantize_sym

ALL_MODES = list(MODES)
ASYM = [m for m in MODES.values() if m.quantized and not m.symmetric]


@pytest.mark.parametrize("which", ["tied", "untied"])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_names_shapes_dtypes_and_bits_per_param(exported, sources, which, mode):
    out = exported(which, mode)
    config = config_of(sources[which])
    cache = TensorCache(out)
    got = {n: (r.shape, r.dtype) for n, r in cache.records.items()}
    assert got == expected_params(config, mode, MODES[mode].quantize_embedding_default)
    # bits per param of every quantized weight is the modes.py formula
    m = MODES[mode]
    s = summarize(out)
    for prefix in fused_sources(config):
        group = cache.group(prefix)
        if "q_weight" not in group:
            continue
        n = group["q_scale"].shape[0]
        k = config["hidden_size"] if not prefix.endswith("down_proj") else config["intermediate_size"]
        nbytes = sum(a.nbytes for a in group.values())
        assert nbytes * 8 / (n * k) == pytest.approx(m.bits_per_param(k), rel=1e-12)
    # whole-model metadata as MLC computes it: bytes * 8 / source params
    w = hf_weights(sources[which])
    if config.get("tie_word_embeddings"):
        w.pop("lm_head.weight", None)
    n_params = sum(a.size for a in w.values())
    assert cache.metadata["ParamSize"] == len(cache.records)
    assert cache.metadata["ParamBytes"] == cache.total_bytes()
    assert cache.metadata["BitsPerParam"] == pytest.approx(cache.total_bytes() * 8 / n_params)
    assert s.total().params == n_params
    if m.quantized:
        lin = s.linear
        expect = sum(
            w[src].shape[0] * w[src].shape[1] * m.bits_per_param(w[src].shape[1])
            for prefix, srcs in fused_sources(config).items() if "proj" in prefix for src in srcs
        ) / lin.params
        assert lin.bits_per_param == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_q0f16_is_the_hf_weights_fused(exported, sources, which):
    cache = TensorCache(exported(which, "q0f16"))
    w = hf_weights(sources[which])
    for prefix, srcs in fused_sources(config_of(sources[which])).items():
        np.testing.assert_array_equal(cache[f"{prefix}.weight"], np.concatenate([w[s] for s in srcs]))
    for name in w:
        if "norm" in name:
            np.testing.assert_array_equal(cache[name], w[name])


@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_1"])
def test_mlc_presets_match_per_element_reference(exported, sources, mode):
    """Layer 0's fused qkv and layer 1's down_proj, element by element, embedding included."""
    m = get_mode(mode)
    cache = TensorCache(exported("untied", mode))
    w = hf_weights(sources["untied"])
    cases = {
        "model.layers.0.self_attn.qkv_proj": np.concatenate(
            [w[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv"]),
        "model.layers.1.mlp.down_proj": w["model.layers.1.mlp.down_proj.weight"],
        "lm_head": w["lm_head.weight"][:40],
    }
    for prefix, weight in cases.items():
        codes, scale = ref_quantize_sym(weight, m.bits, m.group_size)
        stored = cache.group(prefix)
        rows = weight.shape[0]
        np.testing.assert_array_equal(stored["q_scale"][:rows].view(np.uint16), scale.view(np.uint16))
        k = weight.shape[1]
        expected = ref_dequantize(codes, scale, np.full(scale.shape, m.max_int), k, m.group_size)
        got = pack.dequantize(m, {s: a[:rows] for s, a in stored.items()}, k)
        np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("mode", ASYM, ids=lambda m: m.name)
def test_asym_from_plain_hf_is_rtn(exported, sources, mode):
    cache = TensorCache(exported("tied", mode.name))
    w = hf_weights(sources["tied"])
    for prefix, srcs in fused_sources(config_of(sources["tied"])).items():
        if prefix == "model.embed_tokens":
            np.testing.assert_array_equal(cache[f"{prefix}.weight"], w[srcs[0]])  # fp16 by default
            continue
        expect = np.concatenate(
            [calib_quantize(torch.from_numpy(w[s]), mode.bits, mode.group_size).w_hat.numpy() for s in srcs])
        got = pack.dequantize(mode, cache.group(prefix), expect.shape[1])
        np.testing.assert_array_equal(got.view(np.uint16), expect.view(np.uint16))


@pytest.mark.parametrize(
    "which,bits,group", [("tied", 3, 128), ("untied", 2, 32), ("tied", 4, 64), ("untied", 3, 64)])
def test_calibrated_export_reproduces_checkpoint_exactly(calibrated, exported, which, bits, group):
    ckpt = calibrated(which, bits, group)
    mode = get_mode(f"q{bits}f16_g{group}asym")
    cache = TensorCache(exported(ckpt, mode.name))
    w = hf_weights(ckpt)
    meta = json.loads((ckpt / "quantization.json").read_text())
    config = config_of(ckpt)
    checked = 0
    for prefix, srcs in fused_sources(config).items():
        if prefix in ("model.embed_tokens", "lm_head"):
            np.testing.assert_array_equal(cache[f"{prefix}.weight"], w[srcs[0]])
            continue
        w_hat = np.concatenate([w[s] for s in srcs])
        got = pack.dequantize(mode, cache.group(prefix), w_hat.shape[1])
        np.testing.assert_array_equal(got.view(np.uint16), w_hat.view(np.uint16))
        checked += len(srcs)
    assert checked == len(meta["quantized"])
    # the stored grid is the checkpoint's own (scales and zeros of q, k, v stacked)
    grid = load_file(str(ckpt / "quantization.safetensors"))
    a = "model.layers.0.self_attn"
    stored = cache.group(f"{a}.qkv_proj")
    np.testing.assert_array_equal(
        stored["q_scale"], np.concatenate([grid[f"{a}.{x}_proj.weight.scale"] for x in "qkv"]))
    zeros = pack.unpack_codes(stored["q_zero"], bits, stored["q_scale"].shape[1])
    np.testing.assert_array_equal(zeros, np.concatenate([grid[f"{a}.{x}_proj.weight.zero"] for x in "qkv"]))


def test_calibrated_checkpoint_q0f16_exports_w_hat(calibrated, exported):
    ckpt = calibrated("tied", 3, 128)
    cache = TensorCache(exported(ckpt, "q0f16"))
    w = hf_weights(ckpt)
    np.testing.assert_array_equal(
        cache["model.layers.1.mlp.down_proj.weight"], w["model.layers.1.mlp.down_proj.weight"])


@pytest.mark.parametrize("mode", ["q3f16_g64asym", "q4f16_g128asym", "q4f16_1", "q3f16_1"])
def test_calibrated_checkpoint_refuses_other_grids(calibrated, tmp_path, mode):
    ckpt = calibrated("tied", 3, 128)
    with pytest.raises(UserError, match="calibrated for q3f16_g128asym") as e:
        export_model(ckpt, tmp_path / "out", mode)
    assert "\n" not in str(e.value.message)
    assert not (tmp_path / "out").exists()


def test_off_grid_checkpoint_is_an_error(calibrated, tmp_path):
    ckpt = calibrated("tied", 2, 32)
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(ckpt, bad)
    w = hf_weights(bad)
    name = "model.layers.1.self_attn.v_proj.weight"
    w[name] = w[name].copy()
    w[name][0, 0] = np.float16(float(w[name][0, 0]) + 1e-3)
    from safetensors.numpy import save_file

    save_file(w, str(bad / "model.safetensors"))
    with pytest.raises(UserError, match=name):
        export_model(bad, tmp_path / "out", "q2f16_g32asym")
    assert not (tmp_path / "out").exists()


def test_qwen2_qkv_bias(exported, tiny_qwen2_dir):
    out = exported(tiny_qwen2_dir, "q4f16_g32asym")
    cache = TensorCache(out)
    config = config_of(tiny_qwen2_dir)
    assert {n: (r.shape, r.dtype) for n, r in cache.records.items()} == expected_params(
        config, "q4f16_g32asym", False)
    w = hf_weights(tiny_qwen2_dir)
    a = "model.layers.1.self_attn"
    np.testing.assert_array_equal(
        cache[f"{a}.qkv_proj.bias"], np.concatenate([w[f"{a}.{x}_proj.bias"] for x in "qkv"]))
    assert json.loads((out / "mlc-chat-config.json").read_text())["model_type"] == "qwen2"


@pytest.mark.parametrize("mode,flag,quantized", [
    ("q3f16_g128asym", True, True),
    ("q4f16_1", False, False),
    ("q2f16_g64asym", None, False),
    ("q4f16_1", None, True),
])
def test_embedding_option(exported, sources, mode, flag, quantized):
    opts = {} if flag is None else {"quantize_embedding": flag}
    out = exported("untied", mode, **opts)
    cache = TensorCache(out)
    config = config_of(sources["untied"])
    assert {n: (r.shape, r.dtype) for n, r in cache.records.items()} == expected_params(config, mode, quantized)
    assert summarize(out).embedding_quantized is quantized
    if quantized and not get_mode(mode).symmetric:  # the embedding gets RTN
        m = get_mode(mode)
        w = hf_weights(sources["untied"])["lm_head.weight"]
        expect = calib_quantize(torch.from_numpy(w), m.bits, m.group_size).w_hat.numpy()
        np.testing.assert_array_equal(pack.dequantize(m, cache.group("lm_head"), w.shape[1]), expect)


def test_quantize_embedding_needs_a_quantized_mode(sources, tmp_path):
    with pytest.raises(UserError, match="--quantize-embedding"):
        export_model(sources["tied"], tmp_path / "o", "q0f16", quantize_embedding=True)


def test_existing_output_needs_force(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--force"):
        export_model(sources["tied"], out, "q0f16")
    assert (out / "keep.txt").read_text() == "mine"
    export_model(sources["tied"], out, "q4f16_g128asym", force=True)
    assert not (out / "keep.txt").exists()
    assert json.loads((out / "mlc-chat-config.json").read_text())["quantization"] == "q4f16_g128asym"


def test_failed_export_leaves_nothing(sources, tmp_path, monkeypatch):
    from desv_export import export as export_mod

    calls = {"n": 0}
    real = export_mod.Converter.convert

    def failing(self, t):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        yield from real(self, t)

    monkeypatch.setattr(export_mod.Converter, "convert", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_model(sources["tied"], tmp_path / "out", "q3f16_1")
    assert list(tmp_path.iterdir()) == []


def test_tvm_loads_the_directory(exported):
    """TVM's own runtime loader (what compile/engine use) sees exactly our tensors."""
    import tvm

    out = exported("untied", "q3f16_g64asym")
    cache = TensorCache(out)
    tvm.get_global_func("vm.builtin.tensor_cache.load")(str(out), 1, 0)  # kDLCPU, device 0
    try:
        get = tvm.get_global_func("vm.builtin.tensor_cache.get")
        for name, rec in cache.records.items():
            arr = get(name).numpy()
            assert arr.dtype == np.dtype(rec.dtype) and arr.shape == rec.shape
            np.testing.assert_array_equal(arr, cache[name])
    finally:
        tvm.get_global_func("vm.builtin.tensor_cache.clear")()
