"""CUDA schedule rules for the fused dequantize-matmul kernels of every export mode.

``registry.cuda_rules()`` is the list the compile pipeline applies before dlight's rules.
"""

from .dispatch import LowBatchDispatch
from .gemm import DequantGEMM
from .gemv import DecodeGEMV, LowBatchGEMV
from .registry import cuda_rules
from .take import DequantTake

__all__ = ["DecodeGEMV", "LowBatchDispatch", "LowBatchGEMV", "DequantGEMM", "DequantTake", "cuda_rules"]
