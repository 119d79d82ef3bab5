"""Choosing the next token from float32 logits: greedy, temperature, top-p, repetition penalty.

Done in numpy on the host: one vocabulary row per step is cheap next to the forward pass, and
the same code then serves every target. Semantics follow MLC-LLM's (and HF's): a temperature
at or below 1e-5 is greedy; the repetition penalty divides positive and multiplies negative
logits of tokens already seen (prompt and output); top-p keeps the smallest set of most likely
tokens whose probability reaches p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GREEDY_TEMPERATURE = 1e-5


@dataclass
class SamplingConfig:
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        from ..errors import UserError

        if self.temperature < 0:
            raise UserError("--temperature must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise UserError("--top-p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise UserError("--repetition-penalty must be > 0")
        if self.seed is not None and self.seed < 0:
            raise UserError("--seed must be >= 0 (numpy's generators take no negative seed)")


class Sampler:
    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray, seen: list[int] | None = None) -> int:
        cfg = self.config
        logits = np.asarray(logits, dtype=np.float32)
        if cfg.repetition_penalty != 1.0 and seen:
            logits = logits.copy()
            ids = np.unique(np.asarray(seen, dtype=np.int64))
            vals = logits[ids]
            logits[ids] = np.where(vals > 0, vals / cfg.repetition_penalty, vals * cfg.repetition_penalty)
        if cfg.temperature <= GREEDY_TEMPERATURE:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / cfg.temperature
        z -= z.max()
        probs = np.exp(z)
        probs /= probs.sum()
        if cfg.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, cfg.top_p) + 1)]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(probs.size, p=probs))
