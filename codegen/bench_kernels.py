"""Kernel timings for ``mlaref bench kernels``: every catalog kernel (or a selection) on fixed-size inputs.

``bench_kernels(families=None, isas=None, types=None, n_rows=64, n=4096, n_threads=1, warmup=2, repeat=5)`` returns
one dict per kernel: ``kernel``, ``family``, ``type_x``, ``type_y``, ``isa``, ``plan``, ``seconds`` (the best of
``repeat`` timed calls after ``warmup``), ``values`` (values processed per call) and ``gvalues_per_s``. Inputs are
built with the reference (random normal floats, quantized), outside the timed region. Kernels of ISAs this
machine cannot run are left out; ``skipped`` lists them with the reason. codegen/bench.py (helper H3) formats
and prints these rows.
"""

from __future__ import annotations

import time

import numpy as np

from mlaref.codegen import catalog, cpu
from mlaref.codegen import kernels as K

__all__ = ["bench_kernels", "time_kernel", "FAMILIES"]

FAMILIES = ("dequantize_row", "quantize_row", "convert_rows", "vec_dot")


def _inputs(spec, n_rows: int, n: int, rng):
    from mlaref import reference as R

    bs = max(K.geometry(spec.type_x)[0], K.geometry(spec.type_y)[0] if spec.type_y else 1, 32)
    n = max(bs, n // bs * bs)
    x = rng.standard_normal((n_rows, n)).astype(np.float32)
    if spec.family == "dequantize_row":
        data = R.quantize(x, spec.type_x, variant=next(iter(R.get_type(spec.type_x).variants)))
        return n, lambda: K.dequantize(data, spec.type_x, kernel=spec.name, n_threads=_T[0])
    if spec.family == "quantize_row":
        v = next(v for v, impl in R.get_type(spec.type_x).variants.items() if impl == spec.plan)
        return n, lambda: K.quantize(x, spec.type_x, variant=v, kernel=spec.name, n_threads=_T[0])
    if spec.family == "convert_rows":
        data = R.quantize(x, spec.type_x)
        v = next(v for v, impl in R.get_type(spec.type_y).variants.items() if impl == spec.plan)
        return n, lambda: K.convert(data, spec.type_x, spec.type_y, variant=v, kernel=spec.name, n_threads=_T[0])
    tx, ty = spec.type_x, spec.type_y
    if tx == "f32":
        xb, yb = x.view(np.uint8), x[:8].copy().view(np.uint8)
    elif tx in ("f16", "bf16"):
        xb, yb = R.quantize(x, tx), R.quantize(x[:8], tx)
    else:
        xb = R.quantize(x, tx)
        yb = R.quantize(x[:8], ty, variant="iqk" if ty.endswith("_x4") else "x86")
    plan = catalog.VEC_DOT_PLANS[spec.plan]
    return n * 8, lambda: K.vec_dot(xb, tx, yb, ty, n, plan=plan, kernel=spec.name, n_threads=_T[0])


_T = [1]


def time_kernel(spec, n_rows: int = 64, n: int = 4096, n_threads: int = 1, warmup: int = 2, repeat: int = 5,
                seed: int = 0) -> dict:
    """Best-of-``repeat`` wall time of one kernel call on ``n_rows`` rows of about ``n`` values."""
    if isinstance(spec, str):
        spec = catalog.by_name()[spec]
    _T[0] = n_threads
    n_eff, call = _inputs(spec, n_rows, n, np.random.default_rng(seed))
    for _ in range(warmup):
        call()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    values = n_rows * n_eff
    return {"kernel": spec.name, "family": spec.family, "type_x": spec.type_x, "type_y": spec.type_y,
            "isa": spec.isa, "plan": spec.plan, "n_threads": n_threads, "seconds": best, "values": values,
            "gvalues_per_s": values / best / 1e9 if best > 0 else float("inf")}


def bench_kernels(families=None, isas=None, types=None, n_rows: int = 64, n: int = 4096, n_threads: int = 1,
                  warmup: int = 2, repeat: int = 5) -> dict:
    """``{"rows": [time_kernel dicts], "skipped": [(kernel, reason)]}`` for the selected catalog kernels."""
    families = tuple(families or FAMILIES)
    rows, skipped = [], []
    for spec in catalog.catalog():
        if spec.family not in families or (isas and spec.isa not in isas):
            continue
        if types and spec.type_x not in types and spec.type_y not in types:
            continue
        miss = cpu.missing(spec.isa)
        if miss:
            skipped.append((spec.name, "missing " + ", ".join(miss)))
            continue
        try:
            rows.append(time_kernel(spec, n_rows, n, n_threads, warmup, repeat))
        except Exception as exc:  # a kernel whose reference format is missing must not stop the benchmark
            skipped.append((spec.name, f"{type(exc).__name__}: {exc}"))
    return {"rows": rows, "skipped": skipped}
