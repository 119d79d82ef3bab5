"""LET: OmniQuant's learnable equivalent transformation, the scale half, for weight-only quantization.

A per-channel scale ``s`` can move from a producer into the input columns of the linears it
feeds without changing the float function: ``(x / s) @ (W * s)^T = x @ W^T``. Quantizing
``W * s`` instead of ``W`` lets calibration enlarge the columns that meet large activations
(they get a finer share of their group's grid) and shrink the rest, which is what AWQ searches
for by hand. Inside a LLaMA block there are four such pairs:

==========================  ==========================  =================================
producer (divided by s)     consumers (columns * s)     why it is exact
==========================  ==========================  =================================
``input_layernorm`` gain    q/k/v_proj                  RMSNorm ends with a per-channel gain
``post_attention_layernorm`` gate/up_proj               same
v_proj rows (and bias)      o_proj                      attention mixes tokens, not channels;
                                                        with GQA one v channel feeds
                                                        ``heads / kv_heads`` o columns
up_proj rows (and bias)     down_proj                   ``silu(gate) * up`` is linear in up
==========================  ==========================  =================================

What OmniQuant also has and this leaves out: the shift (it needs a bias in every consumer
linear, which MLC's LLaMA has not) and the q/k scale (it does not commute with RoPE).

The scales are learned as logarithms, initialised to 0: at step 0 the block is exactly the
LWC (or DESV) block, as with the DESV band, and a scale can never reach zero or change sign.
After training the transform is folded: the block's norm gains (and the v/up biases) take their
new values and are stored in the checkpoint like any other tensor, and the scaled weights are
what gets quantized; the model needs no extra operator at run time.
"""

from __future__ import annotations

import torch

from desv_export.errors import UserError

from .model import quantized_linears

# (producer parameter, consumer linears) for the norm gains.
NORM_PAIRS = (
    ("input_layernorm.weight", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm.weight", ("mlp.gate_proj", "mlp.up_proj")),
)
# (producer linear whose output rows are divided, consumer linear whose input columns are scaled).
LINEAR_PAIRS = (("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj"))


class BlockLET(torch.nn.Module):
    """The learnable log-scales of one decoder block and the transform they define."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        linears = quantized_linears(layer)
        params = dict(layer.named_parameters())
        missing = [n for n, _ in NORM_PAIRS if n not in params] + [
            n for pair in LINEAR_PAIRS for n in pair if n not in linears]
        if missing:
            raise UserError(f"--let needs a LLaMA-style block; this one has no {missing[0]}")
        device = params[NORM_PAIRS[0][0]].device
        self.names: list[str] = []
        for producer, _ in NORM_PAIRS:
            self._add(producer, params[producer].shape[0], device)
        for producer, consumer in LINEAR_PAIRS:
            self._add(producer, linears[producer].out_features, device)
            # v -> o under GQA: o's input is heads x head_dim, v's output kv_heads x head_dim.
            if linears[consumer].in_features % linears[producer].out_features:
                raise UserError(f"--let: {consumer} input does not tile {producer} output")
        self.head_dim = int(getattr(layer.self_attn, "head_dim"))
        # The block's own tensors the producers divide (plain dict: not LET's parameters).
        self.gains = {n: params[n] for n, _ in NORM_PAIRS}
        self.biases = {n: params[f"{n}.bias"] for n, _ in LINEAR_PAIRS if f"{n}.bias" in params}

    def _add(self, producer: str, size: int, device) -> None:
        self.names.append(producer)
        self.register_parameter(_key(producer), torch.nn.Parameter(torch.zeros(size, device=device)))

    def scale(self, producer: str) -> torch.Tensor:
        return getattr(self, _key(producer)).exp()

    def _consumer_scale(self, producer: str, consumer_in: int) -> torch.Tensor:
        s = self.scale(producer)
        repeat = consumer_in // s.shape[0]
        if repeat == 1:
            return s
        return s.view(-1, self.head_dim).repeat_interleave(repeat, dim=0).reshape(-1)

    def transform(self, weights: dict[str, torch.Tensor]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(linear weights to quantize, other block tensors that change) under the current scales.

        ``weights`` maps each quantized linear's name to its float weight (after the DESV band).
        """
        out = dict(weights)
        extra: dict[str, torch.Tensor] = {}
        for producer, consumers in NORM_PAIRS:
            s = self.scale(producer)
            extra[producer] = self.gains[producer] / s
            for c in consumers:
                out[c] = out[c] * s
        for producer, consumer in LINEAR_PAIRS:
            out[producer] = out[producer] / self.scale(producer).unsqueeze(1)
            out[consumer] = out[consumer] * self._consumer_scale(producer, out[consumer].shape[1])
            if producer in self.biases:
                extra[f"{producer}.bias"] = self.biases[producer] / self.scale(producer)
        return out, extra


def _key(producer: str) -> str:
    return "log_s_" + producer.replace(".", "_")

