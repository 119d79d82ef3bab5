"""Reading an MLC weight directory (CONTRACT 2) without TVM: config, tensor cache, tokenizer.

Shared by ``desv_export.compile`` (which builds the model from it) and the engine (which checks
a library against it), so both agree on what a directory holds. Pure Python + json: the
engine must run where only the TVM runtime is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..mlc.chat_config import read_chat_config
from ..mlc.tensor_cache import INDEX_FILE, read_index


@dataclass(frozen=True)
class ParamRecord:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class WeightDir:
    path: Path
    chat_config: dict
    params: dict[str, ParamRecord]  # name -> record, in tensor-cache order

    @property
    def quantization(self) -> str:
        return self.chat_config.get("quantization", "q0f16")

    @property
    def embedding_quantized(self) -> bool:
        """The exporter decides; the tensor cache says (q_weight present or not)."""
        return "model.embed_tokens.q_weight" in self.params


def read_weight_dir(path: Path) -> WeightDir:
    """Parse mlc-chat-config.json and tensor-cache.json, or raise a one-line UserError."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; pass an MLC weight directory (desv-export export)")
    chat_config = read_chat_config(path)
    params: dict[str, ParamRecord] = {}
    for shard in read_index(path)["records"]:
        for rec in shard.get("records", []):
            params[rec["name"]] = ParamRecord(rec["name"], tuple(rec["shape"]), rec["dtype"])
    if not params:
        raise UserError(f"{path / INDEX_FILE} lists no parameters; re-export the model")
    return WeightDir(path, chat_config, params)


def check_params_match(weight_dir: WeightDir, lib_params: list[dict], lib_name: str) -> None:
    """Compare a library's ``_metadata`` params with the tensor cache; name the first mismatch."""
    where = f"{lib_name} does not match {weight_dir.path}"
    expected = {p["name"]: p for p in lib_params}
    missing = [n for n in expected if n not in weight_dir.params]
    if missing:
        raise UserError(
            f"{where}: the weight directory lacks {missing[0]} ({len(missing)} missing); "
            "compile the library from this weight directory (desv-export compile)"
        )
    for name, p in expected.items():
        rec = weight_dir.params[name]
        if tuple(p["shape"]) != rec.shape or p["dtype"] != rec.dtype:
            raise UserError(
                f"{where}: {name} is {p['dtype']}{list(p['shape'])} in the library but "
                f"{rec.dtype}{list(rec.shape)} in tensor-cache.json; compile the library from "
                "this weight directory (desv-export compile)"
            )
