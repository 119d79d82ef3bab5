"""Quantizer maths: codes, the zero clamp, exact float16 reconstruction, LWC gradients."""

import torch

from calib.quantizer import LWC, dequantize, fake_quant, quantize


def test_rtn_codes_match_the_formula():
    torch.manual_seed(0)
    w = torch.randn(8, 70)  # 70 = 2 groups of 32 + a partial group of 6
    q = quantize(w, bits=3, group_size=32)
    assert q.codes.shape == (8, 96) and q.scale.shape == (8, 3) and q.zero.shape == (8, 3)
    assert int(q.codes.max()) <= 7 and int(q.zero.max()) <= 7
    # First group by hand: scale = (max - min) / 7, zero = round(-min / scale).
    g = w[:, :32]
    scale = ((g.amax(1) - g.amin(1)) / 7).to(torch.float16).float()
    zero = (-g.amin(1) / scale).round().clamp(0, 7)
    codes = (g / scale[:, None]).round().add(zero[:, None]).clamp(0, 7)
    assert torch.equal(q.codes[:, :32].float(), codes)
    assert torch.equal(q.zero[:, 0].float(), zero)


def test_w_hat_is_dequantize_of_codes_exactly():
    torch.manual_seed(1)
    w = torch.randn(16, 100) * 0.05
    for bits in (2, 3, 4):
        q = quantize(w, bits, 64)
        assert torch.equal(dequantize(q.codes, q.scale, q.zero, 100), q.w_hat)
        # the grid error of RTN is at most half a step
        err = (q.w_hat.float() - w).abs().reshape(16, -1)
        assert float(err.max()) <= float(q.scale.float().max()) * 0.5 + 1e-3


def test_zero_is_clamped_into_code_range_for_one_signed_group():
    w = torch.rand(4, 32) + 1.0  # all positive: min > 0 would give a negative zero point
    q = quantize(w, 2, 32)
    assert int(q.zero.min()) >= 0 and int(q.zero.max()) <= 3
    assert torch.equal(dequantize(q.codes, q.scale, q.zero, 32), q.w_hat)


def test_lwc_gradients_flow_and_clipping_narrows_the_grid():
    torch.manual_seed(2)
    w = torch.randn(6, 64)
    lwc = LWC(6, 64, 32)
    out = fake_quant(w, 3, 32, lwc.up, lwc.low)
    ((out - w) ** 2).sum().backward()
    assert lwc.up.grad is not None and lwc.up.grad.abs().sum() > 0
    assert lwc.low.grad is not None and lwc.low.grad.abs().sum() > 0
    # fake_quant's forward equals the folded quantize with the same logits
    assert torch.equal(out.detach().to(torch.float16), quantize(w, 3, 32, lwc.up, lwc.low).w_hat)
    wide = quantize(w, 3, 32)
    narrow = quantize(w, 3, 32, torch.full((6, 2), -2.0), torch.full((6, 2), -2.0))
    assert bool((narrow.scale.float() < wide.scale.float()).all())
