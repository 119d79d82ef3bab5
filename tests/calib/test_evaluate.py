"""Perplexity on the tiny model: the CLI, the protocol, and a calibrated checkpoint."""

import json
import math

import torch

from calib.data import load_eval
from calib.evaluate import perplexity
from calib.model import load_model, load_tokenizer

from .conftest import cli


def test_eval_cli_json_matches_direct_computation(tiny_llama_dir):
    res = cli("eval", tiny_llama_dir, "--dataset", "ptb", "--seqlen", "64", "--max-windows", "3", "--json", "--quiet")
    assert res.exit_code == 0, res.output
    ppl = json.loads(res.stdout.strip().splitlines()[-1])["ptb"]
    model, _ = load_model(tiny_llama_dir)
    windows = load_eval(load_tokenizer(tiny_llama_dir), "ptb", 64, 3)
    nll = 0.0
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([w])
            nll += model(input_ids=ids, labels=ids).loss.item() * 63  # HF mean over 63 predictions
    assert math.isclose(ppl, math.exp(nll / (3 * 63)), rel_tol=1e-4)
    assert math.isclose(ppl, perplexity(model, windows, torch.device("cpu"), progress=False), rel_tol=1e-9)
    assert 1 < ppl < 1000


def test_eval_calibrated_checkpoint(tiny_desv_ckpt, tiny_llama_dir):
    args = ["--dataset", "ptb", "--seqlen", "64", "--max-windows", "2", "--json", "--quiet"]
    q = json.loads(cli("eval", tiny_desv_ckpt, *args).stdout.strip().splitlines()[-1])["ptb"]
    fp = json.loads(cli("eval", tiny_llama_dir, *args).stdout.strip().splitlines()[-1])["ptb"]
    assert math.isfinite(q) and q != fp


def test_eval_human_output(tiny_llama_dir):
    res = cli("eval", tiny_llama_dir, "--dataset", "ptb", "--seqlen", "32", "--max-windows", "2", "--quiet")
    assert res.exit_code == 0 and "ptb: perplexity" in res.stdout and "2 windows x 32 tokens" in res.stdout
