"""Block-wise post-training quantization: RTN, LWC (OmniQuant), LSI and DESV."""
