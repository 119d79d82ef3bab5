"""The rule list the compile pipeline applies before dlight's own rules."""

from __future__ import annotations

from .dispatch import LowBatchDispatch
from .gemm import DequantGEMM
from .gemv import DecodeGEMV, LowBatchGEMV
from .take import DequantTake


def cuda_rules() -> list:
    """Our rules in priority order; each returns None on a PrimFunc it does not own, so the
    pipeline's ``ApplyDefaultSchedule(*cuda_rules(), *dlight_rules)`` falls through to dlight
    for everything else (attention, norms, elementwise, float16 matmuls)."""
    return [LowBatchDispatch(), DecodeGEMV(), LowBatchGEMV(), DequantGEMM(), DequantTake()]
