"""TVM's CUDA tensor intrinsics (wmma / mma / ldmatrix), imported in seconds instead of minutes."""

from __future__ import annotations

import importlib
import inspect
import sys
from types import ModuleType

_MODULE = "tvm.s_tir.tensor_intrin.cuda"


def cuda_tensor_intrinsics() -> ModuleType:
    """``tvm.s_tir.tensor_intrin.cuda``, which registers every CUDA tensor intrinsic on import.

    It defines some 500 TVMScript functions, and each ``@T.prim_func`` calls ``inspect.stack()``.
    For every frame whose file does not exist (tvm_ffi's Cython ``function.pxi``, frozen importlib
    frames) ``inspect.getmodule`` then scans all of ``sys.modules``: with torch and transformers
    loaded the import took 45 s on 2 cores, inside pytest's deep stacks about 4 minutes. For the
    import's duration ``getmodule`` of a frame is memoized by file name (2.6 s); such a name
    belongs to one module or none while the import runs, so no answer changes.
    """
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    getmodule = inspect.getmodule
    memo: dict[str, ModuleType | None] = {}

    def getmodule_memoized(obj, _filename=None):
        if _filename is None or not inspect.isframe(obj):
            return getmodule(obj, _filename)
        if _filename not in memo:
            memo[_filename] = getmodule(obj, _filename)
        return memo[_filename]

    inspect.getmodule = getmodule_memoized
    try:
        return importlib.import_module(_MODULE)
    finally:
        inspect.getmodule = getmodule
