"""`mlaref report`: detect the CPU, build and check every kernel, benchmark, reproduce the seed, write the report.

``mlaref report [--quick] [--out DIR]`` writes ``DIR/report.md`` (for people), ``DIR/report.json`` (for
machines; schema ``codegen/report/report.schema.json``, every figure a ``{value, unit, method}`` or a timing with its
median/min/max) and PNG plots (matplotlib; skipped with a reason without it). Sections, in order:

``cpu``
    architecture, model, each ISA token found or not found (the missing CPU features), the dispatch order and
    the compiler (:mod:`mlaref.codegen.cpu`, :mod:`mlaref.codegen.dispatch`).
``build``
    every (family, ISA) cffi module of the catalog (:func:`mlaref.codegen.build.load`), compiled in one worker
    process per CPU, with a progress bar on stderr; ISAs this CPU lacks and cross-architecture ISAs are skipped
    with the reason.
``check``
    every kernel of a built module against the NumPy reference on a fixed case set (below): equal bytes = pass.
    Per ISA: verified (every kernel passed), failed, or skipped and why.
``seed_tables``
    the seed's KV cache and compute-buffer table from the allocator model (:mod:`mlaref.reference.alloc`),
    cell by cell against the seed's printed strings and ik_llama.cpp's own output.
``bench_kernels``
    MB/s of float32 data for the dispatched C kernel, the NumPy reference and upstream ggml (ggml-python) on
    the same rows, quantize and dequantize per format (:func:`bench_kernels`).
``bench_ops``
    seconds per call of one MLA layer's ops at small shapes: reference, kernels, ggml (:func:`bench_ops`).
``mla``, ``mla_ggml``
    the seed's speed claim as per-layer ratios on this CPU (:mod:`mlaref.codegen.bench.mla`): on mlaref's
    generated kernels (IQ4_NL ``wkv_b`` as in the seed), and on upstream ggml through ggml-python.

Fixed case set of ``check`` (seeded from the kernel name, so every run checks the same inputs): row lengths of 1
block, 7 blocks and the MLA row 576 (192 for vec_dot too), 3 to 5 rows at a strided input; quantizer inputs
are normal values at scales 1e-3..1e3 with an all-zero block, exact .5 ties and equal-magnitude sign flips.

Exit code: 0 when every check that ran passed (kernel checks, the seed-table cells, the f32/direct equality of
the MLA benchmark), 1 when one failed, 2 for bad arguments. A section that cannot run says
``skipped: <reason>`` and the report still completes.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pathlib
import sys
import time
import traceback
import zlib

import numpy as np

__all__ = ["configure", "run", "make_report", "check_kernel", "bench_kernels", "seed_tables", "render_markdown",
           "PLOT_SIZE", "SCHEMA_PATH"]

SCHEMA_PATH = pathlib.Path(__file__).resolve().parent / "report.schema.json"
PLOT_SIZE = (960, 600)  # pixels of every PNG (figsize 9.6 x 6.0 in at 100 dpi)
_DPI = 100
SCHEMA_ID = "mlaref-report/1"

# The MLA benchmark's shapes when ggml-python is absent (the reference back-end).
MLA_REFERENCE = {"n_kv": (256, 512), "T": 32, "kv_chunk": 256}

# Mode presets: what --quick and the test-only --tiny change.
MODES = {
    "full": {"mla_n_kv": (512, 1024, 2048, 4096, 8192, 16384), "mla_repeats": 3, "bench_mb": 4.0,
             "bench_repeats": 5, "bench_types": None, "check_rows": 5},
    "quick": {"mla_n_kv": (512, 2048), "mla_repeats": 3, "bench_mb": 4.0, "bench_repeats": 5,
              "bench_types": ("f16", "q8_0", "iq4_nl", "q8_K"), "check_rows": 3},
    "tiny": {"mla_n_kv": (512,), "mla_repeats": 1, "bench_mb": 0.25, "bench_repeats": 1,
             "bench_types": ("q8_0",), "check_rows": 2},
}


# ----------------------------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------------------------
class Progress:
    """A one-line text progress bar on stderr (``[#####.....] 12/40 label``); silent when ``enabled`` is False."""

    def __init__(self, title: str, total: int, enabled: bool = True, width: int = 30):
        self.title, self.total, self.enabled, self.width = title, max(total, 1), enabled, width
        self.t0 = time.perf_counter()
        # On a terminal the bar redraws in place; in a log (CI, a pipe) only the final line is written.
        self.live = enabled and sys.stderr.isatty()

    def __call__(self, done: int, label: str = "") -> None:
        if not self.live:
            return
        fill = int(self.width * done / self.total)
        bar = "#" * fill + "." * (self.width - fill)
        print(f"\r{self.title:<14} [{bar}] {done}/{self.total} {label[:48]:<48}", end="", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.live:
            self(self.total, f"done in {time.perf_counter() - self.t0:.1f} s")
            print(file=sys.stderr, flush=True)
        else:
            print(f"{self.title:<14} {self.total}/{self.total} done in {time.perf_counter() - self.t0:.1f} s",
                  file=sys.stderr, flush=True)


def _q(value, unit: str, method: str) -> dict:
    """A figure with its unit and how it was obtained."""
    return {"value": value, "unit": unit, "method": method}


# ----------------------------------------------------------------------------------------------------------
# cpu
# ----------------------------------------------------------------------------------------------------------
def section_cpu() -> dict:
    """The ``cpu`` section: what this machine is and which ISA tokens it runs."""
    from mlaref.codegen import bench, build, cpu, dispatch
    from mlaref.codegen import isa as isa_mod

    isas = {}
    for info in isa_mod.ISAS.values():
        miss = cpu.missing(info.token)
        isas[info.token] = {"found": not miss, "missing": list(miss), "features": list(info.features),
                            "arch": info.arch}
    try:
        order = dispatch.candidates()
    except Exception as exc:  # a bad MLAREF_ISA must not stop the report
        order = []
        isas["_dispatch_error"] = {"found": False, "missing": [str(exc)], "features": [], "arch": ""}
    return {
        "status": "ok",
        "arch": isa_mod.host_arch(),
        "model": bench.cpu_model(),
        "logical_cpus": os.cpu_count() or 1,
        "compiler": build.compiler_version(),
        "isas": isas,
        "dispatch_order": order,
        "overrides": {k: os.environ.get(k) for k in ("MLAREF_ISA", "MLAREF_DISABLE_ISA") if os.environ.get(k)},
    }


# ----------------------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------------------
def _isa_skip_reason(token: str) -> str | None:
    """Why kernels of ``token`` cannot be built and run in this process (None when they can)."""
    from mlaref.codegen import cpu
    from mlaref.codegen import isa as isa_mod

    info = isa_mod.get(token)
    if info.cross:
        from mlaref.codegen import build

        qemu = build.cross_tools_missing(info.arch)
        where = ("pytest tests/kernels/test_neon.py checks them under qemu here" if qemu is None
                 else f"their qemu check needs a cross toolchain: {qemu}")
        return f"{info.arch} kernels do not run in this {isa_mod.host_arch()} process ({where})"
    miss = cpu.missing(token)
    if miss:
        return f"this CPU lacks {', '.join(miss)}"
    return None


def _build_one(family: str, isa: str) -> tuple[str, str, float]:
    """Build (or find in the cache) one module; runs in a worker process. Returns (status, reason, seconds)."""
    from mlaref.codegen import build

    t0 = time.perf_counter()
    try:
        build.load(family, isa)
        return "ok", "", time.perf_counter() - t0
    except Exception as exc:  # BuildError, or a missing compiler: recorded per module
        return "failed", f"{type(exc).__name__}: {exc}"[:4000], time.perf_counter() - t0


def section_build(show: bool, workers: int | None = None) -> dict:
    """Build every runnable (family, ISA) module, ``workers`` processes at a time (default: one per CPU).

    The compiler runs in worker processes (build.py redirects the process's stdout/stderr around a compile, so
    one process must not compile two modules at once); they leave the modules in the cache, and this process
    then imports them from there (``build.load`` on a cache hit only imports).
    """
    import concurrent.futures
    import multiprocessing

    from mlaref.codegen import build, catalog

    jobs = sorted({(s.family, s.isa) for s in catalog.catalog()})
    modules = {}
    todo = []
    for family, isa in jobs:
        entry = {"family": family, "isa": isa,
                 "kernels": sum(1 for s in catalog.catalog() if (s.family, s.isa) == (family, isa))}
        reason = _isa_skip_reason(isa)
        if reason:
            entry.update(status="skipped", reason=reason)
        else:
            todo.append((family, isa))
        modules[(family, isa)] = entry
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = Progress("build", len(todo), show)
    results = {}
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futs = {pool.submit(_build_one, f, i): (f, i) for f, i in todo}
            for k, fut in enumerate(concurrent.futures.as_completed(futs), 1):
                key = futs[fut]
                try:
                    results[key] = fut.result()
                except Exception as exc:  # a crashed worker: that module is reported failed
                    results[key] = ("failed", f"worker: {type(exc).__name__}: {exc}", 0.0)
                bar(k, f"{key[0]} {key[1]}")
    for k, key in enumerate(todo, 1):
        if key not in results or results[key][0] == "ok":
            t_parent = _build_one(*key)  # import from the cache (or build here, single-worker mode)
            prev = results.get(key, ("ok", "", 0.0))
            results[key] = (t_parent[0], t_parent[1], prev[2] + t_parent[2])
        if workers == 1:
            bar(k, f"{key[0]} {key[1]}")
    bar.close()
    for key, (status, reason, secs) in results.items():
        modules[key]["status"] = status
        if reason:
            modules[key]["reason"] = reason
        modules[key]["seconds"] = _q(secs, "s", "wall clock of build.load in a worker process plus the import "
                                                "here (a cache hit only imports the module)")
    out = [modules[k] for k in jobs]
    failed = [m for m in out if m["status"] == "failed"]
    return {"status": "failed" if failed else "ok", "cache_dir": str(build.cache_dir()), "modules": out,
            "workers": workers, "compile_flags": list(build.COMMON_CFLAGS)}


# ----------------------------------------------------------------------------------------------------------
# check: every kernel against the reference on the fixed case set
# ----------------------------------------------------------------------------------------------------------
def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _quant_inputs(rng, n_rows: int, n: int) -> np.ndarray:
    x = rng.standard_normal((n_rows, n)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-3, 4, size=(n_rows, 1)).astype(np.float32)
    m = min(32, n)
    if n_rows > 1:
        x[1, :m] = 0
    if n_rows > 2:
        x[2, :m] = (np.arange(m, dtype=np.float32) - 16) + np.float32(0.5)
        x[2, 0] = 127.0
    if n_rows > 3:
        x[3, :m] = np.where(np.arange(m) % 2 == 0, 3.0, -3.0).astype(np.float32)
    return x


def _sizes(block: int, extra=(576,)) -> list[int]:
    sizes = {block, 7 * block} | {n for n in extra if n % block == 0}
    return sorted(sizes)


def _variant_for(fmt, plan: str) -> str:
    if fmt.variants.get(plan) == plan:
        return plan
    for v, impl in fmt.variants.items():
        if impl == plan:
            return v
    raise LookupError(f"the reference {fmt.name} has no quantize variant implemented as {plan!r}")


def _same(got, want) -> tuple[bool, str]:
    g = np.ascontiguousarray(got).view(np.uint8).reshape(-1)
    w = np.ascontiguousarray(want).view(np.uint8).reshape(-1)
    if g.shape != w.shape:
        return False, f"{g.size} bytes, expected {w.size}"
    if np.array_equal(g, w):
        return True, ""
    bits = int(np.unpackbits(g ^ w).sum())
    first = int(np.flatnonzero(g != w)[0])
    return False, f"{bits} bits differ, first at byte {first}"


def check_kernel(name: str, n_rows: int = 5) -> dict:
    """Run kernel ``name`` on the fixed case set against the reference: ``{"status": pass|fail|skipped, ...}``."""
    from mlaref import reference as R
    from mlaref.codegen import catalog
    from mlaref.codegen import kernels as K

    spec = catalog.by_name()[name]
    rng = _rng(name)
    cases = 0
    fam = spec.family
    try:
        if fam == "dequantize_row":
            fmt = R.get_type(spec.type_x)
            for n in _sizes(fmt.block_size):
                x = _quant_inputs(rng, n_rows, n)
                variant = "ref" if "ref" in fmt.variants else next(iter(fmt.variants))
                data = R.quantize(x, fmt.name, variant=variant)
                ok, why = _same(K.dequantize(data, fmt.name, kernel=name), R.dequantize(data, fmt.name))
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases, "detail": f"n={n}: {why}"}
        elif fam == "quantize_row":
            fmt = R.get_type(spec.type_x)
            variant = _variant_for(fmt, spec.plan)
            for n in _sizes(fmt.block_size):
                big = np.full((n_rows, n + 3), np.nan, dtype=np.float32)
                big[:, :n] = _quant_inputs(rng, n_rows, n)
                x = big[:, :n]  # strided rows whose NaN padding must never be read
                want = R.quantize(np.ascontiguousarray(x), fmt.name, variant=variant)
                ok, why = _same(K.quantize(x, fmt.name, variant=variant, kernel=name), want)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases, "detail": f"n={n}: {why}"}
        elif fam == "convert_rows":
            src, dst = R.get_type(spec.type_x), R.get_type(spec.type_y)
            variant = _variant_for(dst, spec.plan)
            for n in _sizes(max(src.block_size, dst.block_size)):
                data = R.quantize(_quant_inputs(rng, n_rows, n), src.name, variant="ref")
                want = R.quantize(R.dequantize(data, src.name), dst.name, variant=variant)
                ok, why = _same(K.convert(data, src.name, dst.name, variant=variant, kernel=name), want)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases, "detail": f"n={n}: {why}"}
        elif fam == "vec_dot":
            from mlaref.reference.ops.vec_dot import vec_dot as ref_vec_dot

            plan = catalog.VEC_DOT_PLANS[spec.plan]
            element = spec.type_x in ("f32", "f16", "bf16")
            kquant = spec.type_x in ("q4_K", "q6_K")  # 256-value super-blocks
            for n in ([1, 9, 17, 192, 576] if element else [256, 768, 1536] if kquant else [32, 224, 192, 576]):
                x, y = _vec_dot_operands(R, rng, spec.type_x, spec.type_y, 3, 4, n)
                want = ref_vec_dot(x, spec.type_x, y, spec.type_y, n, plan=plan)
                got = K.vec_dot(x, spec.type_x, y, spec.type_y, n, plan=plan, kernel=name)
                ok, why = _same(got, want)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases, "detail": f"n={n}: {why}"}
        elif fam == "copy_rows":
            for (row_bytes, n_rep, ne), stream in itertools.product(
                    [(34, 1, (3, 2, 2)), (68, 16, (2, 3, 1)), (1152, 1, (1, 1, 1)), (18, 3, (4, 2, 3))], (0, 1)):
                ok, why = _check_copy_rows(K, name, rng, row_bytes, n_rep, ne, stream)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases,
                            "detail": f"rows {row_bytes}x{n_rep} ne {ne} stream {stream}: {why}"}
        elif fam == "concat_rows":
            for (ra, rb, ne), stream in itertools.product(
                    [(34, 34, (3, 2, 2)), (1024, 128, (5, 3, 1)), (256, 128, (1, 1, 1)), (18, 36, (4, 2, 3))], (0, 1)):
                ok, why = _check_concat_rows(K, name, rng, ra, rb, ne, stream)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases,
                            "detail": f"rows {ra}+{rb} ne {ne} stream {stream}: {why}"}
        elif fam == "mul_mat":
            cases = _check_mul_mat(R, name, spec, rng)
        elif fam == "flash_attn_ext":
            cases = _check_flash_attn(R, name, spec, rng)
        else:
            return {"status": "skipped", "cases": 0, "detail": f"the report has no check for family {fam!r} yet"}
    except _Mismatch as exc:
        return {"status": "fail", "cases": cases, "detail": str(exc)}
    except LookupError as exc:  # the reference lacks a variant / type the kernel implements
        return {"status": "skipped", "cases": cases, "detail": f"no reference to compare with: {exc}"}
    except Exception as exc:  # the kernel or its wrapper raised: a failed check, with the reason
        return {"status": "fail", "cases": cases, "detail": f"{type(exc).__name__}: {exc}"[:500]}
    return {"status": "pass", "cases": cases, "detail": ""}


_REF_CACHE: dict = {}  # reference results shared by the kernels of one (op, types) over ISAs, per process


class _Mismatch(Exception):
    """A kernel's bytes differ from the reference's (the message says where)."""


def _tensor_of(R, values: np.ndarray, type: str, ne, row_len: int | None = None):
    """A tensor of ``type`` holding ``values`` (rows, n); with ``row_len`` the rows are the first n values of
    longer rows (the KV-cache layout)."""
    from mlaref.reference.tensor import Tensor

    rows, n = values.shape
    full = values if row_len is None else np.concatenate([values, np.ones((rows, row_len - n), np.float32)], 1)
    if type == "f32":
        data = np.ascontiguousarray(full).view(np.uint8)
    else:
        data = R.quantize(full, type, variant="x86" if type == "q8_0" else "ref")
    data = np.ascontiguousarray(data).reshape(rows, -1)
    t = Tensor.from_bytes(data, type, (full.shape[1],) + tuple(ne[1:]))
    if row_len is None:
        return t
    return t.view(tuple(ne), (t.nb[0], t.nb[1], t.nb[1] * ne[1], t.nb[1] * ne[1] * ne[2]))


def _check_mul_mat(R, name, spec, rng) -> int:
    """mul_mat kernel vs ``MulMat_253(plan="mlaref_l16a1", variant="x86")``: a K tail with src0 broadcast over
    two src1 matrices, and a strided src1 (cache rows with the rope part skipped), 2 threads."""
    from mlaref.codegen.kernels import mm as KM
    from mlaref.reference.ops.mul_mat import MulMat_253

    tx, ty = spec.type_x, spec.type_y
    rng = _rng(f"mul_mat {tx} {ty}")  # the same inputs for every ISA of a pair: one reference result per pair
    block = tx not in ("f32", "f16", "bf16") or ty == "q8_0"
    k_tail, k_real = (96, 192) if block else (37, 200)
    if tx in ("q4_K", "q6_K"):
        k_tail, k_real = 768, 512
    cases = [(k_tail, (k_tail, 7, 1, 1), (k_tail, 9, 2, 1), None),
             (k_real, (k_real, 6, 1, 1), (k_real, 11, 1, 1), k_real + 64)]
    for i, (K, ane, bne, row_len) in enumerate(cases):
        key = ("mul_mat", tx, ty, i)
        if key not in _REF_CACHE:
            a = _tensor_of(R, rng.standard_normal((int(np.prod(ane[1:])), K)).astype(np.float32), tx, ane)
            b = _tensor_of(R, rng.standard_normal((int(np.prod(bne[1:])), K)).astype(np.float32), ty, bne, row_len)
            _REF_CACHE[key] = (a, b, MulMat_253(plan="mlaref_l16a1", variant="x86")(a, b))
        a, b, want = _REF_CACHE[key]
        got = KM.mul_mat(a, b, kernel=name, n_threads=2)
        ok, why = _same(got.storage(), want.storage())
        if not ok:
            raise _Mismatch(f"case {i} K={K} a{ane} b{bne}: {why}")
    return len(cases)


def _check_flash_attn(R, name, spec, rng) -> int:
    """flash_attn_ext kernel vs the reference's blocked order: Dk 192 / Dv 128, 2 heads, 70 cells with a partly
    masked row, k_step 16 and 32 with 3 KV chunks, 2 threads."""
    from mlaref.codegen.kernels import mm as KM
    from mlaref.reference.ops.flash_attn_ext import flash_attn_ext as ref_fa
    from mlaref.reference.tensor import Tensor

    t = spec.type_x
    rng = _rng(f"flash_attn_ext {t}")
    n_kv, nq, nh = 70, 5, 2
    q = Tensor.from_numpy((0.3 * rng.standard_normal((1, nh, nq, 192))).astype(np.float32))
    k = _tensor_of(R, rng.standard_normal((nh * n_kv, 192)).astype(np.float32), t, (192, n_kv, nh, 1))
    v = _tensor_of(R, rng.standard_normal((nh * n_kv, 128)).astype(np.float32), t, (128, n_kv, nh, 1))
    m = np.zeros((32, n_kv), np.float16)
    m[1, 10:40] = -np.inf
    mask = Tensor.from_numpy(m.reshape(1, 1, 32, n_kv), "f16")
    plans = [KM.fa_plan(16, 1, "libm"), KM.fa_plan(32, 3, "libm")]
    for plan in plans:
        key = ("flash_attn_ext", t, plan.name)
        if key not in _REF_CACHE:
            _REF_CACHE[key] = ref_fa(q, k, v, mask, 0.125, algorithm="blocked", plan=plan)
        want = _REF_CACHE[key]
        got = KM.flash_attn_ext(q, k, v, mask, 0.125, plan=plan, kernel=name, n_threads=2, q_block=2)
        ok, why = _same(got.storage(), want.storage())
        if not ok:
            raise _Mismatch(f"plan {plan.name}: {why}")
    return len(plans)


def _vec_dot_operands(R, rng, x_type, y_type, m, n_y, n):
    xf = rng.standard_normal((m, n)).astype(np.float32)
    yf = rng.standard_normal((n_y, n)).astype(np.float32)
    if x_type in ("f32", "f16", "bf16"):
        x = xf.view(np.uint8) if x_type == "f32" else R.quantize(xf, x_type)
        y = yf.view(np.uint8) if y_type == "f32" else R.quantize(yf, y_type)
        return np.ascontiguousarray(x).reshape(m, -1), np.ascontiguousarray(y).reshape(n_y, -1)
    y_variant = "iqk" if y_type.endswith("_x4") else "x86"
    return R.quantize(xf, x_type), R.quantize(yf, y_type, variant=y_variant)


def _check_copy_rows(K, name, rng, row_bytes, n_rep, ne, stream) -> tuple[bool, str]:
    """dst row (i1,i2,i3) = n_rep copies of src row (i1,i2,i3) at padded byte strides; bytes between rows kept;
    ``stream``: the kernel's streaming-store choice (the same bytes either way)."""
    _spec, fn, ffi = K.resolve("copy_rows", "bytes", None, "ref", kernel=name)
    s_nb1 = row_bytes + 7
    s_nb = (s_nb1, s_nb1 * ne[0] + 3, (s_nb1 * ne[0] + 3) * ne[1] + 1)
    src = rng.integers(0, 256, size=s_nb[2] * ne[2] + 16, dtype=np.uint8)
    d_nb1 = row_bytes * n_rep + 5
    d_nb = (d_nb1, d_nb1 * ne[0] + 2, (d_nb1 * ne[0] + 2) * ne[1])
    total = d_nb[2] * ne[2]
    dst = np.full(total + 64, 0x5A, dtype=np.uint8)
    fn(ffi.cast("uint8_t *", dst.ctypes.data), ffi.cast("const uint8_t *", src.ctypes.data), row_bytes, n_rep,
       *ne, *s_nb, *d_nb, stream)
    want = np.full(total + 64, 0x5A, dtype=np.uint8)
    for i3 in range(ne[2]):
        for i2 in range(ne[1]):
            for i1 in range(ne[0]):
                s0 = i1 * s_nb[0] + i2 * s_nb[1] + i3 * s_nb[2]
                d0 = i1 * d_nb[0] + i2 * d_nb[1] + i3 * d_nb[2]
                want[d0:d0 + row_bytes * n_rep] = np.tile(src[s0:s0 + row_bytes], n_rep)
    return _same(dst, want)


def _check_concat_rows(K, name, rng, ra, rb, ne, stream) -> tuple[bool, str]:
    """dst row (i1,i2,i3) = a row ++ b row at padded byte strides; bytes between rows kept; ``stream`` as for
    copy_rows."""
    _spec, fn, ffi = K.resolve("concat_rows", "bytes", None, "ref", kernel=name)

    def strides(row, pad):
        return (row + pad, (row + pad) * ne[0] + 3, ((row + pad) * ne[0] + 3) * ne[1] + 1)

    a_nb, b_nb, d_nb = strides(ra, 7), strides(rb, 2), strides(ra + rb, 5)
    a = rng.integers(0, 256, size=a_nb[2] * ne[2], dtype=np.uint8)
    b = rng.integers(0, 256, size=b_nb[2] * ne[2], dtype=np.uint8)
    total = d_nb[2] * ne[2]
    dst = np.full(total + 64, 0x5A, dtype=np.uint8)
    fn(ffi.cast("uint8_t *", dst.ctypes.data), ffi.cast("const uint8_t *", a.ctypes.data),
       ffi.cast("const uint8_t *", b.ctypes.data), ra, rb, *ne, *a_nb, *b_nb, *d_nb, stream)
    want = np.full(total + 64, 0x5A, dtype=np.uint8)
    for i3 in range(ne[2]):
        for i2 in range(ne[1]):
            for i1 in range(ne[0]):
                d0 = i1 * d_nb[0] + i2 * d_nb[1] + i3 * d_nb[2]
                a0 = i1 * a_nb[0] + i2 * a_nb[1] + i3 * a_nb[2]
                b0 = i1 * b_nb[0] + i2 * b_nb[1] + i3 * b_nb[2]
                want[d0:d0 + ra] = a[a0:a0 + ra]
                want[d0 + ra:d0 + ra + rb] = b[b0:b0 + rb]
    return _same(dst, want)


def section_check(build_result: dict, show: bool, n_rows: int) -> dict:
    """The ``check`` section: :func:`check_kernel` for every kernel of a built module; per-ISA verdicts."""
    from mlaref.codegen import catalog

    built = {(m["family"], m["isa"]): m for m in build_result.get("modules", [])}
    specs = catalog.catalog()
    bar = Progress("check", len(specs), show)
    kernels = {}
    for k, spec in enumerate(specs):
        bar(k, spec.name)
        mod = built.get((spec.family, spec.isa))
        if mod is None:
            kernels[spec.name] = {"status": "skipped", "cases": 0, "detail": "its module was not built"}
        elif mod["status"] != "ok":
            kernels[spec.name] = {"status": "skipped" if mod["status"] == "skipped" else "fail", "cases": 0,
                                  "detail": ("skipped: " if mod["status"] == "skipped" else "build failed: ")
                                  + mod.get("reason", "")[:300]}
        else:
            kernels[spec.name] = check_kernel(spec.name, n_rows)
        kernels[spec.name].update(family=spec.family, isa=spec.isa)
    bar.close()
    per_isa = {}
    for name, r in kernels.items():
        d = per_isa.setdefault(r["isa"], {"pass": 0, "fail": 0, "skipped": 0, "reasons": set()})
        d[r["status"]] += 1
        if r["status"] == "skipped":
            d["reasons"].add(r["detail"])
    isas = {}
    for isa, d in sorted(per_isa.items()):
        if d["fail"]:
            state = "failed"
        elif d["pass"] and not d["skipped"]:
            state = "verified"
        elif d["pass"]:
            state = "partly verified"
        else:
            state = "skipped"
        isas[isa] = {"state": state, "pass": d["pass"], "fail": d["fail"], "skipped": d["skipped"],
                     "reasons": sorted(d["reasons"])}
    n_fail = sum(1 for r in kernels.values() if r["status"] == "fail")
    return {
        "status": "failed" if n_fail else "ok",
        "method": "bytes of the kernel's output equal to the NumPy reference's (mlaref.reference) on the fixed "
                  "case set of codegen/report.py (seeded from the kernel name)",
        "totals": {s: sum(1 for r in kernels.values() if r["status"] == s) for s in ("pass", "fail", "skipped")},
        "isas": isas,
        "kernels": kernels,
    }


# ----------------------------------------------------------------------------------------------------------
# bench kernels
# ----------------------------------------------------------------------------------------------------------
def bench_kernels(*, types=None, size_mb: float = 4.0, repeats: int = 5, seed: int = 0) -> dict:
    """MB/s of float32 data: the dispatched C kernel vs the NumPy reference vs upstream ggml, per format/direction.

    Quantize uses the ``ref`` variant for all three (ggml: ``quantize_row_<type>_ref``); dequantize reads the same
    bytes in all three (ggml: ``to_float``); ggml's row functions are called once on the whole buffer (the rows
    are whole blocks). One thread each. (codegen/bench/kernels.py's ``compare_kernels`` is the per-kernel,
    per-thread-count comparison of ``mlaref bench kernels``.)
    """
    from mlaref import reference as R
    from mlaref.codegen import bench, catalog
    from mlaref.codegen.peers import ggml as ggml_peer
    from mlaref.codegen import kernels as K

    dq = [t for t in catalog.DEQUANT_TYPES if t in R.registry()]
    names = list(types) if types else dq
    rng = np.random.default_rng(seed)
    rows = []
    for t in names:
        fmt = R.get_type(t)
        n = fmt.block_size * max(1, 4096 // fmt.block_size)
        n_rows = max(1, round(size_mb * 1e6 / 4 / n))
        x = rng.standard_normal((n_rows, n)).astype(np.float32)
        nbytes = x.nbytes
        q_variant = "ref" if "ref" in fmt.variants else next(iter(fmt.variants))
        data = R.quantize(x, t, variant=q_variant)
        for direction in ("quantize", "dequantize"):
            fns, reasons = {}, {}
            if direction == "quantize":
                if "ref" not in catalog.QUANT_VARIANTS.get(t, {}):
                    reasons["kernel"] = f"no quantize_row kernel with the ref variant for {t}"
                else:
                    fns["kernel"] = lambda: K.quantize(x, t, variant="ref")
                if "ref" in fmt.variants:
                    fns["reference"] = lambda: R.quantize(x, t, variant="ref")
                else:
                    reasons["reference"] = f"the reference {t} has no ref variant"
                # one C call over the whole buffer (rows are whole blocks), not one ctypes call per row
                peer = (lambda: ggml_peer.from_float_ref(t, x.reshape(1, -1)))
            else:
                fns["kernel"] = lambda: K.dequantize(data, t)
                fns["reference"] = lambda: R.dequantize(data, t)
                peer = (lambda: ggml_peer.to_float(t, data.reshape(1, -1), n_rows * n))
            if not ggml_peer.available():
                reasons["ggml"] = ggml_peer.unavailable_reason()
            else:
                fns["ggml"] = peer
            live = {}
            for k, fn in fns.items():
                try:
                    fn()
                    live[k] = fn
                except Exception as exc:  # a contender that cannot run here is n/a with the reason
                    reasons[k] = f"{type(exc).__name__}: {exc}"[:300]
            timings = bench.measure_interleaved(live, repeats=repeats, warmup=0) if live else {}
            row = {"format": t, "direction": direction, "float32_bytes": nbytes}
            for k in ("kernel", "reference", "ggml"):
                if k in timings:
                    row[k] = {"status": "ok", "throughput": timings[k].throughput(nbytes),
                              "seconds": timings[k].to_json()}
                else:
                    row[k] = {"status": "n/a", "reason": reasons.get(k, "not run")}
            if "kernel" in timings:
                fam = "quantize_row" if direction == "quantize" else "dequantize_row"
                try:
                    row["kernel_name"] = K.resolve(fam, t, None, "ref")[0].name
                except Exception:  # the name is informative only
                    pass
                for other in ("reference", "ggml"):
                    if other in timings:
                        row[f"speedup_kernel_over_{other}"] = _q(
                            timings[other].median / timings["kernel"].median, "1",
                            f"median time of {other} / median time of the kernel (> 1: kernel faster)")
            rows.append(row)
    return {
        "benchmark": "mlaref bench kernels",
        "method": {"timer": "time.perf_counter, one call per run; contenders interleaved, order shuffled each round", "warmup": 1,
                   "repeats": repeats, "statistic": "median (min and max also given)",
                   "throughput_unit": "MB/s of float32 data (quantize: input; dequantize: output); MB = 10^6 B",
                   "threads": 1,
                   "data": f"standard normal float32 rows of ~4096 values, about {size_mb} MB per format"},
        "environment": bench.environment(),
        "results": rows,
    }


def format_bench_kernels(result: dict) -> str:
    def rate(c):
        if c["status"] != "ok":
            return "n/a"
        return f"{c['throughput']['median']:.0f}"

    head = ("format", "direction", "kernel MB/s", "reference MB/s", "ggml MB/s", "kernel/ref", "kernel/ggml")
    lines = []
    for r in result["results"]:
        lines.append((r["format"], r["direction"], rate(r["kernel"]), rate(r["reference"]), rate(r["ggml"]),
                      f"{r['speedup_kernel_over_reference']['value']:.1f}" if "speedup_kernel_over_reference" in r
                      else "n/a",
                      f"{r['speedup_kernel_over_ggml']['value']:.2f}" if "speedup_kernel_over_ggml" in r else "n/a"))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*x) for x in lines)]
    out.append(f"\n{result['method']['throughput_unit']}; median of {result['method']['repeats']}; 1 thread")
    return "\n".join(out)


def _ops_cases(rng) -> list[tuple]:
    """(name, shapes, {contender: callable}) for the ops of one MLA layer at small shapes."""
    from mlaref.codegen.peers import ggml_ops as ggml_ops
    from mlaref.codegen.peers import ggml as ggml_peer
    from mlaref.codegen import kernels as K
    from mlaref.reference.ops.concat import concat
    from mlaref.reference.ops.cpy import cast
    from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
    from mlaref.reference.ops.mul_mat import mul_mat
    from mlaref.reference.ops.repeat import repeat
    from mlaref.reference.tensor import Tensor

    def t(shape, type="f32", scale=1.0):
        return Tensor.from_numpy((scale * rng.standard_normal(shape)).astype(np.float32), type)

    peer = ggml_peer.available()
    cases = []
    x = t((64, 4096))
    cases.append(("cast f32 -> f16", "[4096, 64]",
                  {"reference": lambda: cast(x, "f16"), "kernel": lambda: K.cpy(x, "f16"),
                   **({"ggml": lambda: ggml_ops.cast(x, "f16")} if peer else {})}))
    rope = t((1, 256, 64), "f16")
    ne = (64, 256, 16, 1)
    cases.append(("repeat f16 (k_rope over 16 heads)", "[64, 256, 1] -> [64, 256, 16]",
                  {"reference": lambda: repeat(rope, ne), "kernel": lambda: K.repeat(rope, ne),
                   **({"ggml": lambda: ggml_ops.repeat(rope, ne)} if peer else {})}))
    a, b = t((16, 256, 128), "f16"), t((16, 256, 64), "f16")
    cases.append(("concat f16 dim 0 (K = nope | rope)", "[128 | 64, 256, 16]",
                  {"reference": lambda: concat(a, b, 0), "kernel": lambda: K.concat(a, b, 0),
                   **({"ggml": lambda: ggml_ops.concat(a, b, 0)} if peer else {})}))
    w, c = t((256, 512), "f16", 0.05), t((64, 512))
    try:
        from mlaref.codegen.kernels import mm as KM
    except ImportError:
        KM = None
    mm_kernel = {"kernel": lambda: KM.mul_mat(w, c)} if KM else {}
    cases.append(("mul_mat f16 x f32 (wkv_b slice)", "[512, 256] x [512, 64]",
                  {"reference": lambda: mul_mat(w, c, plan="mlaref_l16a1"), **mm_kernel,
                   **({"ggml": lambda: ggml_ops.mul_mat(w, c)} if peer else {})}))
    q = t((2, 16, 192)).permute(0, 2, 1, 3)
    k, v = t((2, 256, 192), "f16"), t((2, 256, 128), "f16")
    mask = Tensor.from_numpy(np.zeros((16, 256), dtype=np.float32), "f16")
    cases.append(("flash_attn_ext f16 K/V", "q [192, 16, 2], K [192, 256, 2], V [128, 256, 2]",
                  {"reference": lambda: flash_attn_ext(q, k, v, mask, 0.07),
                   **({"kernel": lambda: KM.flash_attn_ext(q, k, v, mask, 0.07)} if KM else {}),
                   **({"ggml": lambda: ggml_ops.flash_attn_ext(q, k, v, mask, 0.07)} if peer else {})}))
    return cases


def bench_ops(*, repeats: int = 5, seed: int = 0) -> dict:
    """Seconds per call of the ops of one MLA layer at small shapes: the NumPy reference, mlaref's kernels (where
    the op has a kernel path) and upstream ggml through ggml-python (one fresh context per call)."""
    from mlaref.codegen import bench

    from mlaref.codegen.peers import ggml as ggml_peer

    rows = []
    for name, shapes, fns in _ops_cases(np.random.default_rng(seed)):
        live, reasons = {}, {}
        for k, fn in fns.items():
            try:
                fn()
                live[k] = fn
            except Exception as exc:  # a contender that cannot run here is n/a with the reason
                reasons[k] = f"{type(exc).__name__}: {exc}"[:300]
        if not ggml_peer.available():
            reasons["ggml"] = ggml_peer.unavailable_reason()
        timings = bench.measure_interleaved(live, repeats=repeats, warmup=0) if live else {}
        row = {"op": name, "shapes": shapes}
        for k in ("reference", "kernel", "ggml"):
            if k in timings:
                row[k] = {"status": "ok", "seconds": timings[k].to_json()}
            else:
                row[k] = {"status": "n/a", "reason": reasons.get(k, "no kernel path for this op")}
        for k in ("kernel", "ggml"):
            if k in timings and "reference" in timings:
                row[f"speedup_{k}_over_reference"] = _q(timings["reference"].median / timings[k].median, "1",
                                                        f"median time of the reference / median time of {k}")
        rows.append(row)
    return {
        "benchmark": "mlaref bench ops",
        "method": {"timer": "time.perf_counter, one call per run; contenders interleaved, order shuffled each round", "warmup": 1,
                   "repeats": repeats, "statistic": "median (min and max also given)", "threads": 1,
                   "ggml": "ggml_ops.run: a fresh ggml context and graph per call, inputs copied in and the "
                           "result copied out (that overhead is part of its time)"},
        "environment": bench.environment(),
        "results": rows,
    }


def format_bench_ops(result: dict) -> str:
    def sec(c):
        return f"{1e3 * c['seconds']['median']:.2f}" if c["status"] == "ok" else "n/a"

    head = ("op", "shapes", "reference ms", "kernel ms", "ggml ms", "kernel/ref", "ggml/ref")
    lines = [(r["op"], r["shapes"], sec(r["reference"]), sec(r["kernel"]), sec(r["ggml"]),
              f"{r['speedup_kernel_over_reference']['value']:.1f}" if "speedup_kernel_over_reference" in r else "n/a",
              f"{r['speedup_ggml_over_reference']['value']:.1f}" if "speedup_ggml_over_reference" in r else "n/a")
             for r in result["results"]]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*x) for x in lines)]
    out.append(f"\nmedian of {result['method']['repeats']} calls, 1 thread; speed-ups: reference time / time")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# seed tables
# ----------------------------------------------------------------------------------------------------------
def seed_tables(contexts=None) -> dict:
    """KV cache and compute buffer (f32 = main, direct = PR, chunked = mlaref) per context from the allocator
    model, with the seed's and ik_llama.cpp's printed strings beside each modelled cell."""
    from mlaref.reference import alloc
    from mlaref.reference.hparams import preset

    hp = preset("deepseek-v2-lite")
    ctxs = sorted(contexts or alloc.SEED_TABLE)
    rows = []
    mib_method = "llama.cpp's %.2f of bytes / 1024 / 1024"
    for n in ctxs:
        kv = alloc.kv_cache_bytes(hp, n, "f16")
        row = {"n_ctx": n, "kv_cache": {"bytes": _q(kv, "B", "n_layer * n_ctx * row_size(f16, 576) "
                                                             "(alloc.kv_cache_bytes)"),
                                        "mib": _q(alloc.mib(kv), "MiB", mib_method)}}
        seed = alloc.SEED_TABLE.get(n)
        printed = alloc.PRINTED_TABLE.get(n)
        row["kv_cache"]["seed"] = seed[0] if seed else None
        for v in ("f32", "direct", "chunked"):
            b = alloc.compute_buffer(hp, n, variant=v).buffer_size
            cell = {"bytes": _q(b, "B", f"ggml-alloc model over the {v} worst-case reserve graph (ubatch 512), "
                                        "max_size + 32 (alloc.compute_buffer)"),
                    "mib": _q(alloc.mib(b), "MiB", mib_method)}
            col = alloc.VARIANT_COLUMN[v]
            if col and seed:
                i = 1 if col == "PR" else 2
                cell["seed"] = seed[i]
                cell["ik_prints"] = printed[i - 1] if printed else None
            row[v] = cell
        rows.append(row)
    checks = []
    for r in rows:
        if r["kv_cache"]["seed"] is not None:
            checks.append({"name": f"seed kv_cache {r['n_ctx']}", "passed": r["kv_cache"]["mib"]["value"]
                           == r["kv_cache"]["seed"]})
        for v in ("f32", "direct"):
            c = r[v]
            if c.get("ik_prints") is not None:
                checks.append({"name": f"seed compute buffer {v} {r['n_ctx']} = ik_llama.cpp's print",
                               "passed": c["mib"]["value"] == c["ik_prints"]})
    return {
        "status": "ok" if all(c["passed"] for c in checks) else "failed",
        "model": hp.name, "cache_type": "f16", "ubatch": 512,
        "note": "the seed's four .02 cells (main 32768/65536/131072, PR 131072) read .01 in ik_llama.cpp's own "
                "output for the same graph (upstream facts §6.6); the model reproduces ik_llama.cpp's print",
        "rows": rows,
        "checks": checks,
    }


# ----------------------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: pathlib.Path, what: str) -> dict:
    fig.savefig(path, dpi=_DPI)
    _plt().close(fig)
    return {"file": path.name, "what": what, "width_px": PLOT_SIZE[0], "height_px": PLOT_SIZE[1]}


def _figure():
    plt = _plt()
    return plt.subplots(figsize=(PLOT_SIZE[0] / _DPI, PLOT_SIZE[1] / _DPI), dpi=_DPI)


def plot_seed_tables(st: dict, out: pathlib.Path) -> dict:
    fig, ax = _figure()
    xs = [r["n_ctx"] for r in st["rows"]]
    for v, style in (("f32", "o-"), ("direct", "s-"), ("chunked", "^-")):
        ax.plot(xs, [r[v]["bytes"]["value"] / 2**20 for r in st["rows"]], style, label=f"compute buffer, {v} (model)")
    seed_x = [r["n_ctx"] for r in st["rows"] if r["direct"].get("seed")]
    for v, mk in (("direct", "x"), ("f32", "+")):
        ax.plot(seed_x, [float(r[v]["seed"]) for r in st["rows"] if r[v].get("seed")], mk, color="black",
                markersize=10, linestyle="none", label=f"seed, {'PR' if v == 'direct' else 'main'}")
    ax.plot(xs, [r["kv_cache"]["bytes"]["value"] / 2**20 for r in st["rows"]], "--", color="grey", label="KV cache")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("MiB")
    ax.set_title(f"{st['model']}: CPU compute buffer and KV cache (f16 cache, ubatch 512)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out / "compute_buffer.png", "compute buffer (allocator model) and KV cache vs context, "
                                                  "with the seed's published cells")


def plot_mla(mla: dict, out: pathlib.Path) -> list[dict]:
    from mlaref.codegen.bench.mla import SEED_PP

    rows = mla["rows"]
    tag = "" if mla["backend"] != "ggml" else "_ggml"
    xs = [r["n_kv"] for r in rows]
    plots = []
    fig, ax = _figure()
    ax.plot(xs, [r["speedup_direct_over_f32"]["value"] for r in rows], "o-",
            label=f"direct/f32 per layer, this CPU ({mla['backend']})")
    if all("speedup_direct_over_f32_min" in r for r in rows):
        ax.plot(xs, [r["speedup_direct_over_f32_min"]["value"] for r in rows], "o:", color="C0", alpha=0.6,
                label="direct/f32 per layer, ratio of the fastest runs")
    ax.plot(xs, [r["speedup_chunked_over_direct"]["value"] for r in rows], "s-", label="chunked/direct per layer")
    if all("speedup_kv_build_direct_over_f32" in r for r in rows):
        ax.plot(xs, [r["speedup_kv_build_direct_over_f32"]["value"] for r in rows], "v-.",
                label="direct/f32, K/V build alone")
    ax.plot(list(SEED_PP), [v[2] for v in SEED_PP.values()], "x--", color="black",
            label="seed: PR/main whole-model pp-N (Ryzen-7950X)")
    est = mla.get("pp_estimate") or []
    if est:
        ax.plot([e["N"] for e in est], [e["speedup_direct_over_f32"]["value"] for e in est], "d:",
                label="direct/f32 attention-only pp-N estimate")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n_kv (tokens in the cache) / N (prompt length)")
    ax.set_ylabel("speed-up (ratio of times, > 1: faster)")
    ax.set_title(f"PR #253 speed-up: per-layer K/V build + attention, T={mla['shapes']['T']}, "
                 f"{mla['n_threads']} thread(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.append(_save(fig, out / f"mla_speedup{tag}.png", f"{mla['backend']} back-end: direct/f32 and "
                                                            "chunked/direct per-layer speed-up vs n_kv, beside the "
                                                            "seed's pp-N speed-up"))
    fig, ax = _figure()
    for v, style in (("f32", "o-"), ("direct", "s-"), ("chunked", "^-")):
        med = np.array([r[v]["median"] for r in rows])
        lo = med - np.array([r[v]["min"] for r in rows])
        hi = np.array([r[v]["max"] for r in rows]) - med
        ax.errorbar(xs, med, yerr=[lo, hi], fmt=style, capsize=3, label=v)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n_kv")
    ax.set_ylabel("seconds per layer (median; bars: min-max)")
    ax.set_title(f"K/V build + flash attention per layer ({mla['backend']} back-end)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.append(_save(fig, out / f"mla_times{tag}.png", f"{mla['backend']} back-end: per-layer seconds of the "
                                                          "three variants vs n_kv"))
    return plots


def plot_bench_kernels(bk: dict, out: pathlib.Path) -> dict:
    fig, ax = _figure()
    labels = [f"{r['format']}\n{r['direction'][:5]}" for r in bk["results"]]
    x = np.arange(len(labels))
    w = 0.27
    for j, k in enumerate(("kernel", "reference", "ggml")):
        vals = [r[k]["throughput"]["median"] if r[k]["status"] == "ok" else 0.0 for r in bk["results"]]
        ax.bar(x + (j - 1) * w, vals, w, label=k)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("MB/s of float32 data (median)")
    ax.set_title("quantize / dequantize throughput, 1 thread")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out / "kernel_throughput.png", "MB/s per format and direction: kernel, reference, ggml")


# ----------------------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------------------
def _run_section(name: str, fn, *args):
    t0 = time.perf_counter()
    try:
        res = fn(*args)
    except Exception as exc:  # a broken piece is reported, the report goes on
        res = {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"[:2000],
               "traceback": traceback.format_exc()[-4000:]}
    res["seconds"] = _q(time.perf_counter() - t0, "s", "wall clock of the section")
    return res


def make_report(out: pathlib.Path, mode: str = "full", show: bool = True, n_threads: int | None = None) -> dict:
    """Run every section, write report.json, report.md and the plots into ``out``; return the report dict."""
    from mlaref.codegen import bench

    from mlaref.codegen.bench import mla as bench_mla

    from mlaref.codegen.peers import ggml as ggml_peer

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    cfg = MODES[mode]
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    sections: dict[str, dict] = {}
    load_start = _load_average("at the start of the report")
    print(f"mlaref report ({mode}) -> {out}", file=sys.stderr)

    sections["cpu"] = _run_section("cpu", section_cpu)
    sections["build"] = _run_section("build", section_build, show)
    if sections["build"]["status"] == "skipped":
        sections["check"] = {"status": "skipped", "reason": f"build: {sections['build']['reason']}"}
    else:
        sections["check"] = _run_section("check", section_check, sections["build"], show, cfg["check_rows"])
    sections["seed_tables"] = _run_section("seed_tables", seed_tables)

    def bench_kernels_section():
        if show:
            print("bench kernels ...", file=sys.stderr, flush=True)
        r = bench_kernels(types=cfg["bench_types"], size_mb=cfg["bench_mb"], repeats=cfg["bench_repeats"])
        r["status"] = "ok"
        return r

    sections["bench_kernels"] = _run_section("bench_kernels", bench_kernels_section)

    def mla_section(backend: str):
        from mlaref.codegen.bench.mla import _kernels_available

        if backend == "ggml":
            if not ggml_peer.available():
                return {"status": "skipped", "reason": ggml_peer.unavailable_reason()}
            kw = {"n_kv": cfg["mla_n_kv"], "backend": "ggml"}
            why_not = ""
        else:
            why_not = _kernels_available()
            if why_not is None:
                kw = {"n_kv": cfg["mla_n_kv"], "backend": "kernels"}
            else:
                # The NumPy reference is far too slow for the real shapes: T 32, 2 heads, two chunks at n_kv 512.
                kw = {"n_kv": MLA_REFERENCE["n_kv"], "T": MLA_REFERENCE["T"], "kv_chunk": MLA_REFERENCE["kv_chunk"],
                      "backend": "reference"}
        bar = Progress(f"bench mla {kw['backend']}", len(kw["n_kv"]), show)
        r = bench_mla.run_mla(repeats=cfg["mla_repeats"], n_threads=n_threads,
                              progress=lambda d, t, label: bar(d, label), **kw)
        bar.close()
        r["status"] = "ok"
        if r["backend"] == "reference":
            r["note"] = (f"the generated mul_mat / flash_attn_ext kernels cannot run here ({why_not}): the seed's "
                         "speed claim was not measured with them; the reference back-end ran at reduced shapes to "
                         "exercise the pipeline")
        return r

    def bench_ops_section():
        r = bench_ops(repeats=cfg["bench_repeats"])
        r["status"] = "ok"
        return r

    sections["bench_ops"] = _run_section("bench_ops", bench_ops_section)

    def bench_types_section():
        if show:
            print("bench types (reference vs gguf-py) ...", file=sys.stderr, flush=True)
        fmts = list(cfg["bench_types"]) if cfg["bench_types"] else None
        r = bench.bench_types(size_mb=cfg["bench_mb"], repeats=max(5, cfg["bench_repeats"]), formats=fmts)
        r["status"] = "ok"
        return r

    sections["bench_types"] = _run_section("bench_types", bench_types_section)
    sections["mla"] = _run_section("mla", mla_section, "kernels")
    sections["mla_ggml"] = _run_section("mla_ggml", mla_section, "ggml")

    checks = _collect_checks(sections)
    failed = [c for c in checks if not c["passed"]]
    plots, plot_status = [], {"status": "ok"}
    try:
        _plt()
    except ImportError as exc:
        plot_status = {"status": "skipped", "reason": f"matplotlib is not installed ({exc}); pip install matplotlib"}
    if plot_status["status"] == "ok":
        for name, fn in (("seed_tables", plot_seed_tables), ("mla", plot_mla), ("mla_ggml", plot_mla),
                         ("bench_kernels", plot_bench_kernels)):
            if sections[name].get("status") != "ok" and name != "seed_tables":
                continue
            if name == "seed_tables" and "rows" not in sections[name]:
                continue
            try:
                r = fn(sections[name], out)
                plots.extend(r if isinstance(r, list) else [r])
            except Exception as exc:  # one broken plot must not cost the others
                plots.append({"file": None, "what": name, "error": f"{type(exc).__name__}: {exc}"})
    plot_status["plots"] = plots

    report = {
        "schema": SCHEMA_ID,
        "mlaref_version": _version(),
        "created": started,
        "mode": mode,
        "command": "mlaref report" + ("" if mode == "full" else f" --{mode}"),
        "environment": bench.environment() | {"ggml_python": ggml_peer.available(), "load_average": load_start},
        "runtime": _q(time.perf_counter() - t_start, "s", "wall clock of the whole report"),
        "sections": sections,
        "plots": plot_status,
        "checks": {"total": len(checks), "failed": len(failed), "list": checks},
        "skipped": _collect_skips(sections, plot_status),
        "exit_code": 1 if failed else 0,
    }
    report["runtime"]["value"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report


def _load_average(when: str) -> dict:
    """os.getloadavg() (1, 5, 15 minutes): timings on a machine busy with other work are noisier."""
    try:
        value = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        value = None
    return _q(value, "runnable processes", f"os.getloadavg() over 1, 5 and 15 minutes, {when}")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _version() -> str:
    try:
        import mlaref

        return mlaref.__version__
    except Exception:  # an uninstalled tree
        return "unknown"


def _collect_checks(sections: dict) -> list[dict]:
    checks = []
    chk = sections.get("check", {})
    for name, r in chk.get("kernels", {}).items():
        if r["status"] in ("pass", "fail"):
            checks.append({"name": f"kernel {name}", "passed": r["status"] == "pass"})
    for m in sections.get("build", {}).get("modules", []):
        if m["status"] == "failed":
            checks.append({"name": f"build {m['family']} {m['isa']}", "passed": False})
    checks += sections.get("seed_tables", {}).get("checks", [])
    for r in sections.get("bench_types", {}).get("results", []):
        if r["same_result"]["value"] is not None:
            checks.append({"name": f"reference {r['format']} {r['direction']} equals gguf-py",
                           "passed": bool(r["same_result"]["value"])})
    for sec in ("mla", "mla_ggml"):
        m = sections.get(sec, {})
        for r in m.get("rows", []):
            if "f32_equals_direct" in r:
                checks.append({"name": f"mla ({m['backend']}) f32 output equals direct output, n_kv {r['n_kv']}",
                               "passed": bool(r["f32_equals_direct"]["value"])})
    return checks


def _collect_skips(sections: dict, plots: dict) -> list[dict]:
    out = [{"what": f"section {k}", "reason": v["reason"]} for k, v in sections.items()
           if v.get("status") == "skipped"]
    if plots["status"] == "skipped":
        out.append({"what": "plots", "reason": plots["reason"]})
    for isa, d in sections.get("check", {}).get("isas", {}).items():
        if d["state"] == "skipped":
            out.append({"what": f"ISA {isa}", "reason": "; ".join(d["reasons"])})
    mla = sections.get("mla", {})
    if mla.get("backend") == "reference":
        out.append({"what": "mla on mlaref's kernels (the seed's speed claim)", "reason": mla.get("note", "")})
    for r in sections.get("bench_kernels", {}).get("results", []):
        for who in ("kernel", "reference", "ggml"):
            if r[who]["status"] != "ok":
                out.append({"what": f"bench {r['format']} {r['direction']} {who}", "reason": r[who]["reason"]})
    for r in sections.get("bench_ops", {}).get("results", []):
        for who in ("kernel", "reference", "ggml"):
            if r[who]["status"] != "ok":
                out.append({"what": f"bench op {r['op']} {who}", "reason": r[who]["reason"]})
    return out


# ----------------------------------------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------------------------------------
def _skipped(sec: dict) -> str | None:
    if sec.get("status") == "skipped":
        return f"skipped: {sec.get('reason', 'unknown reason')}\n"
    return None  # rendered as nothing


def _first(names, k: int = 8) -> str:
    names = list(names)
    more = f" and {len(names) - k} more (report.json lists all)" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def render_markdown(r: dict) -> str:
    s = r["sections"]
    env = r["environment"]
    L = [f"# mlaref report ({r['mode']})", "",
         f"Created {r['created']} by `{r['command']}` in {r['runtime']['value']:.1f} s; mlaref {r['mlaref_version']}, "
         f"Python {env.get('python')}, NumPy {env.get('numpy')}, ggml-python {'yes' if env.get('ggml_python') else 'no'}; "
         f"load average at the start {env.get('load_average', {}).get('value')} (1/5/15 min) on "
         f"{s['cpu'].get('logical_cpus', '?')} logical CPUs.",
         "", f"**Checks: {r['checks']['total'] - r['checks']['failed']} of {r['checks']['total']} passed"
         f"{'' if not r['checks']['failed'] else ' -- FAILED: ' + _first(c['name'] for c in r['checks']['list'] if not c['passed'])}**"
         f" (exit code {r['exit_code']}).", ""]

    L += ["## CPU", ""]
    c = s["cpu"]
    L.append(_skipped(c))
    if c.get("status") == "ok":
        L += [f"{c['model']} ({c['arch']}, {c['logical_cpus']} logical CPUs); compiler: {c['compiler']}.", "",
              "| ISA | here | missing features |", "|---|---|---|"]
        for tok, d in c["isas"].items():
            L.append(f"| {tok} | {'found' if d['found'] else 'not found'} | {', '.join(d['missing']) or '-'} |")
        L += ["", f"Dispatch order: {' > '.join(c['dispatch_order']) or '(none)'}.", ""]

    L += ["## Build", ""]
    b = s["build"]
    L.append(_skipped(b))
    if "modules" in b:
        ok = [m for m in b["modules"] if m["status"] == "ok"]
        L.append(f"{len(ok)} of {len(b['modules'])} (family, ISA) modules built or loaded from {b['cache_dir']} in "
                 f"{b['seconds']['value']:.1f} s; flags {' '.join(b['compile_flags'])} + the ISA's.")
        L += ["", "| family | ISA | kernels | status |", "|---|---|---:|---|"]
        for m in b["modules"]:
            st = m["status"] if m["status"] == "ok" else f"{m['status']}: {m.get('reason', '')[:160]}"
            L.append(f"| {m['family']} | {m['isa']} | {m['kernels']} | {st} |")
        L.append("")

    L += ["## Kernel checks (bit-exact against the reference)", ""]
    k = s["check"]
    L.append(_skipped(k))
    if "kernels" in k:
        t = k["totals"]
        L += [f"{t['pass']} passed, {t['fail']} failed, {t['skipped']} skipped. Method: {k['method']}.", "",
              "| ISA | state | pass | fail | skipped | why skipped |", "|---|---|---:|---:|---:|---|"]
        for isa, d in k["isas"].items():
            L.append(f"| {isa} | {d['state']} | {d['pass']} | {d['fail']} | {d['skipped']} | "
                     f"{'; '.join(d['reasons'])[:200] or '-'} |")
        bad = [(n, d) for n, d in k["kernels"].items() if d["status"] == "fail"]
        if bad:
            L += ["", "Failed kernels:", ""] + [f"- `{n}`: {d['detail']}" for n, d in bad]
        odd = [(n, d) for n, d in k["kernels"].items()
               if d["status"] == "skipped" and not d["detail"].startswith("skipped:")]
        if odd:
            L += ["", "Kernels skipped on a supported ISA:", ""] + [f"- `{n}`: {d['detail']}" for n, d in odd]
        L.append("")

    L += ["## Seed tables: KV cache and compute buffer (allocator model)", ""]
    st = s["seed_tables"]
    L.append(_skipped(st))
    if "rows" in st:
        L += [f"{st['model']}, {st['cache_type']} cache, ubatch {st['ubatch']}; MiB as llama.cpp prints them. "
              "Model cell (seed cell / ik_llama.cpp's own print).", "",
              "| context | KV cache | compute buffer PR = direct | compute buffer main = f32 | chunked (mlaref) |",
              "|---:|---:|---:|---:|---:|"]
        for row in st["rows"]:
            def cell(v):
                c = row[v]
                extra = f" ({c['seed']} / {c['ik_prints']})" if c.get("seed") else ""
                return c["mib"]["value"] + extra
            kv = row["kv_cache"]
            L.append(f"| {row['n_ctx']} | {kv['mib']['value']}{' (' + kv['seed'] + ')' if kv['seed'] else ''} | "
                     f"{cell('direct')} | {cell('f32')} | {cell('chunked')} |")
        n_ok = sum(c["passed"] for c in st["checks"])
        L += ["", f"{n_ok} of {len(st['checks'])} cells equal. {st['note']}.", "",
              "![compute buffer](compute_buffer.png)", ""]

    L += ["## Kernel throughput", ""]
    bk = s["bench_kernels"]
    L.append(_skipped(bk))
    if "results" in bk:
        L += ["```", format_bench_kernels(bk), "```", "", "![throughput](kernel_throughput.png)", ""]

    L += ["## The reference against gguf-py", ""]
    bt = s.get("bench_types", {"status": "skipped", "reason": "not run"})
    L.append(_skipped(bt))
    if "results" in bt:
        from mlaref.codegen.bench import format_table

        L += ["Both are NumPy: mlaref's readable reference (`mlaref.reference.quantize` / `dequantize`) and gguf-py's "
              "`gguf.quants`, on the same data; `same` says whether they gave the same bytes.", "",
              "```", format_table(bt), "```", ""]

    L += ["## One MLA layer's ops (small shapes)", ""]
    bo = s.get("bench_ops", {"status": "skipped", "reason": "not run"})
    L.append(_skipped(bo))
    if "results" in bo:
        L += ["```", format_bench_ops(bo), "```", "", f"ggml: {bo['method']['ggml']}.", ""]

    L += ["## The seed's speed claim on this CPU (per layer, PR #253)", ""]
    L += _md_mla(s["mla"], "")
    L += ["### The same layer on upstream ggml (ggml-python)", ""]
    L += _md_mla(s.get("mla_ggml", {"status": "skipped", "reason": "not run"}), "_ggml")

    L += ["## Skipped", ""]
    if r["skipped"]:
        L += [f"- {x['what']}: {x['reason'][:300]}" for x in r["skipped"]]
    else:
        L.append("nothing")
    L.append("")
    if r["plots"]["status"] == "skipped":
        L += [f"Plots skipped: {r['plots']['reason']}", ""]
    return "\n".join(x for x in L if x is not None) + "\n"


def _md_mla(m: dict, tag: str) -> list[str]:
    from mlaref.codegen.bench.mla import SEED_PP, format_table

    L = [_skipped(m)]
    if "rows" not in m:
        return L
    L += [f"What was timed: {m['timed']}.", ""]
    if m.get("note"):
        L += [f"**{m['note']}.**", ""]
    L += ["```", format_table(m), "```", ""]
    if m.get("pp_estimate"):
        L += ["Attention-only estimate of a pp-N run (sum over its micro-batches of the interpolated per-layer "
              "times):", "", "| N | direct/f32 estimate | seed |", "|---:|---:|---:|"]
        for e in m["pp_estimate"]:
            L.append(f"| {e['N']} | {e['speedup_direct_over_f32']['value']:.3f} | {e['seed_speedup']:.3f} |")
        L.append("")
    L += ["How this compares with the seed: " + _mla_discussion(m, SEED_PP), "",
          f"![speed-up](mla_speedup{tag}.png)", "", f"![times](mla_times{tag}.png)", ""]
    return L


def _mla_discussion(m: dict, seed_pp: dict) -> str:
    rows = m["rows"]
    if m["backend"] == "reference":
        return ("only the reference back-end ran, at reduced shapes and single-threaded; its ratios describe NumPy, "
                "not the seed's kernels.")
    r = [x["speedup_direct_over_f32"]["value"] for x in rows]
    trend = "rises" if r[-1] > r[0] + 0.02 else ("falls" if r[-1] < r[0] - 0.02 else "is flat within 2 %")
    kv = ""
    if "speedup_kv_build_direct_over_f32" in rows[0]:
        kb = [x["speedup_kv_build_direct_over_f32"]["value"] for x in rows]
        share = [x["kv_build_share_f32"]["value"] for x in rows]
        kv = (f" The part the PR changes, the K/V build alone, runs {min(kb):.2f}x to {max(kb):.2f}x as fast in the "
              f"direct branch; it is {100 * min(share):.0f} % to {100 * max(share):.0f} % of the f32 layer's time "
              "here, which bounds what the layer can gain.")
    noise = [x["speedup_chunked_over_direct"]["value"] for x in rows if x.get("chunks", 1) == 1]
    if noise:
        kv += (f" Run-to-run noise: where chunked and direct run the same graph (n_kv <= kv_chunk), their ratio is "
               f"{min(noise):.3f} to {max(noise):.3f}; per-layer ratios closer to 1 than that are not resolved.")
    if m["backend"] == "ggml":
        impl = ("(2) upstream ggml's kernels with an f16 wkv_b (the seed: ik_llama.cpp's iqk kernels with IQ4_NL "
                "weights), so the work the PR removes is a different share of the layer; upstream's mul_mat can use "
                "the llamafile sgemm only for a contiguous src1, which the f32 branch's converted copy is and the "
                "direct branch's strided cache view is not")
    else:
        impl = ("(2) mlaref's kernels: mul_mat and flash_attn_ext are generated C, but the casts and the f32 concat "
                "are NumPy and every op is a Python call, so the K/V build's share and cost differ from "
                "ik_llama.cpp's fused, threaded C graph; and every intermediate is a fresh NumPy allocation per run "
                "(hundreds of MB at n_kv >= 8192, paid in page faults), which the ggml back-end, whose context is "
                "allocated once like ggml-alloc's buffer, does not pay: there the K/V build's timings and shares "
                "are not reliable")
    if all("speedup_direct_over_f32_min" in x for x in rows):
        rm = [x["speedup_direct_over_f32_min"]["value"] for x in rows]
        kv = (f" From the fastest runs (least disturbed by other work on this machine) it is {rm[0]:.3f} at "
              f"n_kv {rows[0]['n_kv']} and {rm[-1]:.3f} at n_kv {rows[-1]['n_kv']}, between {min(rm):.3f} and "
              f"{max(rm):.3f}.") + kv
    return (f"here direct/f32 per layer (ratio of medians) goes from {r[0]:.3f} (n_kv {rows[0]['n_kv']}) to "
            f"{r[-1]:.3f} (n_kv {rows[-1]['n_kv']}), i.e. it {trend}; the seed's whole-model ratio rises from "
            f"{seed_pp[512][2]:.3f} to {seed_pp[16384][2]:.3f}.{kv} Why the two need not agree: (1) the seed times "
            "the whole model over N/512 micro-batches with n_kv = 512..N, so the attention share of the total (and "
            "the speed-up) grows with N even if the per-layer ratio is constant, since K/V build and attention both "
            f"grow linearly in n_kv at T = 512 while the FFN does not; {impl}; (3) {m['n_threads']} thread(s) on a "
            "machine shared with other jobs versus 16 cores of a Ryzen-7950X, so the memory-bandwidth cost of the "
            "f32 copies (which grow past the caches at large n_kv) weighs differently. chunked/direct beyond "
            "kv_chunk shows the cost or gain of per-chunk attention (the merge is timed separately as "
            "merge_seconds).")


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the ~2-minute version (fewer n_kv, formats, repeats)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-only: the smallest run
    parser.add_argument("--out", default="mlaref-report", metavar="DIR", help="output directory (default mlaref-report)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads for the MLA benchmark (default: all logical CPUs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def run(args) -> int:
    if args.quick and args.tiny:
        print("mlaref report: --quick and --tiny exclude each other", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"mlaref report: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    out = pathlib.Path(args.out)
    report = make_report(out, mode, show=not args.no_progress, n_threads=args.threads)
    chk = report["checks"]
    print(f"mlaref report: {chk['total'] - chk['failed']}/{chk['total']} checks passed, "
          f"{len(report['skipped'])} item(s) skipped, {report['runtime']['value']:.1f} s; "
          f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(report['plots'].get('plots', []))} plot(s)")
    if chk["failed"]:
        for c in chk["list"]:
            if not c["passed"]:
                print(f"FAILED: {c['name']}", file=sys.stderr)
    return report["exit_code"]


# -- `mlaref bench ops` (codegen/bench.py adds the sub-command with these) -------------------------------------
def configure_bench_ops(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="timed runs per cell (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the machine-readable result to FILE")


def run_bench_ops(args) -> int:
    if args.repeats < 1:
        print(f"mlaref bench ops: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    result = bench_ops(repeats=args.repeats)
    print(format_bench_ops(result))
    return _write_json(args.json, result)


def _write_json(path, result) -> int:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, default=_json_default)
            f.write("\n")
        print(f"wrote {path}")
    return 0
