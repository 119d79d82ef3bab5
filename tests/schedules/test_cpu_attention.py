"""The fast llvm prefill / decode attention kernels agree with TVM's own, and the pass swaps them in.

Both kernels and TVM's originals (from the installed wheel) are compiled for small head counts
and run on random ragged batches, causal and not, with inline RoPE and without. The main cases
use 4 q heads / 2 KV heads / head_dim 32; a few more cover the other work-unit shapes
(SmolLM2's 9/3/64, plain multi-head, a group of 8).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import tirx
from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode_cpu
from tvm.relax.frontend.nn.llm._prefill_kernels import _attention_prefill_cpu, _attention_prefill_ragged_cpu

from desv_export.compile import host_cpu_target
from tvm_schedules.cpu import attention
from tvm_schedules.cpu.attention import (
    DECODE_NAME,
    PAGED_NAME,
    RAGGED_NAME,
    UseFastCPUAttention,
    fast_attention_decode_cpu,
    fast_attention_prefill_cpu,
    fast_attention_prefill_ragged_cpu,
)

HEADS = (2, 4, 32)  # (kv heads, q heads, head_dim) of the main cases
PAGE = 16
DTYPE = "float32"

_compiled: dict[tuple, Callable] = {}


def _kernel(kind: str, fast: bool, h_kv: int, h_q: int, d: int, host: bool = False) -> Callable:
    """Compiled once per session: kind is "ragged", "paged" or "decode"; ``host``: for this CPU
    (``-mcpu``, as a model library is built: AVX-512 where it has it), else baseline x86-64."""
    key = (kind, fast, h_kv, h_q, d, host)
    if key not in _compiled:
        if kind == "ragged":
            name = RAGGED_NAME
            make = fast_attention_prefill_ragged_cpu if fast else _attention_prefill_ragged_cpu
            func = make(h_kv, h_q, d, d, DTYPE, {})
        elif kind == "decode":
            name = DECODE_NAME
            if fast:
                func = fast_attention_decode_cpu(h_kv, h_q, d, DTYPE, {}, page_size=PAGE)
            else:
                func = _attention_decode_cpu(h_kv, h_q, d, DTYPE, False, {}, page_size=PAGE)
        else:
            name = PAGED_NAME
            if fast:
                func = fast_attention_prefill_cpu(h_kv, h_q, d, DTYPE, {}, page_size=PAGE)
            else:
                func = _attention_prefill_cpu(h_kv, h_q, d, DTYPE, False, {}, page_size=PAGE)
        mod = tvm.IRModule({name: func.with_attr("global_symbol", name)})
        _compiled[key] = tvm.compile(mod, target=host_cpu_target() if host else "llvm")[name]
    return _compiled[key]


def _indptr(lens: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _positions(q_lens: list[int], kv_lens: list[int]) -> np.ndarray:
    return np.concatenate([np.arange(kl - ql, kl) for ql, kl in zip(q_lens, kv_lens)]).astype(np.int32)


def _ragged_case(q_lens: list[int], kv_lens: list[int], heads: tuple[int, int, int], seed: int) -> list[np.ndarray]:
    h_kv, h_q, d = heads
    rng = np.random.default_rng(seed)
    qo, kv = sum(q_lens), sum(kv_lens)
    q = rng.standard_normal((qo, h_q, d)).astype(np.float32) * 2
    k = rng.standard_normal((kv, h_kv, d)).astype(np.float32) * 2
    v = rng.standard_normal((kv, h_kv, d)).astype(np.float32)
    k_off = np.arange(len(q_lens), dtype=np.int32)  # k_rope_pos_offset
    return [q, _indptr(q_lens), k, v, _indptr(kv_lens), _positions(q_lens, kv_lens), k_off]


def _paged_case(q_lens: list[int], kv_lens: list[int], heads: tuple[int, int, int], seed: int) -> list[np.ndarray]:
    """Each sequence's KV in pages of a shuffled page pool that has unused pages too."""
    h_kv, h_q, d = heads
    rng = np.random.default_rng(seed)
    n_pages = [max(1, -(-n // PAGE)) for n in kv_lens]
    pool = sum(n_pages) + 3
    pages = rng.standard_normal((pool, 2, h_kv, PAGE, d)).astype(np.float32)
    page_values = rng.permutation(pool)[: sum(n_pages)].astype(np.int32)
    last_page_len = np.array([n - (p - 1) * PAGE for n, p in zip(kv_lens, n_pages)], np.int32)
    q = rng.standard_normal((sum(q_lens), h_q, d)).astype(np.float32) * 2
    k_off = np.arange(len(q_lens), dtype=np.int32)
    return [q, _indptr(q_lens), pages, _indptr(n_pages), page_values, last_page_len, k_off, _positions(q_lens, kv_lens)]


def _compare(
    kind: str, heads: tuple[int, int, int], q_lens: list[int], kv_lens: list[int], causal: int, rotary_mode: int
) -> None:
    case = _ragged_case if kind == "ragged" else _paged_case
    arrays = case(q_lens, kv_lens, heads, seed=sum(q_lens) + 7 * sum(kv_lens) + causal)
    _, h_q, d = heads
    dev = tvm.cpu()
    results = []
    for fast in (False, True):
        out = tvm.runtime.tensor(np.full((sum(q_lens), h_q, d), np.nan, np.float32), dev)
        lse = tvm.runtime.tensor(np.full((sum(q_lens), h_q), np.nan, np.float32), dev)
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
        _kernel(kind, fast, *heads)(*args, out, lse, causal, rotary_mode, 1.0, 10000.0, 1.0 / math.sqrt(d))
        results.append((out.numpy(), lse.numpy()))
    (o_ref, l_ref), (o_new, l_new) = results
    np.testing.assert_allclose(o_new, o_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l_new, l_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize(
    ("q_lens", "kv_lens"),
    # the last: causal rows 0 and 1 see no key at all (TVM's kernel then averages all values)
    [([7], [7]), ([33], [33]), ([33], [70]), ([7, 33], [7, 40]), ([5, 1, 66], [9, 1, 66]), ([5], [3])],
)
def test_ragged_matches_tvm(causal: int, q_lens: list[int], kv_lens: list[int]) -> None:
    _compare("ragged", HEADS, q_lens, kv_lens, causal, rotary_mode=0)


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize(("q_lens", "kv_lens"), [([7], [7]), ([33], [50]), ([4, 1, 20], [19, 1, 36])])
def test_paged_matches_tvm(causal: int, q_lens: list[int], kv_lens: list[int]) -> None:
    _compare("paged", HEADS, q_lens, kv_lens, causal, rotary_mode=0)


def _compare_decode(
    heads: tuple[int, int, int], kv_lens: list[int], rotary_mode: int, host: bool = False, sm_scale: float | None = None
) -> None:
    """One query per sequence over its whole paged KV (a shuffled pool with unused pages)."""
    _, h_q, d = heads
    q_lens = [1] * len(kv_lens)
    q, _, pages, page_indptr, page_values, last_page_len, k_off, _ = _paged_case(
        q_lens, kv_lens, heads, seed=11 * sum(kv_lens) + rotary_mode
    )
    q_pos = np.array([n - 1 for n in kv_lens], np.int32)
    scale = 1.0 / math.sqrt(d) if sm_scale is None else sm_scale
    dev = tvm.cpu()
    results = []
    for fast in (False, True):
        out = tvm.runtime.tensor(np.full((len(kv_lens), h_q, d), np.nan, np.float32), dev)
        lse = tvm.runtime.tensor(np.full((len(kv_lens), h_q), np.nan, np.float32), dev)
        arrays = [q, pages, page_indptr, page_values, last_page_len, k_off, q_pos]
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
        _kernel("decode", fast, *heads, host=host)(*args, out, lse, rotary_mode, 1.0, 10000.0, scale)
        results.append((out.numpy(), lse.numpy()))
    (o_ref, l_ref), (o_new, l_new) = results
    np.testing.assert_allclose(o_new, o_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l_new, l_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("host", [False, True], ids=["x86-64", "host"])
@pytest.mark.parametrize("rotary_mode", [0, 1])
# 1 sequence; 3 of lengths not a page multiple, a page multiple (32) and a single key
@pytest.mark.parametrize("kv_lens", [[37], [70, 32, 1]])
def test_decode_matches_tvm(rotary_mode: int, kv_lens: list[int], host: bool) -> None:
    _compare_decode(HEADS, kv_lens, rotary_mode, host=host)


@pytest.mark.parametrize("host", [False, True], ids=["x86-64", "host"])
@pytest.mark.parametrize("heads", [(3, 9, 64), (2, 2, 32), (1, 8, 32)], ids=["smollm2", "mha", "group8"])
def test_decode_other_head_layouts(heads: tuple[int, int, int], host: bool) -> None:
    _compare_decode(heads, [140, 16, 5], rotary_mode=0, host=host)


@pytest.mark.parametrize("rotary_mode", [0, 1])
def test_decode_splits_long_contexts(rotary_mode: int) -> None:
    """Past _PART_KEYS keys the decode kernel splits each unit's keys into parts of whole pages
    and merges the parts' softmax sums. The batch's longest sequence (1100 keys) sets 3 parts for
    every sequence: 600 keys make 3 parts of 208, 208 and 184 keys, 5 keys a part of 5 and two
    empty ones. Inline RoPE checks each part's key positions."""
    assert 600 > attention._PART_KEYS and 1100 <= 3 * attention._PART_KEYS
    _compare_decode((3, 9, 64), [1100, 5, 600], rotary_mode=rotary_mode, host=True)


def test_decode_softmax_over_a_wide_score_range() -> None:
    """Scores spread over hundreds (in log2 units), so the decode kernel's polynomial exp2
    meets arguments far below -126, where it returns 0 and libm's exp2f a denormal or 0."""
    _compare_decode((3, 9, 64), [300, 77], rotary_mode=0, host=True, sm_scale=4.0)


@pytest.mark.parametrize("kind", ["ragged", "paged"])
def test_inline_rope_matches_tvm(kind: str) -> None:
    _compare(kind, HEADS, [6, 20], [10, 37], causal=1, rotary_mode=1)


@pytest.mark.parametrize("kind", ["ragged", "paged"])
@pytest.mark.parametrize("heads", [(3, 9, 64), (2, 2, 32), (1, 8, 32)], ids=["smollm2", "mha", "group8"])
def test_other_head_layouts(kind: str, heads: tuple[int, int, int]) -> None:
    _compare(kind, heads, [20, 3], [20, 140], causal=1, rotary_mode=0)


# --- the pass ------------------------------------------------------------------------------------


def _original_module() -> tvm.IRModule:
    h_kv, h_q, d = HEADS
    target = tvm.target.Target("llvm")
    ragged = _attention_prefill_ragged_cpu(h_kv, h_q, d, d, DTYPE, {})
    paged = _attention_prefill_cpu(h_kv, h_q, d, DTYPE, False, {}, page_size=PAGE)
    decode = _attention_decode_cpu(h_kv, h_q, d, DTYPE, False, {}, page_size=PAGE)
    decode_sw = _attention_decode_cpu(h_kv, h_q, d, DTYPE, True, {}, page_size=PAGE)
    return tvm.IRModule(
        {
            RAGGED_NAME: ragged.with_attr("global_symbol", RAGGED_NAME).with_attr("target", target),
            PAGED_NAME: paged.with_attr("target", target),
            DECODE_NAME: decode.with_attr("target", target),
            DECODE_NAME + "_sliding_window": decode_sw.with_attr("target", target),
        }
    )


def _signature(func: tirx.PrimFunc) -> list:
    """Each parameter's dtype, and shape for a buffer, as text."""
    return [
        (str(p.ty.dtype), [str(x) for x in p.ty.shape]) if isinstance(p.ty, tirx.BufferType) else str(p.ty)
        for p in func.params
    ]


def test_pass_replaces_kernels() -> None:
    mod = _original_module()
    new = UseFastCPUAttention()(mod)
    # the sliding-window decode kernel keeps TVM's
    assert new[DECODE_NAME + "_sliding_window"].same_as(mod[DECODE_NAME + "_sliding_window"])
    for name in (RAGGED_NAME, PAGED_NAME, DECODE_NAME):
        func, old = new[name], mod[name]
        assert not func.same_as(old)
        assert "tirx.noalias" not in old.attrs  # the input module is left as it was
        assert func.attrs["global_symbol"] == name
        assert func.attrs["target"].kind.name == "llvm"
        assert bool(func.attrs["tirx.noalias"]) and bool(func.attrs["tirx.is_scheduled"])
        # built for the head counts / head_dim / dtype read off the original
        assert _signature(func) == _signature(old)


def test_pass_leaves_other_functions_alone() -> None:
    from tvm import te

    x = te.placeholder((8,), "float32", name="x")
    double = te.create_prim_func([x, te.compute((8,), lambda i: x[i] * 2)])
    other = tvm.IRModule({"main": double.with_attr("global_symbol", "main")})
    assert UseFastCPUAttention()(other)["main"].same_as(other["main"])
    # a function under the right name but with an unexpected signature is kept as it is
    odd = tvm.IRModule({RAGGED_NAME: double.with_attr("global_symbol", RAGGED_NAME)})
    assert UseFastCPUAttention()(odd)[RAGGED_NAME].same_as(odd[RAGGED_NAME])


def test_attention_benchmark_reports_every_context(tmp_path) -> None:
    """benchmarks/cpu_attention.py, new against a baseline file (here the same kernel), writes
    a row per context length with positive timings and the speedup of their medians."""
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, str(root / "benchmarks/cpu_attention.py"), "--contexts", "20,70", "--rounds", "2",
         "--baseline", str(root / "tvm_schedules/cpu/attention.py"), "--out", str(tmp_path)],
        check=True, capture_output=True, env={**os.environ, "TVM_NUM_THREADS": "1"},
    )
    (report,) = tmp_path.glob("cpu_attention_*.json")
    rows = json.loads(report.read_text())["rows"]
    assert [r["keys"] for r in rows] == [20, 70]
    for r in rows:
        for k in ("old_us", "new_us"):
            assert len(r[k]["all"]) == 2 and min(r[k]["all"]) > 0
            assert r[k]["median"] == float(np.median(r[k]["all"]))
        assert r["speedup"] == r["old_us"]["median"] / r["new_us"]["median"]
    md = report.with_suffix(".md").read_text()
    assert "| 20 |" in md and "| 70 |" in md and "speedup" in md
