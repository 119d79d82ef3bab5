"""``tokenizer_info`` of mlc-chat-config.json, detected from tokenizer.json as MLC-LLM does.

MLC-LLM's runtime post-processes token strings with these three flags, so they must be what
its own detector (cpp/tokenizers/tokenizers.cc ``Tokenizer::DetectTokenizerInfo``) would write:

* ``token_postproc_method``: "byte_level" if the ``decoder`` (or any decoder of a
  ``Sequence``; the last one found wins) is ``ByteLevel``, "byte_fallback" if it is
  ``ByteFallback``; "byte_fallback" when there is no decoder or neither is found.
* ``prepend_space_in_encode``: a ``normalizer`` (or one in a ``Sequence``) of type
  ``Prepend`` with ``prepend == "\u2581"``.
* ``strip_space_in_decode``: a decoder (or one in a ``Sequence``) of type ``Strip`` with
  ``content == " "``, ``start == 1`` and ``stop == 0``.

No tokenizer.json: MLC's defaults (byte_fallback, False, False).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

DEFAULT = {
    "token_postproc_method": "byte_fallback",
    "prepend_space_in_encode": False,
    "strip_space_in_decode": False,
}


def load_tokenizer_json(tokenizer_dir: Path) -> dict | None:
    """Parsed tokenizer.json of ``tokenizer_dir`` (None without one), parsed once per file
    version: a real one is megabytes and three parts of the chat config read it."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    st = path.stat()
    return _parse(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _parse(path: str, mtime_ns: int, size: int) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _members(node: object, list_key: str) -> list[dict]:
    """A component, or the members of a ``Sequence`` component, as a list of dicts."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [m for m in node.get(list_key) or [] if isinstance(m, dict)]
    return [node]


def detect_tokenizer_info(tokenizer_dir: Path) -> dict:
    """The three flags for the tokenizer.json in ``tokenizer_dir`` (MLC's defaults without one)."""
    info = dict(DEFAULT)
    tok = load_tokenizer_json(tokenizer_dir)
    if tok is None:
        return info

    decoders = _members(tok.get("decoder"), "decoders")
    for dec in decoders:  # no early exit: the last match wins, as in MLC
        if dec.get("type") == "ByteLevel":
            info["token_postproc_method"] = "byte_level"
        elif dec.get("type") == "ByteFallback":
            info["token_postproc_method"] = "byte_fallback"

    for norm in _members(tok.get("normalizer"), "normalizers"):
        if norm.get("type") == "Prepend" and norm.get("prepend") == "\u2581":
            info["prepend_space_in_encode"] = True
            break

    for dec in decoders:
        if (
            dec.get("type") == "Strip"
            and dec.get("content") == " "
            and _is_int(dec.get("start"), 1)
            and _is_int(dec.get("stop"), 0)
        ):
            info["strip_space_in_decode"] = True
            break
    return info


def _is_int(value: object, expected: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == expected
