"""Text in, text out: tokenizer, the decode loop with stop conditions, and MLC's speed figures.

``Generator`` drives a ``ModelLibrary``: prefill the new prompt tokens (the KV cache may
already hold an earlier part of the conversation), then sample and decode one token at a time
until an end token, a stop string or ``max_new_tokens``. Text is streamed as it becomes
complete UTF-8. Speed is reported as MLC-LLM reports it (DESIGN.md section 3):
prefill tok/s = prompt tokens / time to first token; decode tok/s = (completion tokens - 1) /
(finish time - first token time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UserError
from .conversation import Conversation
from .library import ModelLibrary
from .sampler import Sampler, SamplingConfig


class Tokenizer:
    """HF ``tokenizers`` from the weight directory's tokenizer.json."""

    def __init__(self, weight_dir: Path) -> None:
        path = Path(weight_dir) / "tokenizer.json"
        if not path.is_file():
            raise UserError(
                f"{path} not found: generation needs the model's tokenizer.json in the weight "
                "directory (desv-export export copies it from the HF directory)"
            )
        from tokenizers import Tokenizer as HFTokenizer

        self.tok = HFTokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_seconds: float = 0.0  # request start -> first token
    decode_seconds: float = 0.0  # first token -> finish

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        n = self.completion_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"prefill: {self.prefill_tokens_per_s:.1f} tok/s ({self.prompt_tokens} tokens), "
            f"decode: {self.decode_tokens_per_s:.1f} tok/s ({self.completion_tokens} tokens)"
        )


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    # "stop": an end token or stop string; "length": max_new_tokens; "context": the KV cache
    # holds the whole context window, so the reply was cut before max_new_tokens (MLC calls
    # both "length"; a user who asked for more tokens needs to know which limit it was)
    finish_reason: str
    stats: GenerationStats = field(default_factory=GenerationStats)


def stop_token_ids(chat_config: dict, conv: Conversation | None, tokenizer: Tokenizer | None) -> set[int]:
    """End-of-generation ids: eos_token_id (int or list) and the template's stop tokens."""
    ids: set[int] = set()
    eos = chat_config.get("eos_token_id")
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(i) for i in eos)
    if conv is not None:
        ids.update(conv.stop_token_ids)
    return ids


class Generator:
    """One model library, its tokenizer and template; remembers which tokens the KV cache holds."""

    def __init__(self, lib: ModelLibrary, tokenizer: Tokenizer) -> None:
        self.lib = lib
        self.tokenizer = tokenizer
        self.chat_config = lib.weight_dir.chat_config
        template = self.chat_config.get("conv_template")
        self.conversation = Conversation(template) if isinstance(template, dict) else None
        self.stop_ids = stop_token_ids(self.chat_config, self.conversation, tokenizer)
        self.stop_strs = self.conversation.stop_str if self.conversation else []
        self.cached: list[int] = []  # token ids whose K/V the cache holds, in order

    @classmethod
    def open(cls, weight_dir: Path, model_lib: Path, device: str = "auto") -> "Generator":
        tokenizer = Tokenizer(weight_dir)  # fail on a missing tokenizer before loading the lib
        return cls(ModelLibrary(weight_dir, model_lib, device), tokenizer)

    def reset(self) -> None:
        self.lib.reset()
        self.cached = []
        if self.conversation is not None:
            self.conversation.reset()

    def _sync_cache(self, tokens: list[int]):
        """Make the cache hold ``tokens``: keep the common prefix, prefill the rest.

        Returns the logits of the last token. When nothing new is left (the whole prompt is
        cached), the last token is popped and re-fed so its logits exist.
        """
        common = _common_prefix(self.cached, tokens)
        if common == len(tokens):
            common -= 1
        self.lib.pop(len(self.cached) - common)
        self.cached = self.cached[:common]
        logits = self.lib.prefill(tokens[common:])
        self.cached = list(tokens)
        return logits

    def generate_ids(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig,
        on_text: Callable[[str], None] | None = None,
        stop: Sequence[str] = (),
    ) -> GenerationResult:
        """Continue the cached sequence with ``prompt_ids`` (the full token sequence to condition on).

        ``stop``: stop strings beyond the conversation template's (chat's ``/set stop=...``)."""
        if not prompt_ids:
            raise UserError("the prompt is empty after tokenization")
        if max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        stops = self.stop_strs + [x for x in stop if x]
        sampler = Sampler(sampling)
        stats = GenerationStats()
        new_prompt = len(prompt_ids) - _common_prefix(self.cached, prompt_ids)
        stats.prompt_tokens = max(new_prompt, 1)
        t0 = time.perf_counter()
        logits = self._sync_cache(prompt_ids)
        out: list[int] = []
        emitted = ""  # text already streamed
        finish = "length"
        sampled = 0
        t_first = None
        room = self.lib.context_window_size - len(self.cached)
        limit = min(max_new_tokens, max(room, 0) + 1)
        while True:
            token = sampler(logits, prompt_ids + out if sampling.repetition_penalty != 1.0 else None)
            sampled += 1
            if t_first is None:
                t_first = time.perf_counter()
            if token in self.stop_ids:
                finish = "stop"
                break
            out.append(token)
            text = self.tokenizer.decode(out)
            stop_at = _find_stop(text, stops)
            if stop_at is not None:
                finish = "stop"
                break
            # Stream only complete characters and nothing that could start a stop string.
            safe = _stream_safe(text, stops)
            if on_text is not None and len(safe) > len(emitted) and safe.startswith(emitted):
                on_text(safe[len(emitted):])
                emitted = safe
            if len(out) >= limit:
                finish = "length" if limit == max_new_tokens else "context"
                break
            logits = self.lib.decode(token)
            self.cached.append(token)
        t_end = time.perf_counter()
        stats.completion_tokens = sampled
        stats.prefill_seconds = (t_first or t_end) - t0
        stats.decode_seconds = t_end - (t_first or t_end)
        text = self.tokenizer.decode(out)
        stop_at = _find_stop(text, stops)
        if stop_at is not None:
            text = text[:stop_at]
        if on_text is not None and len(text) > len(emitted) and text.startswith(emitted):
            on_text(text[len(emitted):])
        return GenerationResult(text, out, finish, stats)

    def context_notice(self, result: GenerationResult) -> str | None:
        """The line to tell the user when the context window, not --max-new-tokens, cut a reply."""
        if result.finish_reason != "context":
            return None
        return (f"stopped after {len(result.token_ids)} tokens: the context window "
                f"({self.lib.context_window_size} tokens) is full; compile with a larger "
                f"--context-window-size")

    # --- text level ----------------------------------------------------------------------------
    def prompt_ids(self, text: str, *, use_template: bool = True) -> list[int]:
        """Token ids of a fresh single-turn prompt (the template applied unless told not to)."""
        if use_template and self.conversation is not None:
            conv = Conversation(self.conversation.template)
            conv.add("user", text)
            conv.add("assistant", None)
            return conv.system_prefix_token_ids + self.tokenizer.encode(conv.as_prompt())
        return self.tokenizer.encode(text)

    def complete(self, prompt: str, *, use_template: bool = True, **kw) -> GenerationResult:
        """Single-turn generation from an empty cache."""
        self.reset()
        return self.generate_ids(self.prompt_ids(prompt, use_template=use_template), **kw)

    def chat(self, user_message: str, **kw) -> GenerationResult:
        """One chat turn: the history stays in the conversation and its tokens in the KV cache."""
        if self.conversation is None:
            raise UserError("mlc-chat-config.json has no conv_template; re-export the model for chat")
        conv = self.conversation
        conv.add("user", user_message)
        conv.add("assistant", None)
        ids = conv.system_prefix_token_ids + self.tokenizer.encode(conv.as_prompt())
        try:
            result = self.generate_ids(ids, **kw)
        except BaseException:
            conv.messages = conv.messages[:-2]
            raise
        conv.messages[-1] = ("assistant", result.text)
        return result


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _stream_safe(text: str, stops: list[str]) -> str:
    """Drop a trailing partial UTF-8 character and any suffix that may begin a stop string."""
    text = text.rstrip("\ufffd")
    cut = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                cut = min(cut, len(text) - k)
                break
    return text[:cut]
