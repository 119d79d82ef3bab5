"""The LLaMA model in TVM Relax (relax.frontend.nn) and its quantized layers."""
