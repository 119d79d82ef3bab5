"""Perplexity in torch (GPTQ/OmniQuant protocol, DESIGN.md section 4).

A calibrated checkpoint is evaluated as the HF model it is: its weights are already the
fake-quantized grid values w_hat, so loading it *is* fake-quant inference. Windows come from
``calib.data.eval_windows``; ppl = exp(sum of token NLLs / number of predicted tokens), each
window scored on its own (no context carried over), as GPTQ does.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model, windows: list[list[int]], device: torch.device, progress: bool = True, desc: str = "eval") -> float:
    from tqdm.auto import tqdm

    nll, count = 0.0, 0
    ctx = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for w in tqdm(windows, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        ids = torch.tensor([w], dtype=torch.long, device=device)
        with ctx:
            logits = model(input_ids=ids, use_cache=False).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(nll / count)
