"""The torch int4 baseline computes what it claims: RTN int4 weights through tinygemm (CPU)."""

from __future__ import annotations

import pytest
import torch

from desv_export.bench.torch_int4 import Int4Linear, group_for, quantize_model, quantize_rtn


@pytest.mark.parametrize("k", [576, 256, 96])
def test_int4_linear_is_the_rtn_grid(k):
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, 48, bias=True)
    group = group_for(k)
    layer = Int4Linear(linear, group, "cpu")
    codes, scale, zero = quantize_rtn(linear.weight.detach(), group)
    g = torch.arange(k) // group
    grid = (codes.float() - zero[:, g]) * scale[:, g]
    # The kernel's weights are the RTN grid (tinygemm's float zero reproduces the integer one).
    torch.testing.assert_close(layer.dequantized(), grid, rtol=0, atol=1e-5)
    assert (grid - linear.weight).abs().max() <= scale.max() / 2 + 1e-6
    x = torch.randn(3, 5, k)
    torch.testing.assert_close(layer(x), x @ grid.t() + linear.bias, rtol=1e-4, atol=1e-4)


def test_quantize_model_replaces_every_eligible_linear():
    model = torch.nn.Sequential(torch.nn.Linear(576, 64), torch.nn.ReLU(), torch.nn.Linear(64, 96),
                                torch.nn.Linear(96, 32),
                                torch.nn.Linear(32, 8),  # 8 outputs: tinygemm packs 16 at a time
                                torch.nn.Linear(8, 16))  # 8 inputs: no group divides them
    assert quantize_model(model, "cpu") == [64, 32]
    assert isinstance(model[0], Int4Linear) and model[0].group == 64
    assert isinstance(model[2], Int4Linear) and model[2].group == 64
    assert isinstance(model[3], Int4Linear) and model[3].group == 32
    assert type(model[4]) is torch.nn.Linear and type(model[5]) is torch.nn.Linear
