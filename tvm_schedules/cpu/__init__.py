"""CPU (llvm) schedule rules for the compiled model's linear layers and embedding gather.

``cpu_rules()`` is what the compile pipeline applies on llvm; functions no rule takes (norms,
elementwise, the KV cache's attention kernels, which come scheduled) keep TVM's default loops.
"""

from __future__ import annotations

from .gemm import CPUTiledGEMM
from .gemv import CPUVectorGEMV
from .inline import CPUInlineSpatial


def cpu_rules() -> list:
    """Our CPU rules in priority order (each returns None on a PrimFunc it does not own)."""
    return [CPUVectorGEMV(), CPUTiledGEMM(), CPUInlineSpatial()]


__all__ = ["CPUInlineSpatial", "CPUTiledGEMM", "CPUVectorGEMV", "cpu_rules"]
