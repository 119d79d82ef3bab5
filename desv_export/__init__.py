"""desv-export: DESV-calibrated low-bit LLaMA models exported to MLC-LLM / Apache TVM."""

__version__ = "0.1.0"
