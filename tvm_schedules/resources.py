"""What nvcc makes of a kernel, read without a GPU: registers, local memory, loads, SASS.

A decode GEMV's speed is decided by things the compiled kernel shows before it ever runs:

* **local memory** (ptxas' "stack frame" and spills): a register cache indexed by a value the
  compiler cannot resolve (a scale whose group depends on the lane) lives in local memory, and
  every access becomes an ``LDL`` / ``STL`` through L1;
* **load width**: how many bytes one ``ld.global`` moves (a warp of 16-byte loads moves 512 B
  per instruction, of 4-byte loads 128 B), which sets how many bytes each warp has in flight;
* **int -> float16 conversions** (``cvt.rn.f16.u32``, SASS ``I2F``): one per weight code (the
  dequantize casts codes), in the conversion pipe rather than the ALUs;
* **registers** (and shared memory), which bound how many blocks, so warps, an SM keeps
  resident (``blocks_per_sm``): a memory-bound kernel needs enough warps with loads in flight
  to cover the memory latency, so a kernel that trades occupancy for fewer instructions can
  become latency-bound instead;
* **the main loop's SASS** (with cuobjdump): instructions per float32 FMA, i.e. per weight
  code and batch row. An SM issues at most 4 warp instructions a clock, so this bounds the
  codes per second a GEMV can unpack, whatever the memory does (``docs/schedules.md``,
  "Static audit").

``kernel_resources`` compiles CUDA source with nvcc to PTX, assembles it with ``ptxas -v`` and
reads both, and the SASS; ``benchmarks/kernel_audit.py`` tabulates it for every kernel of the
GPU benchmark. Timings still need the GPU (``benchmarks/kernels.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from desv_export.engine import cuda_jit

_TYPE_BITS = {"8": 8, "16": 16, "32": 32, "64": 64}
_LOAD = re.compile(r"\bld\.global(?:\.nc)?(?:\.L\w+::\w+)*(?:\.v(\d))?\.[subf](8|16|32|64)\b")
_INT_TO_HALF = re.compile(r"\bcvt\.rn\.f16\.[us](?:8|16|32|64)\b")
_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\((\d+)\)\s+(\w+)\(")


@dataclass
class KernelResources:
    """One kernel's footprint as ptxas reports it and its PTX shows it."""

    name: str
    registers: int = 0
    stack_bytes: int = 0  # local-memory frame: dynamically indexed arrays and spills
    spill_bytes: int = 0  # spill stores + spill loads
    shared_bytes: int = 0
    global_loads: dict[int, int] = field(default_factory=dict)  # bits per load -> static count
    int_to_half: int = 0  # int -> float16 conversions in the PTX
    threads_per_block: int = 0  # from the kernel's __launch_bounds__ (0: not declared)
    # The SASS of the main loop (the longest backward branch), when cuobjdump is at hand:
    loop_instructions: int = 0
    loop_mix: dict[str, int] = field(default_factory=dict)  # opcode -> count in the loop
    loop_load_bytes: int = 0  # bytes one thread's LDGs in the loop load (weights, x, scales)

    @property
    def instructions_per_fma(self) -> float:
        """SASS instructions the main loop issues per float32 FMA: per weight code and batch row
        in a GEMV, whose FMAs are one per code and row. 0 without the SASS."""
        fma = self.loop_mix.get("FFMA", 0)
        return self.loop_instructions / fma if fma else 0.0

    @property
    def instructions_per_mma_code(self) -> float:
        """The same figure for ``TensorCoreGEMV``, which has no FMA: each ``HMMA`` (m16n8k16,
        x in B) multiplies and sums 16 rows x 16 codes for the warp, 8 codes a lane. 0
        without the SASS."""
        hmma = self.loop_mix.get("HMMA", 0)
        return self.loop_instructions / (8 * hmma) if hmma else 0.0

    @property
    def uses_local_memory(self) -> bool:
        return self.stack_bytes > 0 or self.spill_bytes > 0

    @property
    def widest_load(self) -> int:
        return max(self.global_loads, default=0)

    def blocks_per_sm(self, arch: str) -> int:
        """Resident blocks per SM by the occupancy rules (registers allocated per warp in units
        of 256, shared memory plus the 1 KB each block reserves, thread and block limits)."""
        limits = SM_LIMITS.get(arch)
        if limits is None or not self.threads_per_block:
            return 0
        regs_per_sm, threads_per_sm, blocks_max, smem_per_sm = limits
        warps = -(-self.threads_per_block // 32)
        warp_regs = -(-max(self.registers, 1) * 32 // 256) * 256
        blocks = min(blocks_max, threads_per_sm // (warps * 32), regs_per_sm // warp_regs // warps)
        if self.shared_bytes:
            blocks = min(blocks, smem_per_sm // (self.shared_bytes + 1024))
        return blocks


# arch -> (32-bit registers, threads, blocks, shared memory bytes) per SM (CUDA occupancy tables)
SM_LIMITS = {
    "sm_80": (65536, 2048, 32, 164 * 1024),
    "sm_86": (65536, 1536, 16, 100 * 1024),
    "sm_89": (65536, 1536, 24, 100 * 1024),
    "sm_90": (65536, 2048, 32, 228 * 1024),
}


def _ptx_entries(ptx: str) -> dict[str, str]:
    """Entry name -> its PTX body."""
    parts = re.split(r"\.visible\s+\.entry\s+", ptx)[1:]
    return {part.split("(", 1)[0].strip(): part for part in parts}


def parse_ptxas_info(text: str) -> dict[str, KernelResources]:
    """Per-kernel registers / stack / spills / shared memory from ``ptxas -v`` output."""
    kernels: dict[str, KernelResources] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?(\w+)'?", line)
        if m:
            current = kernels.setdefault(m.group(1), KernelResources(m.group(1)))
            continue
        if current is None:
            continue
        if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            current.stack_bytes = int(m.group(1))
            current.spill_bytes = int(m.group(2)) + int(m.group(3))
        if m := re.search(r"Used (\d+) registers", line):
            current.registers = int(m.group(1))
        if m := re.search(r"(\d+) bytes smem", line):
            current.shared_bytes = int(m.group(1))
    return kernels


def cuobjdump() -> str | None:
    """cuobjdump (with nvdisasm beside it, which it runs): the CUDA toolkit's, or the PyPI
    wheels ``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` (the ``audit`` extra)."""
    found = shutil.which("cuobjdump")
    if found and shutil.which("nvdisasm"):
        return found
    for base in map(Path, sys.path):
        for bin_dir in sorted(base.glob("nvidia/cu*/bin")):
            if (bin_dir / "cuobjdump").is_file() and (bin_dir / "nvdisasm").is_file():
                return str(bin_dir / "cuobjdump")
    return None


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\S*)\s*(.*?);")


def _load_bytes(modifiers: str) -> int:
    """Bytes one ``LDG`` moves per thread, from its modifiers (``.E.128.CONSTANT``, ``.E.U16``)."""
    for width, size in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if width in modifiers:
            return size
    return 4


def parse_sass(text: str) -> dict[str, tuple[int, dict[str, int], int]]:
    """Kernel -> (instructions in its main loop, opcode counts there, bytes its ``LDG``s there
    load per thread) from ``cuobjdump -sass``.

    The main loop is the longest backward branch; a kernel without one is all "loop"."""
    loops = {}
    for chunk in re.split(r"\n\s*Function : ", text)[1:]:
        name = chunk.split(None, 1)[0]
        code = [(int(m.group(1), 16), m.group(2), m.group(4), m.group(3))
                for m in _SASS_LINE.finditer(chunk)]
        span = (0, code[-1][0] if code else 0)
        best = -1
        for addr, op, operands, _ in code:
            target = re.match(r"(0x[0-9a-f]+)", operands.strip()) if op == "BRA" else None
            if target and int(target.group(1), 16) < addr and addr - int(target.group(1), 16) > best:
                best = addr - int(target.group(1), 16)
                span = (int(target.group(1), 16), addr)
        body = [(op, mods) for addr, op, _, mods in code if span[0] <= addr <= span[1]]
        loaded = sum(_load_bytes(mods) for op, mods in body if op == "LDG")
        loops[name] = (len(body), dict(Counter(op for op, _ in body)), loaded)
    return loops


def kernel_resources(source: str, arch: str) -> dict[str, KernelResources]:
    """Compile ``source`` for ``arch`` (nvcc to PTX, ``ptxas -v`` to a cubin) and report each
    ``__global__`` kernel, with its main loop's SASS when ``cuobjdump()`` finds the tools;
    raises RuntimeError with the tool's message if a compile fails."""
    sass = ""
    with tempfile.TemporaryDirectory(prefix="desv_audit_") as tmp:
        ptx_path = cuda_jit.nvcc(source, arch, Path(tmp) / "kernels.ptx", fmt="ptx")
        ptx = ptx_path.read_text()
        cubin = Path(tmp) / "kernels.cubin"
        proc = subprocess.run(["ptxas", f"-arch={arch}", "-O3", "-v", "-o", str(cubin), str(ptx_path)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed for {arch}:\n{proc.stderr[-4000:]}")
        tool = cuobjdump()
        if tool:
            env = {**os.environ, "PATH": f"{Path(tool).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
            sass = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True,
                                  check=True, env=env).stdout
    kernels = parse_ptxas_info(proc.stdout + proc.stderr)
    for name, (count, mix, loaded) in parse_sass(sass).items():
        res = kernels.setdefault(name, KernelResources(name))
        res.loop_instructions, res.loop_mix, res.loop_load_bytes = count, mix, loaded
    for threads, name in _LAUNCH_BOUNDS.findall(source):
        kernels.setdefault(name, KernelResources(name)).threads_per_block = int(threads)
    for name, body in _ptx_entries(ptx).items():
        res = kernels.setdefault(name, KernelResources(name))
        widths = Counter(int(lanes or 1) * _TYPE_BITS[bits] for lanes, bits in _LOAD.findall(body))
        res.global_loads = dict(widths)
        res.int_to_half = len(_INT_TO_HALF.findall(body))
    return kernels
