"""The built-in example model (SmolLM2-135M, hidden 576) exports in every mode."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from desv_export import pack
from desv_export.export import export_model
from desv_export.mlc.summary import summarize
from desv_export.mlc.tensor_cache import TensorCache, verify_shards
from desv_export.modes import MODES
from tests.export.reference import expected_params, hf_weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def example_weights(example_model_dir):
    return hf_weights(example_model_dir)


@pytest.mark.parametrize("mode", list(MODES))
def test_example_model_exports_in_every_mode(example_model_dir, example_weights, tmp_path, mode):
    m = MODES[mode]
    t0 = time.perf_counter()
    out = export_model(example_model_dir, tmp_path / mode, mode)
    seconds = time.perf_counter() - t0
    config = json.loads((example_model_dir / "config.json").read_text())
    cache = TensorCache(out)
    assert {n: (r.shape, r.dtype) for n, r in cache.records.items()} == expected_params(
        config, mode, m.quantize_embedding_default)
    assert verify_shards(out) == []
    for shard in cache.shards:
        assert shard["nbytes"] < 32 << 20 or len(shard["records"]) == 1
    # bits per param: the modes.py formula (K = 576 except down_proj, K = 1536)
    s = summarize(out)
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    rows_h = (config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * config["head_dim"] + h + 2 * inter
    lin = layers * (rows_h * h * m.bits_per_param(h) + h * inter * m.bits_per_param(inter))
    assert s.linear.params == layers * (rows_h * h + h * inter)
    assert s.linear.bits_per_param == pytest.approx(lin / s.linear.params, rel=1e-12)
    assert cache.metadata["BitsPerParam"] == pytest.approx(s.total().bits_per_param, rel=1e-12)
    # the weights are the model's, within the mode's quantization error
    w = example_weights["model.layers.7.mlp.down_proj.weight"]
    got = pack.dequantize(m, cache.group("model.layers.7.mlp.down_proj"), w.shape[1]) if m.quantized else (
        cache["model.layers.7.mlp.down_proj.weight"])
    err = np.sqrt(np.mean((got.astype(np.float64) - w) ** 2) / np.mean(w.astype(np.float64) ** 2))
    assert err <= {16: 0.0, 4: 0.2, 3: 0.4, 2: 0.8}[m.bits], err
    print(f"{mode}: {seconds:.1f} s, linear {s.linear.bits_per_param:.4f} bits/param, "
          f"whole {cache.metadata['BitsPerParam']:.4f}, rel. RMS error {err:.4f}")


def test_example_model_calibrated_grid_survives_export(example_model_dir, tmp_path):
    """A q3/g128 checkpoint of the 576-wide model (last group padded) exports bit-exactly."""
    from tests.export.calibrated import make_calibrated

    ckpt = make_calibrated(example_model_dir, tmp_path / "ckpt", 3, 128)
    m = MODES["q3f16_g128asym"]
    cache = TensorCache(export_model(ckpt, tmp_path / "out", m.name))
    w = hf_weights(ckpt)
    for i in (0, 29):
        a, p = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        for prefix, srcs in {f"{a}.qkv_proj": [f"{a}.{x}_proj.weight" for x in "qkv"],
                             f"{p}.down_proj": [f"{p}.down_proj.weight"]}.items():
            w_hat = np.concatenate([w[s] for s in srcs])
            got = pack.dequantize(m, cache.group(prefix), w_hat.shape[1])
            np.testing.assert_array_equal(got.view(np.uint16), w_hat.view(np.uint16))
