"""The runtime: load a compiled model library and its weights, run prefill/decode, sample.

Everything here uses ``tvm.runtime`` only (never ``tvm.relax``), so it runs on a runtime-only
TVM install (DESIGN.md section 3) such as the one carried to a GPU machine.
"""
