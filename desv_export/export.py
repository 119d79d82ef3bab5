"""HF directory or calibrated checkpoint -> MLC-LLM weight directory, one tensor at a time.

The output (DESIGN.md section 3, CONTEXT.md contract 2) is what MLC-LLM's ``convert_weight`` +
``gen_config`` write for its Llama model: q/k/v fused into ``qkv_proj`` (rows q, k, v) and
gate/up into ``gate_up_proj`` (rows gate, up), ``lm_head`` absent when tied, norms (and Qwen2's
qkv bias) float16, linear weights stored per ``modes.QuantMode``.

Where the weights come from decides how they are quantized:

* a calibrated checkpoint (``quantization.json``, contract 1) keeps its grid exactly: the codes
  are recovered as ``round(w_hat / scale) + zero`` and checked to dequantize back to ``w_hat``
  bit for bit. Only the asymmetric mode of the calibration (same bits and group) is accepted,
  and ``q0f16`` (which exports ``w_hat`` itself); a linear the checkpoint does not list as
  quantized gets RTN;
* a plain HF directory with an asymmetric mode is quantized by round-to-nearest with
  ``calib.quantizer.quantize`` (the same maths as ``calibrate --method rtn``);
* ``q4f16_1`` / ``q3f16_1`` quantize an fp16 HF directory with MLC's own maths (``pack``).

The embedding and an untied ``lm_head`` are quantized or kept float16 by ``quantize_embedding``
(default per mode: MLC's presets quantize them, our asymmetric modes do not). Calibration never
touches them, so when quantized in an asymmetric mode they get RTN.

Memory: tensors are read by name from the memory-mapped safetensors (at most one fused group,
e.g. gate+up, is in memory) and streamed through TVM's shard writer, which buffers one shard.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from calib.checkpoint import QUANT_FILE, CalibratedCheckpoint, is_calibrated

from . import hf, pack
from .atomic import atomic_dir
from .errors import UserError
from .mlc import chat_config, tensor_cache
from .modes import QuantMode, get_mode

IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_RTN_BLOCK_ELEMS = 1 << 17


@dataclass(frozen=True)
class Target:
    """One MLC parameter (before the quantized suffixes) and the HF tensors that make it."""

    name: str  # e.g. model.layers.0.self_attn.qkv_proj
    sources: tuple[str, ...]  # HF weight names, concatenated along rows
    kind: str  # embedding | linear | lm_head | norm | bias


def plan(config: dict) -> list[Target]:
    """MLC Llama parameters in MLC's order, with their HF sources."""
    layers = config["num_hidden_layers"]
    out = [Target("model.embed_tokens", ("model.embed_tokens.weight",), "embedding")]
    bias = (config.get("architectures") or [""])[0] == "Qwen2ForCausalLM"
    for i in range(layers):
        p = f"model.layers.{i}"
        a, m = f"{p}.self_attn", f"{p}.mlp"
        out.append(Target(f"{a}.qkv_proj", tuple(f"{a}.{x}_proj.weight" for x in "qkv"), "linear"))
        if bias:
            out.append(Target(f"{a}.qkv_proj.bias", tuple(f"{a}.{x}_proj.bias" for x in "qkv"), "bias"))
        out.append(Target(f"{a}.o_proj", (f"{a}.o_proj.weight",), "linear"))
        out.append(Target(f"{m}.gate_up_proj", (f"{m}.gate_proj.weight", f"{m}.up_proj.weight"), "linear"))
        out.append(Target(f"{m}.down_proj", (f"{m}.down_proj.weight",), "linear"))
        out.append(Target(f"{p}.input_layernorm.weight", (f"{p}.input_layernorm.weight",), "norm"))
        out.append(Target(f"{p}.post_attention_layernorm.weight", (f"{p}.post_attention_layernorm.weight",), "norm"))
    out.append(Target("model.norm.weight", ("model.norm.weight",), "norm"))
    if not config.get("tie_word_embeddings", False):
        out.append(Target("lm_head", ("lm_head.weight",), "lm_head"))
    return out


class WeightSource(contextlib.ExitStack):
    """Random access by name to an HF directory's tensors (memory-mapped, nothing preloaded)."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self.where: dict[str, object] = {}
        for path in hf.weight_files(model_dir):
            if path.name == QUANT_FILE:
                continue
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                f = self.enter_context(safe_open(str(path), framework="pt"))
                for name in f.keys():
                    self.where[name] = f
            else:
                import torch

                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                for name in state:
                    self.where[name] = state

    def get(self, name: str) -> np.ndarray:
        holder = self.where.get(name)
        if holder is None:
            raise UserError(f"tensor {name} is missing from the model's weight files")
        import torch

        t = holder.get_tensor(name) if hasattr(holder, "get_tensor") else holder[name]
        return t.to(torch.float16).numpy()


def _rtn_asym(w: np.ndarray, mode: QuantMode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest on the min/max grid: the calibration quantizer without LWC.

    Rows are independent, so ``quantize`` runs on blocks of rows (temporaries stay in cache)
    on one torch thread (``pack.single_thread``); the result is identical to one call on the
    whole weight.
    """
    import torch

    from calib.quantizer import quantize

    n, k = w.shape
    ng = mode.num_groups(k)
    codes = np.empty((n, ng * mode.group_size), np.uint8)
    scale = np.empty((n, ng), np.float16)
    zero = np.empty((n, ng), np.uint8)
    rows = max(1, _RTN_BLOCK_ELEMS // k)
    src = torch.from_numpy(w)
    with pack.single_thread():
        for r0 in range(0, n, rows):
            q = quantize(src[r0 : r0 + rows], mode.bits, mode.group_size)
            codes[r0 : r0 + rows] = q.codes.numpy()
            scale[r0 : r0 + rows] = q.scale.numpy()
            zero[r0 : r0 + rows] = q.zero.numpy()
    return codes, scale, zero


class Converter:
    """Turns each ``Target`` into its stored tensors for one mode and source."""

    def __init__(self, mode: QuantMode, source: WeightSource, calib: CalibratedCheckpoint | None, quantize_embedding: bool):
        self.mode = mode
        self.source = source
        self.calib = calib
        self.quantize_embedding = quantize_embedding
        self.source_params = 0

    def _load(self, name: str) -> np.ndarray:
        w = self.source.get(name)
        self.source_params += w.size
        return w

    def _quantize_one(self, hf_name: str, w: np.ndarray, on_grid: bool) -> dict[str, np.ndarray]:
        mode = self.mode
        if mode.symmetric:
            return pack.quantize_pack_sym(w, mode)
        if on_grid:
            scale, zero = (t.numpy() for t in self.calib.grid(hf_name))
            try:
                codes = pack.codes_from_grid(w, scale, zero, mode)
            except ValueError as e:
                raise UserError(f"{hf_name} in the calibrated checkpoint: {e}") from None
        else:
            codes, scale, zero = _rtn_asym(w, mode)
        return pack.pack(mode, codes, scale, zero)

    def convert(self, t: Target) -> Iterator[tuple[str, np.ndarray]]:
        quantize = self.mode.quantized and (
            t.kind == "linear" or (t.kind in ("embedding", "lm_head") and self.quantize_embedding)
        )
        if not quantize:
            arrays = [self._load(s) for s in t.sources]
            w = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            yield (t.name if t.kind in ("norm", "bias") else f"{t.name}.weight"), w
            return
        parts = []
        for s in t.sources:
            on_grid = self.calib is not None and s in self.calib.quantized
            parts.append(self._quantize_one(s, self._load(s), on_grid))
        for suffix in parts[0]:
            yield f"{t.name}.{suffix}", np.concatenate([p[suffix] for p in parts], axis=0)


def _check_mode(mode: QuantMode, calib: CalibratedCheckpoint | None, src: Path) -> None:
    if calib is None or not mode.quantized:
        return
    if mode.symmetric or mode.bits != calib.bits or mode.group_size != calib.group_size:
        raise UserError(
            f"{src} was calibrated for {calib.mode_name} (bits {calib.bits}, group {calib.group_size}); "
            f"--quantization {mode.name} would discard that grid: use {calib.mode_name} (or q0f16), "
            "or export the original model"
        )


def export_model(
    src: Path,
    out: Path,
    mode: str,
    *,
    force: bool = False,
    quantize_embedding: bool | None = None,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> Path:
    """Write the MLC weight directory for ``src`` in ``mode`` to ``out`` (atomically); return it.

    ``progress`` wraps the iterator over parameters (the CLI passes a tqdm bar).
    """
    src, out = Path(src), Path(out)
    qmode = get_mode(mode)
    config = hf.read_config(src)
    calib = CalibratedCheckpoint(src) if is_calibrated(src) else None
    _check_mode(qmode, calib, src)
    if quantize_embedding is None:
        quantize_embedding = qmode.quantize_embedding_default
    if quantize_embedding and not qmode.quantized:
        raise UserError("--quantize-embedding needs a quantized --quantization mode (not q0f16)")
    targets = plan(config)

    with WeightSource(src) as source, atomic_dir(out, force) as tmp:
        _check_sources(source, targets, config, src)
        conv = Converter(qmode, source, calib, quantize_embedding)
        steps = progress(targets) if progress else targets

        def params() -> Iterator[tuple[str, np.ndarray]]:
            for t in steps:
                yield from conv.convert(t)

        tensor_cache.write_tensor_cache(params(), tmp, lambda: conv.source_params)
        hf.copy_tokenizer_files(src, tmp, with_side_files=False)
        chat_config.write_chat_config(src, config, qmode.name, tmp)
    return out


def _check_sources(source: WeightSource, targets: list[Target], config: dict, src: Path) -> None:
    """Every HF tensor is either used or known to be unused; every needed one exists."""
    needed = {s for t in targets for s in t.sources}
    missing = sorted(needed - set(source.where))
    if missing:
        raise UserError(f"{src}: tensor {missing[0]} is missing ({len(missing)} missing); is this a LLaMA-family checkpoint?")
    tied = config.get("tie_word_embeddings", False)
    extra = [
        n for n in source.where
        if n not in needed and not IGNORED.match(n) and not (tied and n == "lm_head.weight")
    ]
    if extra:
        raise UserError(f"{src}: tensor {extra[0]} has no place in MLC's Llama layout ({len(extra)} such tensors)")
