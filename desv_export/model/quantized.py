"""Linear and embedding layers that read their weights in an export mode's storage format.

One module covers every mode of ``desv_export.modes``: q0f16 keeps a float16 ``weight``, the
quantized modes keep ``q_weight`` / ``q_scale`` (/ ``q_zero``) exactly as the exporter writes
them (CONTRACT 2), so parameter names and shapes of the compiled library are the tensor cache's.

Each forward is ONE tensor-expression op whose PrimFunc holds a ``dequantize`` block (from
``desv_export.model.dequantize``) feeding a ``matmul`` (or ``take``) block. That is the shape
MLC-LLM reaches only after its FuseDequantize* passes, here by construction: the schedule rules
(``tvm_schedules`` on CUDA, ``tvm_schedules.cpu`` on llvm) then dequantize in registers or in
tiles inside the consumer, so no full float weight is ever materialised at run time.

Compute dtype: weights are stored float16 (codes * float16 scale, exact); activations use the
model's compute dtype (float32 on llvm, float16 on CUDA, see ``desv_export/compile.py``).
Matmuls accumulate in float32 whatever the compute dtype, so a float16 library loses precision
only at layer boundaries.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn

from ..modes import QuantMode
from .dequantize import dequantize_weight

ACCUM_DTYPE = "float32"


def _weight_fn(mode: QuantMode, k: int, dtype: str):
    """TE builder: (stored tensors...) -> float [N, K] weight in ``dtype``."""

    def build(*stored: te.Tensor) -> te.Tensor:
        if not mode.quantized:
            (w,) = stored
            if w.dtype == dtype:
                return w
            return te.compute(w.shape, lambda i, j: w[i, j].astype(dtype), name="dequantize")
        q_weight, q_scale = stored[0], stored[1]
        q_zero = None if mode.symmetric else stored[2]
        # The stored grid is defined by a float16 multiply (bit-exact with pack.dequantize and
        # the calibrated w_hat); float32 activations get the same values (see dequantize_weight).
        return dequantize_weight(mode, q_weight, q_scale, q_zero, k, dtype)

    return build


class _QuantizedWeight(nn.Module):
    """Parameters of one [N, K] weight in ``mode``'s storage (weight, or q_weight/q_scale/q_zero)."""

    def __init__(self, n: int, k: int, mode: QuantMode) -> None:
        super().__init__()
        self.n, self.k, self.mode = n, k, mode
        if mode.quantized:
            shapes = mode.shapes(n, k)
            self.q_weight = nn.Parameter(shapes["q_weight"], "uint32")
            self.q_scale = nn.Parameter(shapes["q_scale"], "float16")
            if not mode.symmetric:
                self.q_zero = nn.Parameter(shapes["q_zero"], "uint32")
        else:
            self.weight = nn.Parameter((n, k), "float16")

    def stored(self) -> list[nn.Tensor]:
        if not self.mode.quantized:
            return [self.weight]
        out = [self.q_weight, self.q_scale]
        if not self.mode.symmetric:
            out.append(self.q_zero)
        return out

    def matmul(self, x: nn.Tensor, out_dtype: str, name: str) -> nn.Tensor:
        """``x @ W.T`` for x [..., K]; float32 accumulation, result in ``out_dtype``."""
        k, n = self.k, self.n
        weight_fn = _weight_fn(self.mode, k, x.dtype)
        n_stored = len(self.stored())

        def compute(x: te.Tensor, *stored: te.Tensor) -> te.Tensor:
            w = weight_fn(*stored[:n_stored])
            r = te.reduce_axis((0, k), name="k")
            lead = list(x.shape[:-1])

            def body(*idx):
                *pre, j = idx
                return te.sum(
                    x[(*pre, r)].astype(ACCUM_DTYPE) * w[j, r].astype(ACCUM_DTYPE), axis=r
                )

            acc = te.compute((*lead, n), body, name="matmul")
            if out_dtype == ACCUM_DTYPE:
                return acc
            return te.compute(acc.shape, lambda *i: acc[i].astype(out_dtype), name="cast")

        return nn.op.tensor_expr_op(compute, name, [x, *self.stored()])


class QuantizedLinear(_QuantizedWeight):
    """``y = x W^T (+ b)`` with W in a mode's storage; an optional float16 bias (Qwen2 qkv)."""

    def __init__(
        self, in_features: int, out_features: int, mode: QuantMode, bias: bool = False
    ) -> None:
        super().__init__(out_features, in_features, mode)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter((out_features,), "float16") if bias else None

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        y = self.matmul(x, x.dtype, "dequantize_matmul" if self.mode.quantized else "matmul")
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return y


class QuantizedEmbedding(_QuantizedWeight):
    """Token embedding [V, H] in a mode's storage; also the tied lm_head."""

    def __init__(self, vocab_size: int, hidden_size: int, mode: QuantMode) -> None:
        super().__init__(vocab_size, hidden_size, mode)

    def forward(self, input_ids: nn.Tensor, dtype: str) -> nn.Tensor:
        """[s] int32 -> [s, H] in ``dtype``: gather rows, dequantizing only the rows taken."""
        weight_fn = _weight_fn(self.mode, self.k, dtype)
        n_stored = len(self.stored())
        hidden = self.k

        def compute(ids: te.Tensor, *stored: te.Tensor) -> te.Tensor:
            w = weight_fn(*stored[:n_stored])
            return te.compute(
                (ids.shape[0], hidden),
                lambda i, j: w[ids[i].astype("int64") if ids.dtype != "int64" else ids[i], j],
                name="take",
            )

        return nn.op.tensor_expr_op(
            compute, "dequantize_take" if self.mode.quantized else "take", [input_ids, *self.stored()]
        )

    def lm_head_forward(self, x: nn.Tensor) -> nn.Tensor:
        """Tied lm_head: float32 logits ``x @ E^T``."""
        return self.matmul(x, "float32", "lm_head_matmul")


class RMSNorm(nn.Module):
    """LLaMA RMSNorm with a float16 weight (as stored), computed in float32 like HF's."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter((hidden_size,), "float16")

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        eps = self.eps

        def compute(x: te.Tensor, w: te.Tensor) -> te.Tensor:
            h = x.shape[-1]
            r = te.reduce_axis((0, h), name="h")
            sq = te.compute(
                x.shape[:-1],
                lambda *i: te.sum(x[(*i, r)].astype("float32") * x[(*i, r)].astype("float32"), axis=r),
                name="sum_sq",
            )

            def body(*idx):
                *pre, j = idx
                inv = tirx.rsqrt(sq[tuple(pre)] / tirx.const(float(h.value if hasattr(h, "value") else h), "float32") + tirx.const(eps, "float32"))
                normed = (x[idx].astype("float32") * inv).astype(x.dtype)
                return (normed.astype("float32") * w[j].astype("float32")).astype(x.dtype)

            return te.compute(x.shape, body, name="rms_norm")

        return nn.op.tensor_expr_op(compute, "rms_norm", [x, self.weight])
