"""Tests of desv_export.compile and the model library it builds."""
