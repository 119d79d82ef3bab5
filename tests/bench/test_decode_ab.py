"""benchmarks/decode_ab.py: two libraries of one weight directory, timed in turns."""

from __future__ import annotations

import re

from benchmarks import decode_ab
from tests.engine import libraries as L


def test_decode_ab_reports_both_libraries(tiny_llama_dir, tmp_path, capsys):
    wd = L.weight_dir(tmp_path, tiny_llama_dir, "q4f16_1")
    lib = L.library(tmp_path, wd)
    twin = tmp_path / "twin.so"  # the same library under another name: both rows, one build
    twin.write_bytes(lib.read_bytes())
    assert decode_ab.main([str(wd), str(lib), str(twin), "--rounds", "2", "--prompt-len", "20",
                           "--gen-len", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [lib.name, "twin.so"]
    for line in lines:
        m = re.search(r"decode ([\d.]+) ms/token \(([\d.]+) tok/s\), rounds ([\d., ]+); "
                      r"prefill 20 tokens ([\d.]+) ms", line)
        assert m, line
        ms, tok_s = float(m[1]), float(m[2])
        rounds = [float(v) for v in m[3].split(", ")]
        assert len(rounds) == 2 and min(rounds) <= ms <= max(rounds)
        assert ms > 0 and abs(tok_s - 1e3 / ms) < 0.1 * tok_s and float(m[4]) > 0
