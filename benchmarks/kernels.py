"""GPU benchmark of the fused dequantize kernels: ours (tvm_schedules) vs dlight, plus peers.

For LLaMA-7B / 13B projection shapes (qkv, o, gate_up, down, lm_head), every quantized export
mode, decode batch 1, 4 and 16 and a 512-token prefill, it times our kernel and dlight's (as
MLC-LLM applies it: LowBatchGEMV for a symbolic batch of 2..8, then Matmul / GEMV; the
prefill, as in the compiled model, with a symbolic token count on both sides; our batch 4 and
16 are our static-batch kernels: at 4 the very kernel the model's symbolic ``batch_decode``
runs for 4 rows, at 16 a GEMM with 16-row tiles where the model's takes its 64-row one, see
docs/schedules.md) and reports
GB/s, the percentage of the same GPU's measured device-to-device copy bandwidth, and the
speedup over dlight. In the same run it times the peers a user could pick instead on the same
shapes (gemlite A16W4 / A16W2 with group scales and zeros, torch's int4
``_weight_int4pack_mm``) when they are importable. Results go to ``benchmarks/results/`` as
JSON and a markdown table named after the GPU.

Two phases, so the GPU machine needs only TVM's runtime:

    # where TVM's compiler and nvcc are (no GPU needed): build every kernel into .so files
    python benchmarks/kernels.py build --arch sm_90 --out build/kernels
    # on the GPU machine (runtime-only TVM is enough; torch makes timing exact)
    python benchmarks/kernels.py run --kernels build/kernels
    # or both at once where full TVM and the GPU are together
    python benchmarks/kernels.py all --arch sm_90

Timing: CUDA events around every launch behind a busy-wait kernel (torch present), inputs
rotated over enough weight copies that they never sit in L2; the median of the launches.
Without torch, TVM's ``time_evaluator`` (C++ loop, no rotation; marked in the results).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from desv_export.engine import cuda_jit  # noqa: E402  (runtime-safe)
from desv_export.modes import MODES, get_mode  # noqa: E402  (pure Python, runtime-safe)

RESULTS = ROOT / "benchmarks" / "results"

# (hidden, intermediate, vocab); heads == kv heads for both, so qkv = 3 * hidden.
MODELS = {
    "llama-7b": (4096, 11008, 32000),
    "llama-13b": (5120, 13824, 32000),
    "tiny": (256, 640, 512),  # CPU tests only: same code path, seconds to build
}
# batch class -> (batch, seq): decode rows are the batch axis, prefill tokens the seq axis.
BATCHES = {"b1": (1, 1), "b4": (4, 1), "b16": (16, 1), "prefill512": (1, 512)}
# "ours-tc": tvm_schedules.mma_gemv.TensorCoreGEMV, the experimental tensor-core decode GEMV
# (not in cuda_rules() yet), timed beside DecodeGEMV where it applies (b1, 2- and 4-bit).
SCHEDULES = ("ours", "dlight", "ours-tc")
QUANT_MODES = [name for name, m in MODES.items() if m.quantized]


def linear_shapes(model: str) -> list[tuple[str, int, int]]:
    """(name, N, K) of the five fused projections MLC-LLM's LLaMA runs per layer + lm_head."""
    hidden, inter, vocab = MODELS[model]
    return [
        ("qkv_proj", 3 * hidden, hidden),
        ("o_proj", hidden, hidden),
        ("gate_up_proj", 2 * inter, hidden),
        ("down_proj", hidden, inter),
        ("lm_head", vocab, hidden),
    ]


@dataclass
class KernelSpec:
    """One kernel of the table; the manifest written by ``build`` is a list of these."""

    id: str
    model: str
    linear: str
    n: int
    k: int
    mode: str
    batch_class: str
    batch: int
    seq: int
    schedule: str
    rule: str = ""
    lib: str = ""
    symbol: str = ""
    symbolic_batch: bool = False  # dlight's LowBatchGEMV kernel takes a symbolic batch
    symbolic_seq: bool = False  # the prefill kernel takes a symbolic token count (both sides)
    arg_shapes: list = field(default_factory=list)  # [[shape, dtype], ...] incl. output

    @property
    def rows(self) -> int:
        return self.batch * self.seq

    def weight_bytes(self) -> int:
        mode = get_mode(self.mode)
        total = 0
        for name, shape in mode.shapes(self.n, self.k).items():
            total += int(np.prod(shape)) * (2 if name == "q_scale" else 4)
        return total

    def moved_bytes(self) -> int:
        """Bytes a perfect kernel moves: packed weights once, x in, y out (float16)."""
        return self.weight_bytes() + 2 * self.rows * (self.k + self.n)


def _tensor_core_gemv_takes(mode: str, batch_class: str) -> bool:
    """The modes and batch class ``TensorCoreGEMV`` is written for (one row; 2-, 3- and 4-bit
    words in groups that hold whole words); on LLaMA's shapes it takes all of them."""
    from tvm_schedules.mma_gemv import takes

    m = get_mode(mode)
    return batch_class == "b1" and takes(m.bits, m.group_size)


def kernel_table(models, modes, batches, schedules=SCHEDULES) -> list[KernelSpec]:
    specs = []
    for model in models:
        for linear, n, k in linear_shapes(model):
            for mode in modes:
                for bc in batches:
                    batch, seq = BATCHES[bc]
                    for schedule in schedules:
                        if schedule == "ours-tc" and not _tensor_core_gemv_takes(mode, bc):
                            continue
                        kid = f"{model}.{linear}.{mode}.{bc}.{schedule}"
                        specs.append(KernelSpec(kid, model, linear, n, k, mode, bc, batch, seq,
                                                schedule))
    return specs


# ----------------------------------------------------------------------------- build phase


def _dlight_rules():
    from tvm.s_tir import dlight as dl

    from tvm_schedules.intrinsics import cuda_tensor_intrinsics

    cuda_tensor_intrinsics()  # dlight's Matmul tensorizes with them; imported the fast way first
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback()]


def schedule_kernel(spec: KernelSpec, target):
    """Build the workload of ``spec`` and schedule it the way its library would; returns the
    scheduled PrimFunc and records the rule name in ``spec``."""
    from tvm import tirx

    from tvm_schedules.registry import cuda_rules
    from tvm_schedules.workloads import dequant_matmul

    batch: int | tirx.Var = spec.batch
    rules = []
    if spec.schedule == "ours":
        rules = cuda_rules() + _dlight_rules()
    elif spec.schedule == "ours-tc":
        from tvm_schedules.mma_gemv import TensorCoreGEMV

        rules = [TensorCoreGEMV()]  # no fallback: a decline is an error in the table
    else:
        from tvm.s_tir import dlight as dl

        if 2 <= spec.batch <= 8 and spec.seq == 1:
            # MLC-LLM's LowBatchGemvSpecialize: symbolic batch, LowBatchGEMV with a bucket of 4.
            batch = tirx.Var("batch_size", "int64")
            spec.symbolic_batch = True
            rules = [dl.gpu.LowBatchGEMV(4)]
        rules += _dlight_rules()
    seq: int | tirx.Var = spec.seq
    if spec.seq > 1:
        # Prefill is symbolic in the compiled model, so both sides time that function (ours
        # is then LowBatchDispatch's, whose GEMM branch 512 rows take; its tile depth for
        # 3-bit depends on it). dlight's Matmul also takes ~50 s to schedule a static 512-row
        # one. (dlight: an int32 var, int64 trips its index-dtype check; ours: int64, as Relax.)
        seq = tirx.Var("seq_len", "int32" if spec.schedule == "dlight" else "int64")
        spec.symbolic_seq = True
    # dlight's Matmul tensorizes the prefill on sm_80+ as in MLC's pipeline (it crashed before
    # apache-tvm-ffi was pinned to 0.1.14.post1, see docs/schedules.md), as our GEMM does.
    func = dequant_matmul(spec.mode, spec.n, spec.k, batch=batch, seq=seq)
    for rule in rules:
        sch = rule.apply(func, target, False)
        if sch is not None:
            owner = "ours" if type(rule).__module__.startswith("tvm_schedules") else "dlight"
            spec.rule = f"{owner}.{type(rule).__name__}"
            return sch.mod["main"]
    raise RuntimeError(f"no rule scheduled {spec.id}")


def scheduled_groups(specs: list[KernelSpec], target):
    """Yield ``(model, mode, its specs, one IRModule of their kernels)`` per model and mode, each
    kernel scheduled as its library would and named by the ``symbol`` set on its spec; one
    module a group, so nvcc runs once per model and mode."""
    import tvm

    groups: dict[tuple[str, str], list[KernelSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.model, spec.mode), []).append(spec)
    for (model, mode), group in groups.items():
        funcs = {}
        for i, spec in enumerate(group):
            spec.symbol = f"k{i:04d}"
            funcs[spec.symbol] = schedule_kernel(spec, target).with_attr("global_symbol", spec.symbol)
        yield model, mode, group, tvm.IRModule(funcs)


def build(out: Path, arch: str, models, modes, batches, schedules=SCHEDULES,
          force: bool = False, log=print) -> Path:
    """Compile every kernel (nvcc, no GPU needed) into one .so per (model, mode) + manifest."""
    import tvm

    from desv_export.atomic import atomic_dir
    from desv_export.compile import resolve_target

    target = resolve_target("cuda", arch)  # the compile pipeline's: same kernels
    specs = kernel_table(models, modes, batches, schedules)
    with atomic_dir(out, force=force) as tmp:
        t0 = time.time()
        for model, mode, group, mod in scheduled_groups(specs, target):
            for spec in group:
                spec.lib = f"{model}.{mode}.so"
                spec.arg_shapes = [[[_dim(d) for d in buf.shape], str(buf.dtype)]
                                   for buf in mod[spec.symbol].params]
            with target:
                lib = tvm.compile(mod, target=target)
            lib.export_library(str(tmp / f"{model}.{mode}.so"))
            # The library holds CUDA source that is compiled when it is loaded; compile it here
            # into the binary cache ``run`` answers that compile from (engine/cuda_jit.py).
            cuda_jit.precompile(lib.mod, arch, tmp)
            log(f"built {model} {mode}: {len(group)} kernels in {time.time() - t0:.1f}s")
            t0 = time.time()
        manifest = {
            "arch": arch,
            "tvm": tvm.__version__,
            "kernels": [asdict(s) for s in specs],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def _dim(d):
    return int(d) if hasattr(d, "value") or isinstance(d, int) else str(d)


# ----------------------------------------------------------------------------- run phase


def _torch_cuda():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        return None


def gpu_name(torch=None) -> str:
    if torch is not None:
        return torch.cuda.get_device_name(0)
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        return "unknown-gpu"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Timer:
    """Median microseconds per call of ``fn(i)`` (i rotates over input copies)."""

    def __init__(self, torch=None, launches: int = 200, warmup: int = 20):
        self.torch, self.launches, self.warmup = torch, launches, warmup

    def __call__(self, fn, copies: int = 1) -> float:
        torch = self.torch
        for i in range(self.warmup):
            fn(i % copies)
        if torch is None:
            raise RuntimeError("event timing needs torch; use time_evaluator instead")
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.launches)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.launches)]
        torch.cuda._sleep(10_000_000)  # keep the GPU busy while launches queue up
        for i in range(self.launches):
            starts[i].record()
            fn(i % copies)
            ends[i].record()
        torch.cuda.synchronize()
        times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
        return 1000.0 * times[len(times) // 2]


def copy_bandwidth(dev, torch=None, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy GB/s (read + write bytes), the roof kernels are compared with."""
    if torch is not None:
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        t_us = Timer(torch, launches=20, warmup=3)(lambda _: dst.copy_(src))
        return 2 * nbytes / (t_us * 1e-6) / 1e9
    import tvm

    a = tvm.runtime.tensor(np.zeros(nbytes // 4, np.float32), dev)
    b = tvm.runtime.tensor(np.zeros(nbytes // 4, np.float32), dev)
    a.copyto(b)
    dev.sync()
    t0 = time.perf_counter()
    for _ in range(20):
        a.copyto(b)
    dev.sync()
    return 2 * nbytes * 20 / (time.perf_counter() - t0) / 1e9


def _inputs(spec: dict, rng) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(x, weights...) for a kernel; weights random packed words with scales ~ 1/2^bits."""
    mode = get_mode(spec["mode"])
    n, k = spec["n"], spec["k"]
    x = (rng.standard_normal((spec["batch"], spec["seq"], k)) * 0.5).astype(np.float16)
    shapes = mode.shapes(n, k)
    weights = [rng.integers(0, 2**32, shapes["q_weight"], dtype=np.uint32),
               (rng.uniform(0.5, 1.5, shapes["q_scale"]) / 2**mode.bits).astype(np.float16)]
    if not mode.symmetric:
        weights.append(rng.integers(0, 2**32, shapes["q_zero"], dtype=np.uint32))
    return [x], weights


def reference(spec: dict, x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """float32 numpy x @ W^T, W from desv_export.pack.dequantize (contract 3)."""
    from desv_export.pack import dequantize

    names = ["q_weight", "q_scale", "q_zero"]
    w = dequantize(spec["mode"], dict(zip(names, weights)), spec["k"]).astype(np.float32)
    return x.reshape(-1, spec["k"]).astype(np.float32) @ w.T


def run(kernels: Path, results_dir: Path = RESULTS, launches: int = 200,
        rotate_mib: int = 512, peers: bool = True, check: str = "b1", log=print) -> dict:
    """Time every kernel of a built manifest on GPU 0; write JSON + markdown; return results."""
    import tvm

    from desv_export.engine.library import load_cuda_runtime

    load_cuda_runtime()  # runtime-only TVM (the GPU machine) does not load it on import
    torch = _torch_cuda()
    dev = tvm.cuda(0)
    manifest = json.loads((kernels / "manifest.json").read_text())
    cuda_jit.install(cache=kernels)  # the binaries `build` made; nvcc here for any other GPU
    gpu = gpu_name(torch)
    copy_gbs = copy_bandwidth(dev, torch)
    log(f"{gpu}: device copy {copy_gbs:.0f} GB/s; timer "
        f"{'cuda events + rotation' if torch else 'tvm time_evaluator (no rotation)'}")
    timer = Timer(torch, launches=launches) if torch else None
    libs: dict[str, object] = {}
    rng = np.random.default_rng(0)
    rows = []
    for spec in manifest["kernels"]:
        lib = libs.get(spec["lib"]) or libs.setdefault(
            spec["lib"], tvm.runtime.load_module(str(kernels / spec["lib"])))
        func = lib[spec["symbol"]]
        xs, weights = _inputs(spec, rng)
        ks = KernelSpec(**{k: v for k, v in spec.items() if k in KernelSpec.__dataclass_fields__})
        copies = max(1, min(64, math.ceil(rotate_mib * 2**20 / ks.weight_bytes())))
        out_shape = [spec["batch"], spec["seq"], spec["n"]]
        t_weights = [[tvm.runtime.tensor(w, dev) for w in weights]]
        for _ in range(copies - 1):  # distinct buffers, same values: only addresses differ
            t_weights.append([tvm.runtime.tensor(w, dev) for w in weights])
        x_t = tvm.runtime.tensor(xs[0], dev)
        out_dtype = spec["arg_shapes"][-1][1] if spec.get("arg_shapes") else "float16"
        out_t = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
        if timer is not None:
            t_us = timer(lambda i: func(x_t, *t_weights[i], out_t), copies)
        else:
            ev = lib.time_evaluator(spec["symbol"], dev, number=launches, repeat=5)
            t_us = 1e6 * float(np.median(ev(x_t, *t_weights[0], out_t).results))
        row = {
            "id": spec["id"], "model": spec["model"], "linear": spec["linear"],
            "n": spec["n"], "k": spec["k"], "mode": spec["mode"], "batch": spec["batch_class"],
            "schedule": spec["schedule"], "rule": spec["rule"], "us": round(t_us, 3),
            "gbs": round(ks.moved_bytes() / (t_us * 1e-6) / 1e9, 1),
            "weight_bytes": ks.weight_bytes(), "copies": copies,
        }
        row["pct_copy"] = round(100 * row["gbs"] / copy_gbs, 1)
        if check and spec["batch_class"] == check:
            func(x_t, *t_weights[0], out_t)
            got = out_t.numpy().astype(np.float32).reshape(-1, spec["n"])
            ref = reference(spec, xs[0], weights)
            row["max_rel_err"] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))
        rows.append(row)
        log(f"{spec['id']:60s} {t_us:9.2f} us {row['gbs']:8.1f} GB/s {row['pct_copy']:5.1f}%")
        del t_weights
    peer_rows = run_peers(manifest, torch, timer, copy_gbs, log) if peers else []
    result = {
        "gpu": gpu, "copy_gbs": round(copy_gbs, 1), "arch": manifest["arch"],
        "tvm": manifest.get("tvm"), "timer": "cuda-events-rotated" if torch else "time_evaluator",
        "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kernels": attach_audit(add_speedups(rows), manifest["arch"], results_dir), "peers": peer_rows,
    }
    write_results(result, results_dir)
    return result


def attach_audit(rows: list[dict], arch: str, results_dir: Path = RESULTS) -> list[dict]:
    """Put the static audit's figures (``kernel_audit.py``: SASS instructions per code, resident
    warps per SM) beside each timed kernel, so the GPU run shows at once whether the static
    counts predicted time. Rows without an audit entry are left as they are."""
    path = results_dir / f"kernel-audit-{arch}.json"
    if not path.is_file():
        return rows
    audit = {a["id"]: a for a in json.loads(path.read_text())["kernels"]}
    for r in rows:
        a = audit.get(r["id"])
        if a is not None:
            r["static_instr_per_code"] = round(a["instructions_per_fma"], 2)
            r["static_warps_per_sm"] = a.get("blocks_per_sm", 0) * a.get("threads_per_block", 0) // 32
    return rows


def add_speedups(rows: list[dict]) -> list[dict]:
    """speedup = dlight time / our time for the same (model, linear, mode, batch); the
    tensor-core GEMV's rows also get ``speedup_vs_ours`` (over ``DecodeGEMV``)."""
    def times(schedule: str) -> dict:
        return {(r["model"], r["linear"], r["mode"], r["batch"]): r["us"]
                for r in rows if r["schedule"] == schedule}

    dl, ours = times("dlight"), times("ours")
    for r in rows:
        key = (r["model"], r["linear"], r["mode"], r["batch"])
        if r["schedule"] in ("ours", "ours-tc"):
            base = dl.get(key)
            r["speedup_vs_dlight"] = round(base / r["us"], 2) if base else None
        if r["schedule"] == "ours-tc":
            base = ours.get(key)
            r["speedup_vs_ours"] = round(base / r["us"], 2) if base else None
    return rows


# ----------------------------------------------------------------------------- peers


def run_peers(manifest: dict, torch, timer, copy_gbs: float, log=print) -> list[dict]:
    """gemlite (A16W4 / A16W2, group 128 with zeros) and torch int4 on the manifest's shapes."""
    if torch is None:
        return [{"peer": "all", "error": "torch with CUDA is not available"}]
    shapes = sorted({(s["model"], s["linear"], s["n"], s["k"], s["batch_class"])
                     for s in manifest["kernels"]})
    out = []
    for model, linear, n, k, bc in shapes:
        batch, seq = BATCHES[bc]
        m = batch * seq
        for peer, bits in (("gemlite", 4), ("gemlite", 2), ("torch_int4", 4)):
            row = {"peer": peer, "bits": bits, "model": model, "linear": linear, "n": n, "k": k,
                   "batch": bc, "group": 128}
            try:
                fn, nbytes = _peer_fn(torch, peer, bits, n, k, m)
                t_us = timer(lambda _i: fn(), 1)
                row["us"] = round(t_us, 3)
                row["gbs"] = round((nbytes + 2 * m * (n + k)) / (t_us * 1e-6) / 1e9, 1)
                row["pct_copy"] = round(100 * row["gbs"] / copy_gbs, 1)
            except Exception as err:  # noqa: BLE001  a missing/changed peer is a result too
                row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
            out.append(row)
            log(f"peer {peer} w{bits} {model} {linear} {bc}: {row.get('us', row.get('error'))}")
    return out


def _peer_fn(torch, peer: str, bits: int, n: int, k: int, m: int, group: int = 128):
    """A zero-argument callable running the peer's kernel once, and its weight bytes.

    Note: peers are timed without rotation (one weight copy), which can only favour them."""
    dev = "cuda"
    ng = k // group
    if peer == "gemlite":
        from gemlite.core import DType, GemLiteLinear  # type: ignore

        w_q = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, device=dev)
        scales = (torch.rand(n, ng, device=dev) * 0.01 + 0.001).half()
        zeros = torch.full((n, ng), float(2 ** (bits - 1)), device=dev).half()
        layer = GemLiteLinear(bits, group_size=group, in_features=k, out_features=n,
                              input_dtype=DType.FP16, output_dtype=DType.FP16)
        layer.pack(w_q, scales, zeros, None)
        x = torch.randn(m, k, device=dev, dtype=torch.float16)
        nbytes = n * k * bits // 8 + 4 * n * ng
        return (lambda: layer(x)), nbytes
    if peer == "torch_int4":
        w = torch.randint(0, 16, (n, k), dtype=torch.int32, device=dev)
        w_u8 = ((w[:, ::2] << 4) | w[:, 1::2]).to(torch.uint8)
        packed = torch._convert_weight_to_int4pack(w_u8, 8)
        sz = torch.rand(ng, n, 2, device=dev, dtype=torch.bfloat16)
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        nbytes = n * k // 2 + 4 * n * ng
        return (lambda: torch._weight_int4pack_mm(x, packed, group, sz)), nbytes
    raise ValueError(peer)


# ----------------------------------------------------------------------------- reporting


def markdown(result: dict) -> str:
    """The results as markdown: one table per model and batch class, modes as rows."""
    lines = [
        f"# Dequantize kernels on {result['gpu']}",
        "",
        f"Measured device copy bandwidth: **{result['copy_gbs']} GB/s**. Timer: "
        f"{result['timer']}. TVM {result.get('tvm')}, arch {result['arch']}, {result['date']}.",
        "GB/s counts packed weights + scales/zeros once plus x and y; % is of the copy bandwidth.",
        "",
    ]
    rows = result["kernels"]
    keys = sorted({(r["model"], r["batch"]) for r in rows},
                  key=lambda t: (t[0], list(BATCHES).index(t[1]) if t[1] in BATCHES else 99))
    for model, bc in keys:
        lines += [f"## {model}, {bc}", "",
                  "| mode | linear | ours us | ours GB/s | ours % copy | dlight us | "
                  "dlight % copy | speedup | static instr / code, ours : dlight | warps / SM, ours : dlight "
                  "| tensor-core GEMV us (% copy, x ours) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        sel = [r for r in rows if r["model"] == model and r["batch"] == bc]
        dl = {(r["mode"], r["linear"]): r for r in sel if r["schedule"] == "dlight"}
        tc = {(r["mode"], r["linear"]): r for r in sel if r["schedule"] == "ours-tc"}
        for r in sel:
            if r["schedule"] != "ours":
                continue
            d = dl.get((r["mode"], r["linear"]), {})
            t = tc.get((r["mode"], r["linear"]))
            tc_cell = (f"{t['us']:.2f} ({t['pct_copy']:.1f} %, {t.get('speedup_vs_ours') or '-'}x)"
                       if t else "-")
            lines.append(
                f"| {r['mode']} | {r['linear']} | {r['us']:.2f} | {r['gbs']:.0f} | "
                f"{r['pct_copy']:.1f} | {d.get('us', float('nan')):.2f} | "
                f"{d.get('pct_copy', float('nan')):.1f} | {r.get('speedup_vs_dlight') or '-'} | "
                f"{_pair(r, d, 'static_instr_per_code')} | {_pair(r, d, 'static_warps_per_sm')} | "
                f"{tc_cell} |")
        lines.append("")
    peers = result.get("peers") or []
    if peers:
        lines += ["## Peers (same shapes, group 128)", "",
                  "| peer | bits | model | linear | batch | us | GB/s | % copy |",
                  "|---|---:|---|---|---|---:|---:|---:|"]
        for p in peers:
            if "error" in p:
                lines.append(f"| {p['peer']} | {p.get('bits', '')} | {p.get('model', '')} | "
                             f"{p.get('linear', '')} | {p.get('batch', '')} | error: "
                             f"{p['error'][:60]} | | |")
            else:
                lines.append(f"| {p['peer']} | {p['bits']} | {p['model']} | {p['linear']} | "
                             f"{p['batch']} | {p['us']:.2f} | {p['gbs']:.0f} | "
                             f"{p['pct_copy']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def _pair(ours: dict, dlight: dict, key: str) -> str:
    """``ours : dlight`` for a static-audit figure, ``-`` where the audit has no entry."""
    return f"{ours[key]} : {dlight.get(key, '-')}" if key in ours else "-"


def write_results(result: dict, results_dir: Path = RESULTS) -> tuple[Path, Path]:
    from desv_export.atomic import atomic_file

    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"kernels-{slug(result['gpu'])}"
    paths = (results_dir / f"{stem}.json", results_dir / f"{stem}.md")
    with atomic_file(paths[0]) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1))
    with atomic_file(paths[1]) as tmp:
        Path(tmp).write_text(markdown(result))
    return paths


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("build", "run", "all"):
        s = sub.add_parser(name)
        if name in ("build", "all"):
            s.add_argument("--arch", default="sm_90")
            s.add_argument("--models", nargs="+", default=["llama-7b", "llama-13b"],
                           choices=list(MODELS))
            s.add_argument("--modes", nargs="+", default=QUANT_MODES, choices=QUANT_MODES)
            s.add_argument("--batches", nargs="+", default=list(BATCHES), choices=list(BATCHES))
            s.add_argument("--force", action="store_true")
        s.add_argument("--kernels", type=Path, default=ROOT / "build" / "kernels")
        if name in ("run", "all"):
            s.add_argument("--results", type=Path, default=RESULTS)
            s.add_argument("--launches", type=int, default=200)
            s.add_argument("--no-peers", action="store_true")
    a = p.parse_args(argv)
    if a.cmd in ("build", "all"):
        build(a.kernels, a.arch, a.models, a.modes, a.batches, force=a.force)
    if a.cmd in ("run", "all"):
        res = run(a.kernels, a.results, launches=a.launches, peers=not a.no_peers)
        print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
