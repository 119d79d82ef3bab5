"""``python -m desv_export`` = ``desv-export`` (where the package is on the path but not installed)."""

from .cli import main

main(prog_name="desv-export")
