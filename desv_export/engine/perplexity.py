"""Perplexity through a compiled model library (CONTRACT 4).

Same protocol as ``calib.evaluate.perplexity`` (GPTQ/OmniQuant): each window is an independent
sequence (fresh KV cache), ppl = exp(sum of token NLLs / number of predicted tokens), where
position t predicts token t+1. Logits of every position come from the library's
``batch_verify`` (prefilled in chunks of prefill_chunk_size through the KV cache), so this
measures exactly what chat/generate run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import UserError
from .library import ModelLibrary


def window_nll(lib: ModelLibrary, tokens: list[int]) -> tuple[float, int]:
    """(sum of NLLs, predicted tokens) of one window, in float64."""
    lib.reset()
    logits = lib.prefill(tokens, all_logits=True).astype(np.float64)[:-1]
    target = np.asarray(tokens[1:])
    m = logits.max(axis=-1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=-1)))
    return float((lse - logits[np.arange(len(target)), target]).sum()), len(target)


def library_perplexity(weight_dir: Path, model_lib: Path, token_windows: list[list[int]], device: str = "cpu",
                       progress: bool = False, desc: str = "eval") -> float:
    """Perplexity of the windows under WEIGHT_DIR's model compiled as MODEL_LIB.

    ``progress`` shows a bar over the windows (WikiText-2's test split is ~140 windows of 2048
    tokens: minutes on a CPU), as the torch path of ``desv-export eval`` does."""
    from tqdm.auto import tqdm

    windows = [list(map(int, w)) for w in token_windows if len(w) >= 2]
    if not windows:
        raise UserError("perplexity needs at least one window of 2 or more tokens")
    lib = ModelLibrary(weight_dir, model_lib, device)
    longest = max(len(w) for w in windows)
    if longest > lib.context_window_size:
        raise UserError(
            f"evaluation windows of {longest} tokens exceed the library's context window "
            f"({lib.context_window_size}); compile with --context-window-size {longest} or use shorter windows"
        )
    total, count = 0.0, 0
    for w in tqdm(windows, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        nll, n = window_nll(lib, w)
        total += nll
        count += n
    return math.exp(total / count)
