"""The ``conv_template`` of mlc-chat-config.json, recognised from the model's own chat template.

MLC-LLM's runtime builds prompts from a ``Conversation`` object (mlc_llm/protocol/
conversation_protocol.py), written as ``Conversation.to_json_dict()`` (pydantic dump with
``exclude_none``). We write the same fields, and choose the template from the model's Jinja
chat template (tokenizer_config.json ``chat_template`` or chat_template.jinja):

* ``<|im_start|>``: ChatML (SmolLM2, the tiny test models). If the template injects a default
  system prompt (SmolLM2 does), it is rendered out of the template and kept, as "chatml";
  otherwise "chatml_nosystem". Stop on ``<|im_end|>``.
* ``<|start_header_id|>``: MLC's "llama-3"; ``[INST]``: MLC's "llama-2".
* anything else, or no chat template: MLC's plain "LM" template (no roles, no separators).

Token ids (stop tokens, the BOS prefix) come from this tokenizer, not from MLC's registry, whose
ids belong to the original models.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .tokenizer_info import load_tokenizer_json

SYSTEM = "{system_message}"


@dataclass
class Conversation:
    """MLC-LLM's Conversation fields, in its order; ``None`` fields are left out of the JSON."""

    name: str
    system_template: str = SYSTEM
    system_message: str = ""
    system_prefix_token_ids: list[int] | None = None
    add_role_after_system_message: bool = True
    roles: dict[str, str] = field(default_factory=dict)
    role_templates: dict[str, str] = field(
        default_factory=lambda: {
            "user": "{user_message}",
            "assistant": "{assistant_message}",
            "tool": "{tool_message}",
        }
    )
    messages: list = field(default_factory=list)
    seps: list[str] = field(default_factory=lambda: [""])
    role_content_sep: str = ""
    role_empty_sep: str = ""
    stop_str: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    strip_reasoning_in_history: bool = False
    function_string: str = ""
    use_function_calling: bool = False

    def to_json_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def read_chat_template(model_dir: Path) -> str | None:
    """The model's default Jinja chat template, or None."""
    model_dir = Path(model_dir)
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = model_dir / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    tmpl = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(tmpl, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default") or next(iter(named.values()), None)
    return tmpl if isinstance(tmpl, str) else None


class _Vocab:
    """Token string -> id from tokenizer.json (added tokens first, then the model vocab)."""

    def __init__(self, model_dir: Path) -> None:
        self.ids: dict[str, int] = {}
        tok = load_tokenizer_json(model_dir)
        if tok is not None:
            vocab = (tok.get("model") or {}).get("vocab")
            if isinstance(vocab, dict):
                self.ids.update(vocab)
            for t in tok.get("added_tokens") or []:
                self.ids[t["content"]] = t["id"]

    def get(self, token: str) -> int | None:
        return self.ids.get(token)


def _as_list(x: int | list[int] | None) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in (x if isinstance(x, list) else [x])]


def _render_default_system(template: str) -> str | None:
    """The system message a ChatML template inserts when the chat has none, else None."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg: str) -> None:
            raise ValueError(msg)

        env.globals["raise_exception"] = raise_exception
        text = env.from_string(template).render(
            messages=[{"role": "user", "content": "\x00USER\x00"}],
            add_generation_prompt=True,
            bos_token="",
            eos_token="",
        )
    except Exception:  # an exotic template: fall back to no default system prompt
        return None
    head = text.split("<|im_start|>user", 1)[0]
    m = re.fullmatch(r"\s*<\|im_start\|>system\n(.*)<\|im_end\|>\n?", head, flags=re.S)
    return m.group(1) if m else None


def conversation_for(model_dir: Path, bos_token_id: int | None, eos_token_id: int | list[int] | None) -> Conversation:
    """The Conversation MLC-LLM should use for the model in ``model_dir``."""
    template = read_chat_template(model_dir) or ""
    vocab = _Vocab(model_dir)
    eos = _as_list(eos_token_id)
    bos = [bos_token_id] if bos_token_id is not None else None

    def stops(*tokens: str) -> list[int]:
        ids = [vocab.get(t) for t in tokens]
        out = [i for i in ids if i is not None]
        return out + [i for i in eos if i not in out]

    if "<|im_start|>" in template:
        system = _render_default_system(template)
        conv = Conversation(
            name="chatml" if system is not None else "chatml_nosystem",
            roles={"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
            seps=["<|im_end|>\n"],
            role_content_sep="\n",
            role_empty_sep="\n",
            stop_str=["<|im_end|>"],
            stop_token_ids=stops("<|im_end|>"),
        )
        if system is not None:
            conv.system_template = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            conv.system_message = system
        return conv
    if "<|start_header_id|>" in template:
        return Conversation(
            name="llama-3",
            system_template=f"<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}<|eot_id|>",
            system_message="You are a helpful, respectful and honest assistant.",
            system_prefix_token_ids=bos,
            roles={"user": "<|start_header_id|>user", "assistant": "<|start_header_id|>assistant"},
            seps=["<|eot_id|>"],
            role_content_sep="<|end_header_id|>\n\n",
            role_empty_sep="<|end_header_id|>\n\n",
            stop_str=["<|end_of_text|>", "<|eot_id|>"],
            stop_token_ids=stops("<|end_of_text|>", "<|eot_id|>"),
        )
    if "[INST]" in template:
        return Conversation(
            name="llama-2",
            system_template=f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n",
            system_message="You are a helpful, respectful and honest assistant.",
            system_prefix_token_ids=bos,
            add_role_after_system_message=False,
            roles={"user": "<s>[INST]", "assistant": "[/INST]", "tool": "[INST]"},
            seps=[" ", " </s>"],
            role_content_sep=" ",
            role_empty_sep=" ",
            stop_str=["[INST]"],
            stop_token_ids=stops(),
        )
    return Conversation(
        name="LM",
        system_prefix_token_ids=bos,
        roles={"user": "", "assistant": ""},
        stop_token_ids=stops(),
    )
