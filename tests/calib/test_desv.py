"""The DESV map: band placement, W' = W at zero init, n = 0 is LSI, n capped at the rank."""

import torch

from calib.desv import SVDBand, band_matrix


def test_band_placement():
    n, r = 2, 5
    band = torch.arange(1.0, 1 + (2 * n + 1) * r).reshape(2 * n + 1, r)
    b = band_matrix(band, n, r)
    for i in range(r):
        for j in range(r):
            k = i - j
            expect = band[k + n, j] if -n <= k <= n else 0.0
            assert b[i, j] == expect, (i, j)


def test_band_gradient_reaches_only_in_range_entries():
    band = torch.zeros(3, 4, requires_grad=True)
    band_matrix(band, 1, 4).sum().backward()
    # diagonal -1 has no entry for j = 0, diagonal +1 none for j = 3
    expect = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.float32)
    assert torch.equal(band.grad, expect)


def test_zero_init_gives_w():
    torch.manual_seed(0)
    w = torch.randn(12, 20)
    mod = SVDBand(w, 100)
    assert mod.n == 11  # capped at r - 1
    assert torch.count_nonzero(mod.band) == 0
    assert torch.equal(mod.weight(), w)


def test_n0_is_lsi():
    torch.manual_seed(1)
    w = torch.randn(10, 16)
    mod = SVDBand(w, 0)
    d = torch.randn(10) * 0.1
    with torch.no_grad():
        mod.band.copy_(d[None])
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    lsi = u @ torch.diag(s + d) @ vh  # learnable singular values
    assert torch.allclose(mod.weight(), lsi, atol=1e-5)


def test_band_moves_weight_in_both_shapes():
    torch.manual_seed(2)
    for shape in ((8, 20), (20, 8)):  # both matmul orders of SVDBand.weight
        w = torch.randn(*shape)
        mod = SVDBand(w, 3)
        with torch.no_grad():
            mod.band.normal_()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        expect = u @ (torch.diag(s) + mod.matrix()) @ vh
        assert torch.allclose(mod.weight(), expect, atol=1e-4)
        mod.weight().sum().backward()
        assert mod.band.grad.abs().sum() > 0
