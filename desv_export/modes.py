"""The one table of export modes (the ``quantization`` field of mlc-chat-config.json).

Names follow MLC-LLM: ``q{bits}f16_{variant}``.

* ``q0f16``: no quantization, float16 weights (the FP baseline).
* ``q4f16_1`` / ``q3f16_1``: MLC-LLM's own symmetric group presets (layout NK, group 32 / 40),
  bit-exact with MLC's maths so MLC-LLM's runtime loads them unchanged.
* ``q{2,3,4}f16_g{32,64,128}asym``: ours. Asymmetric group quantization with an integer zero
  point, the grid DESV/LWC/LSI/RTN calibration learns. MLC-LLM has no such preset, so these run
  with our model library (which follows MLC-LLM's interface).

Storage for a linear with weight W[N, K] (torch layout, out x in), group size G,
``ngroups = ceil(K / G)`` (the last group is padded, as MLC does) and ``epw = 32 // bits``
codes per uint32 word, packed LSB first, element i in word i // epw at bit (i % epw) * bits:

* ``q_weight``  uint32  [N, ceil(ngroups * G / epw)]   codes along K, padded K = ngroups * G
* ``q_scale``   float16 [N, ngroups]
* ``q_zero``    uint32  [N, ceil(ngroups / epw)]        asym only: zero points packed like codes

Dequantize: sym ``w = (q - (2^(b-1) - 1)) * scale``; asym ``w = (q - zero) * scale``, both in
float16, exact for calibrated checkpoints (see calib/quantizer.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class QuantMode:
    name: str
    bits: int  # 16 for q0f16
    group_size: int  # 0 for q0f16
    symmetric: bool
    # MLC's presets quantize the embedding (and an untied lm_head); ours keep them float16
    # unless the exporter is asked to quantize them (--quantize-embedding).
    quantize_embedding_default: bool

    @property
    def quantized(self) -> bool:
        return self.bits < 16

    @property
    def elems_per_word(self) -> int:
        return 32 // self.bits

    @property
    def max_int(self) -> int:
        """Symmetric presets: codes are offset by this (MLC's max_int_value)."""
        return 2 ** (self.bits - 1) - 1

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def num_groups(self, k: int) -> int:
        return math.ceil(k / self.group_size)

    def shapes(self, n: int, k: int) -> dict[str, tuple[int, ...]]:
        """Parameter suffix -> shape for a quantized [n, k] weight."""
        g = self.num_groups(k)
        epw = self.elems_per_word
        out = {
            "q_weight": (n, math.ceil(g * self.group_size / epw)),
            "q_scale": (n, g),
        }
        if not self.symmetric:
            out["q_zero"] = (n, math.ceil(g / epw))
        return out

    def bits_per_param(self, k: int) -> float:
        """Storage bits per weight of one [*, k] row, padding and scale/zero included."""
        if not self.quantized:
            return 16.0
        shapes = self.shapes(1, k)
        bits = 32 * shapes["q_weight"][1] + 16 * shapes["q_scale"][1]
        if "q_zero" in shapes:
            bits += 32 * shapes["q_zero"][1]
        return bits / k


_ASYM = re.compile(r"^q([234])f16_g(32|64|128)asym$")

MODES: dict[str, QuantMode] = {
    "q0f16": QuantMode("q0f16", 16, 0, True, False),
    "q4f16_1": QuantMode("q4f16_1", 4, 32, True, True),
    "q3f16_1": QuantMode("q3f16_1", 3, 40, True, True),
}
for _b in (2, 3, 4):
    for _g in (32, 64, 128):
        _name = f"q{_b}f16_g{_g}asym"
        MODES[_name] = QuantMode(_name, _b, _g, False, False)


def asym_mode_name(bits: int, group_size: int) -> str:
    return f"q{bits}f16_g{group_size}asym"


def get_mode(name: str, source: str = "--quantization") -> QuantMode:
    """The mode called ``name``; ``source`` (the option or file it came from) is named in the
    error, so a user knows what to correct."""
    from .errors import UserError

    try:
        return MODES[name]
    except KeyError:
        raise UserError(
            f"unknown quantization mode {name!r} ({source}); choose one of {', '.join(MODES)}"
        ) from None
