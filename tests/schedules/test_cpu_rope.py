"""The llvm RoPE kernel equals TVM's ``fused_rope`` bit for bit, and the pass swaps it in only
when it is told the model's RoPE (theta) and the variant is one it covers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tvm
from tvm.relax.frontend.nn.llm.position_embedding import llama_rope_with_position_map

from desv_export.compile import host_cpu_target
from tvm_schedules.cpu.attention import UseFastCPUAttention
from tvm_schedules.cpu.rope import NAME, fast_rope_cpu

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def _compiled(func) -> Callable:
    mod = tvm.IRModule({NAME: func.with_attr("global_symbol", NAME)})
    return tvm.compile(mod, target=host_cpu_target())[NAME]


def _run(kernel: Callable, qkv: np.ndarray, pos: np.ndarray, heads: tuple[int, int], apply: int) -> list[np.ndarray]:
    s, _, d = qkv.shape
    outs = [tvm.runtime.tensor(np.full((s, h, d), np.nan, "float32")) for h in (heads[0], heads[1], heads[1])]
    kernel(tvm.runtime.tensor(qkv), tvm.runtime.tensor(pos), *outs, apply)
    return [o.numpy() for o in outs]


@pytest.mark.parametrize(
    "theta, h_q, h_kv, d, scaling, rotary",
    [
        (10000.0, 9, 3, 64, {}, None),  # SmolLM2
        (500000.0, 4, 2, 32, LLAMA3, None),  # Llama-3 scaling
        (10000.0, 4, 2, 32, {}, 16),  # partial rotary: dims 16.. copied
        (10000.0, 2, 2, 16, {}, None),  # plain multi-head
    ],
)
def test_rope_equals_tvm(theta, h_q, h_kv, d, scaling, rotary) -> None:
    ours = _compiled(fast_rope_cpu(theta, 1.0, d, h_q, h_kv, "float32", scaling, rotary))
    tvms = _compiled(llama_rope_with_position_map(theta, 1.0, d, h_q, h_kv, "float32", scaling, rotary))
    rng = np.random.default_rng(0)
    for tokens in (1, 5, 67):  # decode, a short and a longer prefill (tokens across cores)
        qkv = rng.standard_normal((tokens, h_q + 2 * h_kv, d)).astype("float32")
        pos = rng.integers(0, 9000, tokens).astype("int32")
        for apply in (1, 0):
            got, want = _run(ours, qkv, pos, (h_q, h_kv), apply), _run(tvms, qkv, pos, (h_q, h_kv), apply)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
            if apply:  # it did rotate: q differs from the input where rotary dims are
                assert not np.array_equal(got[0][..., : rotary or d], qkv[:, :h_q, : rotary or d])
            else:
                np.testing.assert_array_equal(got[0], qkv[:, :h_q])
            np.testing.assert_array_equal(got[2], qkv[:, h_q + h_kv:])  # v: a copy


def test_rope_variants_it_does_not_cover() -> None:
    assert fast_rope_cpu(10000.0, 1.0, 32, 4, 2, "float32", {"rope_type": "gptj"}) is None
    assert fast_rope_cpu(10000.0, 1.0, 32, 4, 2, "float32", {}, rotary_dim=33) is None


def _module(scaling: dict) -> tvm.IRModule:
    func = llama_rope_with_position_map(10000.0, 1.0, 32, 4, 2, "float32", scaling)
    return tvm.IRModule({NAME: func.with_attr("global_symbol", NAME)})


def test_pass_swaps_rope_given_theta() -> None:
    mod = _module({})
    new = UseFastCPUAttention(rope_theta=10000.0)(mod)[NAME]
    assert not new.same_as(mod[NAME])
    assert new.attrs["global_symbol"] == NAME and bool(new.attrs["tirx.is_scheduled"])
    assert [str(p.ty) for p in new.params] == [str(p.ty) for p in mod[NAME].params]
    # without the model's theta (the pass cannot read it off the kernel) TVM's stays
    assert UseFastCPUAttention()(mod)[NAME].same_as(mod[NAME])
    # a variant the kernel does not cover stays too
    gptj = _module({"rope_type": "gptj"})
    assert UseFastCPUAttention({"rope_type": "gptj"}, rope_theta=10000.0)(gptj)[NAME].same_as(gptj[NAME])
