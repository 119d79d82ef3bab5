"""Targets and exact test data for the schedule-rule tests."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from desv_export.compile import cuda_target
from tvm_schedules import cuda_rules
from tvm_schedules.dispatch import LowBatchDispatch
from tvm_schedules.workloads import random_quantized

CUDA_ARCHS = ("sm_80", "sm_90")


def exact_case(mode: str, n: int, k: int, rows: int, seed: int = 0):
    """Packed weights and x whose every float16 partial sum is exact.

    Scales are 1/8 or 1/4 (powers of two, varying by group so a wrong group index shows),
    x is mostly 0 with at most 40 entries of +-1 per row, so every partial sum is a multiple
    of 1/8 below 2^8 in magnitude: float16 represents it exactly, summation order cannot
    matter, and a correct kernel must equal the float32 numpy reference bit for bit.
    """
    rng = np.random.default_rng(seed)
    t = random_quantized(mode, n, k, rng)
    t["q_scale"] = rng.choice(np.array([0.125, 0.25], np.float16), t["q_scale"].shape)
    x = np.zeros((rows, k), np.float16)
    nnz = min(40, max(1, k // 16))
    for r in range(rows):
        cols = rng.choice(k, nnz, replace=False)
        x[r, cols] = rng.choice(np.array([-1, 1], np.float16), nnz)
    return t, x


def packed_params(t: dict) -> list:
    """The packed weight arguments of a dequantize-matmul, in the function's parameter order:
    q_weight, q_scale and, for the asymmetric modes, q_zero."""
    return [t["q_weight"], t["q_scale"]] + ([t["q_zero"]] if "q_zero" in t else [])


@pytest.fixture(scope="session")
def sm90() -> tvm.target.Target:
    return cuda_target("sm_90")


def first_rule(rules: list, func, target: tvm.target.Target):
    """(rule class name, scheduled module) of the first rule that takes ``func``, as
    ``ApplyDefaultSchedule`` picks it."""
    for rule in rules:
        sch = rule.apply(func, target, False)
        if sch is not None:
            return type(rule).__name__, sch.mod
    raise AssertionError(f"no rule of {[type(r).__name__ for r in rules]} applied")


def undispatched_rules() -> list:
    """``cuda_rules()`` less ``LowBatchDispatch``: a symbolic row count goes straight to the
    GEMM. For tests of the other rules' kernels: the dispatch's GEMV branches are those rules'
    static-batch kernels and its last branch is this GEMM (test_dispatch.py checks both), while
    building its eight GEMVs for every function made those tests an order of magnitude slower."""
    return [r for r in cuda_rules() if not isinstance(r, LowBatchDispatch)]
