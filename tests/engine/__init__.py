"""Tests of the runtime engine (desv_export.engine) and the generate/chat commands."""
