"""MLC's float16 symmetric quantizer formula compiled and run by TVM agrees with pack.quantize_sym.

The per-element reference in test_pack checks our reading of MLC's maths; this runs the same
formula (group_quantization.py ``_quantize``: max|w| over the group with padding excluded,
``scale = max / max_int``, ``clamp(round(w / scale + max_int), 0, 2 max_int)``, all float16)
through TVM's llvm backend, so float16 rounding and TVM's ``round`` are TVM's own.
"""

from __future__ import annotations

import numpy as np
import pytest

from desv_export import pack
from desv_export.modes import get_mode
from tests.export.reference import adversarial


def tvm_quantize(w: np.ndarray, bits: int, g: int) -> tuple[np.ndarray, np.ndarray]:
    import tvm
    from tvm import te, tirx

    n, k = w.shape
    ng = -(-k // g)
    max_int = tirx.const(2 ** (bits - 1) - 1, "float16")
    W = te.placeholder((n, k), "float16", name="W")
    r = te.reduce_axis((0, g), name="r")
    absmax = te.compute(
        (n, ng),
        lambda i, j: te.max(
            tirx.if_then_else(
                j * g + r < k, te.abs(W[i, tirx.min(j * g + r, k - 1)]), te.min_value("float16")
            ),
            axis=r,
        ),
        name="absmax",
    )
    S = te.compute((n, ng), lambda i, j: absmax[i, j] / max_int, name="S")
    Q = te.compute(
        (n, k),
        lambda i, c: tirx.min(
            tirx.max(tirx.round(W[i, c] / S[i, c // g] + max_int), tirx.const(0, "float16")), max_int * 2
        ).astype("uint32"),
        name="Q",
    )
    f = tvm.compile(te.create_prim_func([W, S, Q]), target="llvm")
    dev = tvm.cpu()
    s = tvm.runtime.tensor(np.zeros((n, ng), np.float16), dev)
    q = tvm.runtime.tensor(np.zeros((n, k), np.uint32), dev)
    f(tvm.runtime.tensor(w, dev), s, q)
    return q.numpy(), s.numpy()


@pytest.mark.parametrize("mode", ["q4f16_1", "q3f16_1"])
def test_tvm_runs_mlc_formula_to_the_same_codes(mode):
    m = get_mode(mode)
    k = 576  # the example model's hidden size: 40 does not divide it
    w = adversarial(64, k, m.group_size, seed=7)
    codes, scale = pack.quantize_sym(w, m)
    q, s = tvm_quantize(w, m.bits, m.group_size)
    np.testing.assert_array_equal(s.view(np.uint16), scale.view(np.uint16))
    # rows holding a zero-scale group are where MLC divides 0 by 0 and our guard takes over
    rows = np.all(scale != 0, axis=1)
    assert rows.sum() >= 64
    np.testing.assert_array_equal(q[rows], codes[rows, :k].astype(np.uint32))
