"""CUDA schedule rules for the fused dequantize-matmul kernels of every export mode."""
