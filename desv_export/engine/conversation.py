"""Rendering MLC-LLM's ``conv_template`` (the Conversation JSON in mlc-chat-config.json).

The export side (``desv_export.mlc.conv_template``) chooses and writes the template; this turns
a template plus a message history into prompt text exactly as MLC-LLM's
``Conversation.as_prompt`` does for text messages: system part, then per message
``role + role_content_sep + content + sep`` (sep[1] after assistant turns when two are given),
and the pending assistant turn as ``role + role_empty_sep``.
"""

from __future__ import annotations

import copy

PLACEHOLDERS = {
    "system": "{system_message}",
    "user": "{user_message}",
    "assistant": "{assistant_message}",
    "tool": "{tool_message}",
    "function": "{function_string}",
}


class Conversation:
    def __init__(self, template: dict) -> None:
        self.template = copy.deepcopy(template)
        self.messages: list[tuple[str, str | None]] = list(
            (m[0], m[1]) for m in self.template.get("messages", [])
        )

    # Template fields, with MLC's defaults.
    def _get(self, key: str, default):
        value = self.template.get(key)
        return default if value is None else value

    @property
    def stop_str(self) -> list[str]:
        return list(self._get("stop_str", []))

    @property
    def stop_token_ids(self) -> list[int]:
        return list(self._get("stop_token_ids", []))

    @property
    def system_prefix_token_ids(self) -> list[int]:
        return list(self._get("system_prefix_token_ids", []))

    def add(self, role: str, content: str | None) -> None:
        self.messages.append((role, content))

    def reset(self) -> None:
        self.messages = list((m[0], m[1]) for m in self.template.get("messages", []))

    def as_prompt(self) -> str:
        roles: dict[str, str] = self._get("roles", {})
        role_templates = {
            "user": PLACEHOLDERS["user"],
            "assistant": PLACEHOLDERS["assistant"],
            "tool": PLACEHOLDERS["tool"],
            **self._get("role_templates", {}),
        }
        seps = list(self._get("seps", [""])) or [""]
        if len(seps) == 1:
            seps.append(seps[0])
        system = self._get("system_template", PLACEHOLDERS["system"]).replace(
            PLACEHOLDERS["system"], self._get("system_message", "")
        )
        content_sep = self._get("role_content_sep", "")
        empty_sep = self._get("role_empty_sep", "")
        role_after_system = self._get("add_role_after_system_message", True)

        parts = [system] if system else []
        for i, (role, content) in enumerate(self.messages):
            if role not in roles:
                raise ValueError(f"role {role!r} is not in the conversation template ({', '.join(roles)})")
            if content is None:
                parts.append(roles[role] + empty_sep)
                continue
            prefix = "" if (not role_after_system and system and i == 0) else roles[role] + content_sep
            body = role_templates[role].replace(PLACEHOLDERS[role], content)
            parts.append(prefix + body + seps[role == "assistant"])
        prompt = "".join(parts)
        function_string = self._get("function_string", "")
        head, sep, tail = prompt.rpartition(PLACEHOLDERS["function"])
        if sep:
            prompt = head + function_string + tail
        return prompt.replace(PLACEHOLDERS["function"], "")
