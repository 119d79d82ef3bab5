"""pack.py against straightforward per-element references (slow Python loops on tiny arrays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calib.quantizer import quantize as calib_quantize
from desv_export import pack
from desv_export.modes import MODES, get_mode
from tests.export.reference import adversarial, ref_dequantize, ref_pack, ref_quantize_sym, ref_unpack

QUANT_MODES = [m for m in MODES.values() if m.quantized]
SYM_MODES = [m for m in QUANT_MODES if m.symmetric]
ASYM_MODES = [m for m in QUANT_MODES if not m.symmetric]


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("length", [1, 7, 10, 32, 40, 96, 131])
def test_pack_unpack_match_reference(bits, length):
    rng = np.random.default_rng(bits * 1000 + length)
    codes = rng.integers(0, 2**bits, size=(5, length), dtype=np.uint8)
    codes[0] = 2**bits - 1  # all bits set
    codes[1] = 0
    words = pack.pack_codes(codes, bits)
    assert words.dtype == np.uint32
    np.testing.assert_array_equal(words, ref_pack(codes, bits))
    np.testing.assert_array_equal(pack.unpack_codes(words, bits, length), codes)
    np.testing.assert_array_equal(ref_unpack(words, bits, length), codes)
    if bits == 3:  # 10 codes per word: the top 2 bits stay clear
        assert not np.any(words >> np.uint32(30))


@pytest.mark.parametrize("mode", SYM_MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("k", [96, 40, 80, 33])
def test_mlc_symmetric_quantizer_bit_exact(mode, k):
    w = adversarial(6, k, mode.group_size, seed=k)
    codes, scale = pack.quantize_sym(w, mode)
    ref_codes, ref_scale = ref_quantize_sym(w, mode.bits, mode.group_size)
    np.testing.assert_array_equal(scale.view(np.uint16), ref_scale.view(np.uint16))
    np.testing.assert_array_equal(codes, ref_codes)
    stored = pack.pack(mode, codes, scale)
    assert {s: a.shape for s, a in stored.items()} == mode.shapes(w.shape[0], k)
    offsets = np.full(scale.shape, mode.max_int)
    expected = ref_dequantize(ref_codes, ref_scale, offsets, k, mode.group_size)
    got = pack.dequantize(mode, stored, k)
    assert got.dtype == np.float16 and got.shape == w.shape
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


def test_symmetric_guard_zero_groups_dequantize_to_zero():
    mode = get_mode("q4f16_1")
    w = np.zeros((2, 64), np.float16)
    w[1, 32:] = np.float16(2.0**-24)  # scale underflows to 0 in float16 as well
    codes, scale = pack.quantize_sym(w, mode)
    assert np.all(scale == 0) and np.all(codes[:, :64] == mode.max_int)
    assert not np.any(pack.dequantize(mode, pack.pack(mode, codes, scale), 64))


def test_symmetric_ties_round_half_to_even():
    """w / scale + 7 landing on .5 must round to even, as TVM's round (nearbyint/hrint) does."""
    mode = get_mode("q4f16_1")
    w = np.array([[7.0, -6.5, -5.5, 0.5, 1.5] + [0.0] * 27], np.float16)  # scale = 1
    codes, scale = pack.quantize_sym(w, mode)
    assert float(scale[0, 0]) == 1.0
    assert list(codes[0, :5]) == [14, 0, 2, 8, 8]  # 0.5->0, 1.5->2, 7.5->8, 8.5->8


@pytest.mark.parametrize("mode", ASYM_MODES, ids=lambda m: m.name)
def test_asym_grid_round_trip(mode):
    k = 96  # no group size divides it evenly except 32
    w = adversarial(5, k, mode.group_size, seed=mode.bits)
    w = np.nan_to_num(w.astype(np.float32)).clip(-1000, 1000)
    gen = torch.Generator().manual_seed(1)
    ng = mode.num_groups(k)
    up = 4 * torch.rand(w.shape[0], ng, generator=gen)
    low = 4 * torch.rand(w.shape[0], ng, generator=gen)
    q = calib_quantize(torch.from_numpy(w), mode.bits, mode.group_size, up, low)
    w_hat, scale, zero = q.w_hat.numpy(), q.scale.numpy(), q.zero.numpy()
    codes = pack.codes_from_grid(w_hat, scale, zero, mode)
    np.testing.assert_array_equal(codes, q.codes.numpy())  # padding repeats the last code
    stored = pack.pack(mode, codes, scale, zero)
    assert {s: a.shape for s, a in stored.items()} == mode.shapes(w.shape[0], k)
    np.testing.assert_array_equal(stored["q_weight"], ref_pack(codes, mode.bits))
    np.testing.assert_array_equal(stored["q_zero"], ref_pack(zero, mode.bits))
    got = pack.dequantize(mode, stored, k)
    np.testing.assert_array_equal(got.view(np.uint16), w_hat.view(np.uint16))
    np.testing.assert_array_equal(got, ref_dequantize(codes, scale, zero, k, mode.group_size))


def test_codes_from_grid_rejects_off_grid_weights():
    mode = get_mode("q3f16_g32asym")
    w = torch.randn(4, 64)
    q = calib_quantize(w, 3, 32)
    w_hat = q.w_hat.numpy().copy()
    w_hat[2, 5] = np.float16(float(w_hat[2, 5]) + float(q.scale[2, 0]) * 0.25)
    with pytest.raises(ValueError, match="not on the q3f16_g32asym grid"):
        pack.codes_from_grid(w_hat, q.scale.numpy(), q.zero.numpy(), mode)
    zero = q.zero.numpy().copy()
    zero[1, 1] = 200  # codes out of range
    with pytest.raises(ValueError, match="outside"):
        pack.codes_from_grid(q.w_hat.numpy(), q.scale.numpy(), zero, mode)


def test_dequantize_q0f16_is_identity():
    w = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float16)
    np.testing.assert_array_equal(pack.dequantize("q0f16", {"weight": w}, 8), w)
