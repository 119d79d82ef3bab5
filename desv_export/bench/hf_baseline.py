"""The baselines users compare us with first: Hugging Face transformers' own ``generate``, as
is and with torch's int4 weight-only kernels swapped into its linears (``torch_int4``).

float32 on CPU (float16 matmuls are slow there), float16 with a static cache on CUDA. The same
prompt length, generation length and timing definitions as our engine's rows.
"""

from __future__ import annotations

from pathlib import Path

from .timing import Run, Timer, summarize


class _Stamps:
    """A transformers streamer that stamps each generated token (the first put is the prompt)."""

    def __init__(self, timer: Timer, sync) -> None:
        self.timer, self.sync, self.seen_prompt = timer, sync, False

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.sync()
        self.timer.token()

    def end(self) -> None:
        pass


def load_model(source: Path | dict, device: str):
    """From an HF directory, or random weights from a config dict (synthetic presets)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch.float16 if device == "cuda" else torch.float32
    if isinstance(source, dict):
        config = AutoConfig.for_model(**{k: v for k, v in source.items() if k != "architectures"})
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device)
    return model.eval()


def bench_hf(source: Path | dict, device: str, prompt_ids: list[int], gen_len: int, runs: int, warmup: int,
             int4: bool = False) -> dict:
    """Median prefill/decode tok/s of ``generate``; on CUDA also the allocator's peak memory.
    ``int4``: every linear through torch's int4 weight-only matmul first."""
    import torch

    model = load_model(source, device)
    groups = []
    if int4:
        from .torch_int4 import quantize_model

        groups = quantize_model(model, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ids = torch.tensor([prompt_ids], device=device)
    extra = {"cache_implementation": "static"} if device == "cuda" else {}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results: list[Run] = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            sync()
            timer = Timer(len(prompt_ids))
            model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen_len, min_new_tokens=gen_len,
                do_sample=False, streamer=_Stamps(timer, sync), pad_token_id=0, **extra,
            )
            if i >= warmup:
                results.append(timer.run())
    # Buffers count: the int4 rows keep their packed weights there.
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    out = {**summarize(results), "wm_bytes": weight_bytes,
           "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "int4_groups": groups}
    if device == "cuda":  # on CPU the worker measures the process (VmHWM)
        out |= {"rm_bytes": torch.cuda.max_memory_allocated(), "rm_method": "torch.cuda.max_memory_allocated"}
    return out
