"""The deployment benchmark end to end on the tiny synthetic model (llvm, this CPU)."""

from __future__ import annotations

import json
import statistics

import pytest
from click.testing import CliRunner

from desv_export.bench.synthetic import write_synthetic
from desv_export.cli import main
from desv_export.mlc.tensor_cache import read_index
from desv_export.modes import get_mode

MODES = ("q0f16", "q4f16_g128asym", "q2f16_g128asym")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(
        main,
        ["bench", "--synthetic", "tiny", "--modes", ",".join(MODES), "--target", "llvm",
         "--prompt-len", "16", "--gen-len", "24", "--runs", "1", "--rounds", "2", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "deploy_tiny_llvm.json").read_text()), result.output


def test_report_files_and_table(report):
    out, data, stdout = report
    md = (out / "deploy_tiny_llvm.md").read_text()
    assert "| Mode | Bits | WM | RM | prefill tok/s | decode tok/s | % roofline |" in md
    assert "median of 2 runs (2 rounds over every row in turn, each 1 run after 1 warm-up)" in md
    assert (out / "deploy_tiny_llvm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["mode"] for r in data["rows"][: len(MODES)]] == list(MODES)
    assert data["rows"][-2]["mode"].startswith("HF transformers (float32)")
    assert data["rows"][-1]["mode"].startswith("HF + torch int4 weight-only (g")
    for row in data["rows"]:
        for key in ("prefill_tok_s", "decode_tok_s", "rm_bytes", "wm_bytes", "roofline_pct"):
            assert row[key] > 0, (row["mode"], key)
        assert f"| {row['mode']} |" in md


def test_rounds_visit_every_row_in_turn(report):
    _, data, output = report
    order = [line.strip() for line in output.splitlines() if line.startswith("Measuring ")]
    names = [r["mode"] for r in data["rows"][: len(MODES)]] + ["the hf baseline", "the torch-int4 baseline"]
    assert order == [f"Measuring {n} (round {i} of 2) ..." for i in (1, 2) for n in names]


def test_pool_merges_the_runs_of_every_round():
    from desv_export.bench.timing import pool

    rounds = [{"raw": [{"prefill_s": p, "decode_s": d, "generated": 11, "prompt_len": 8}],
               "rm_bytes": rm, "rm_method": "m"} for p, d, rm in ((0.5, 1.0, 7), (0.25, 2.0, 9), (1.0, 0.5, 8))]
    row = pool(rounds)
    assert len(row["raw"]) == 3 and row["rm_bytes"] == 9 and row["rm_method"] == "m"
    assert row["decode_tok_s"] == pytest.approx(10 / 1.0) and row["prefill_tok_s"] == pytest.approx(8 / 0.5)
    assert pool(rounds[:1]) is rounds[0]


def test_numbers_are_consistent(report):
    out, data, _ = report
    for row in data["rows"][: len(MODES)]:
        index = read_index(out / "work" / row["mode"])
        assert row["wm_bytes"] == sum(r["nbytes"] for s in index["records"] for r in s["records"])
    for row in data["rows"]:
        raw = row["raw"]
        assert len(raw) == data["runs"] * data["rounds"] == 2  # pooled over the rounds
        assert all(r["generated"] == data["gen_len"] and r["prompt_len"] == data["prompt_len"] for r in raw)
        assert row["decode_tok_s"] == pytest.approx(statistics.median((r["generated"] - 1) / r["decode_s"] for r in raw))
        assert row["prefill_tok_s"] == pytest.approx(statistics.median(r["prompt_len"] / r["prefill_s"] for r in raw))
    # Fewer bits, fewer bytes: the weight memory orders as the modes' widths do.
    wm = {r["mode"]: r["wm_bytes"] for r in data["rows"]}
    assert wm["q0f16"] > wm["q4f16_g128asym"] > wm["q2f16_g128asym"]
    hf, int4 = data["rows"][-2:]
    assert int4["wm_bytes"] < hf["wm_bytes"] / 2  # int4 linears; the float32 embedding stays


@pytest.mark.parametrize("mode", ["q0f16", "q4f16_1", "q3f16_1", "q3f16_g64asym", "q2f16_g128asym"])
def test_synthetic_weights_have_the_export_layout(tmp_path, mode):
    """Synthetic weights take exactly the shapes and dtypes a real export of that mode has."""
    from desv_export.bench.presets import SYNTHETIC

    cfg = SYNTHETIC["tiny"]
    wdir = write_synthetic("tiny", mode, tmp_path / mode)
    recs = {r["name"]: r for s in read_index(wdir)["records"] for r in s["records"]}
    m = get_mode(mode)
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * (h // cfg["num_attention_heads"])
    for name, (n, k) in {"model.layers.0.self_attn.qkv_proj": (qkv, h), "model.layers.1.mlp.down_proj": (h, i),
                         "model.layers.0.mlp.gate_up_proj": (2 * i, h)}.items():
        if m.quantized:
            for suffix, shape in m.shapes(n, k).items():
                assert recs[f"{name}.{suffix}"]["shape"] == list(shape)
        else:
            assert recs[f"{name}.weight"]["shape"] == [n, k] and recs[f"{name}.weight"]["dtype"] == "float16"
    assert "lm_head.weight" not in recs and not any(r.startswith("lm_head") for r in recs)  # tiny is tied
    cfg_json = json.loads((wdir / "mlc-chat-config.json").read_text())
    assert cfg_json["quantization"] == mode and cfg_json["model_config"]["hidden_size"] == h


def test_bad_input_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--synthetic", "tiny", "--modes", "q5f16_x", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "q5f16_x" in r.output and "(--modes)" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["bench", str(tmp_path / "missing"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "missing" in r.output
    r = CliRunner().invoke(main, ["bench", "--synthetic", "tiny", "--baselines", "hf,vllm", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--baselines vllm" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o" / "work" / "q0f16").exists()  # refused before any mode ran
