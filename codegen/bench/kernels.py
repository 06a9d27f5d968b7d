"""Kernel timings for ``mlaref bench kernels``: catalog kernels alone, and each kernel family against its peers.

``bench_kernels(families=None, isas=None, types=None, n_rows=64, n=4096, n_threads=1, warmup=2, repeat=5,
compare=True, threads=(1, 2))`` returns a dict:

``rows``
    one dict per selected catalog kernel (run by name): ``kernel``, ``family``, ``type_x``, ``type_y``, ``isa``,
    ``plan``, ``n_threads``, ``seconds`` (best of ``repeat`` timed calls after ``warmup``), ``median_s``,
    ``max_s``, ``values`` (values processed per call) and ``gvalues_per_s``.
``skipped``
    ``(kernel, reason)`` for kernels this machine cannot run (or whose inputs cannot be built).
``comparison``
    (when ``compare``) one dict per (family, types, plan, thread count) that upstream ggml also has, from
    :func:`compare_kernels`: MB/s of the dispatched mlaref kernel called directly (``mlaref``), of the same
    kernel through :mod:`mlaref.codegen.kernels` (``mlaref_api``: argument checks and dispatch included), of the
    NumPy reference, of ggml's own C (through ggml-python) and, for copies, of memcpy (``np.copyto`` of the same
    bytes), each as median/min/max over ``repeat`` runs, and the ratios ``vs_ggml``, ``vs_memcpy`` (kernel to
    kernel) and ``api_vs_ggml`` (medians; > 1 means mlaref is faster).

Fairness. Kernel is timed against kernel: the generated C function and ggml's C function are both called
from one job array of :mod:`mlaref.codegen.kernels.pool` built once (addresses and arguments made once), by the same
C runner: one job per thread on halves of the rows, the first run by the calling thread, the second by a pool
worker, so thread start-up and hand-off cost the same on both sides and no Python runs between the parts. The
Python checks of :mod:`mlaref.codegen.kernels` (15-50 us a call here) are timed separately (``mlaref_api``).
ggml's ``from_float``, ``from_float_ref`` and ``to_float`` treat their input as one run of independent blocks,
so each job calls them once on its rows as one buffer (``k = rows * n``). ggml's ``vec_dot`` computes one dot
product per call, so its job (``ggml_vec_dot``) calls it for every (x row, y row) pair in the order the mlaref
kernel uses: x rows outer. memcpy is libc's, on the same split. The reference is NumPy and single-threaded; its
timing is the same in every thread row. The MB/s unit: float32 bytes for quantize / dequantize (the float side),
x-operand bytes for vec_dot, copied bytes for copies. The contenders of one row are timed in rounds (mlaref,
api, ggml and memcpy once each, in the shuffled order of ``bench.round_orders``), each sample being
back-to-back calls that last about 2 ms together, so a slow period of the shared machine lands on every
contender alike. Speed is reported, never asserted.

:func:`format_table` prints the comparison as a text table.
"""

from __future__ import annotations

import ctypes
import importlib
import statistics
import time

import numpy as np

from mlaref import reference as R
from mlaref.codegen import catalog, cpu
from mlaref.codegen import kernels as K
from mlaref.codegen.bench.method import round_orders
from mlaref.codegen.kernels import pool as pool
from mlaref.codegen.peers import ggml as gp
from mlaref.reference.tensor import Tensor, aligned_buffer

__all__ = ["bench_kernels", "time_kernel", "compare_kernels", "format_table", "FAMILIES"]

FAMILIES = ("dequantize_row", "quantize_row", "quantize_chunk", "convert_rows", "vec_dot")


def _inputs(spec, n_rows: int, n: int, rng):
    bs = max(K.geometry(spec.type_x)[0], K.geometry(spec.type_y)[0] if spec.type_y else 1, 32)
    n = max(bs, n // bs * bs)
    x = rng.standard_normal((n_rows, n)).astype(np.float32)
    if spec.family == "dequantize_row":
        data = R.quantize(x, spec.type_x, variant=next(iter(R.get_type(spec.type_x).variants)))
        return n, lambda: K.dequantize(data, spec.type_x, kernel=spec.name, n_threads=_T[0])
    if spec.family == "quantize_row":
        v = next(v for v, impl in R.get_type(spec.type_x).variants.items() if impl == spec.plan)
        return n, lambda: K.quantize(x, spec.type_x, variant=v, kernel=spec.name, n_threads=_T[0])
    if spec.family == "quantize_chunk":
        return n, lambda: K.quantize(x, spec.type_x, variant="model", kernel=spec.name, n_threads=_T[0])
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


def _times(call, warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


# A timed sample lasts at least this long: the op is called back to back enough times (the same count for every
# contender of a row), so timer resolution and one-off stalls weigh little.
_SAMPLE_S = 2e-3


def _interleaved(calls: dict, warmup: int, repeat: int) -> dict[str, list[float]]:
    """Seconds per call of each contender over ``repeat`` samples, taken in rounds (each contender once per
    round, in the order of ``bench.round_orders``) after ``warmup`` calls each, so a slow period of a shared
    machine is spread over every contender instead of being absorbed by one contender's block of runs. A sample
    is ``k`` back-to-back calls, ``k`` chosen from the slowest contender's warm-up so it lasts about
    ``_SAMPLE_S``."""
    slowest = 0.0
    for call in calls.values():
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            call()
            slowest = max(slowest, time.perf_counter() - t0)
    k = max(1, min(100, int(_SAMPLE_S / max(slowest, 1e-9))))
    out: dict[str, list[float]] = {name: [] for name in calls}
    for order in round_orders(calls, max(1, repeat)):
        for name in order:
            call = calls[name]
            t0 = time.perf_counter()
            for _ in range(k):
                call()
            out[name].append((time.perf_counter() - t0) / k)
    return out


def time_kernel(spec, n_rows: int = 64, n: int = 4096, n_threads: int = 1, warmup: int = 2, repeat: int = 5,
                seed: int = 0) -> dict:
    """Best-of-``repeat`` wall time of one kernel call on ``n_rows`` rows of about ``n`` values."""
    if isinstance(spec, str):
        spec = catalog.by_name()[spec]
    _T[0] = n_threads
    n_eff, call = _inputs(spec, n_rows, n, np.random.default_rng(seed))
    ts = _times(call, warmup, repeat)
    best = min(ts)
    values = n_rows * n_eff
    return {"kernel": spec.name, "family": spec.family, "type_x": spec.type_x, "type_y": spec.type_y,
            "isa": spec.isa, "plan": spec.plan, "n_threads": n_threads, "seconds": best,
            "median_s": statistics.median(ts), "max_s": max(ts), "values": values,
            "gvalues_per_s": values / best / 1e9 if best > 0 else float("inf")}


def bench_kernels(families=None, isas=None, types=None, n_rows: int = 64, n: int = 4096, n_threads: int = 1,
                  warmup: int = 2, repeat: int = 5, *, compare: bool = True, threads=(1, 2)) -> dict:
    """``{"rows": [time_kernel dicts], "skipped": [(kernel, reason)], "comparison": [...]}`` (see the module)."""
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
    out = {"rows": rows, "skipped": skipped}
    if compare:
        out["comparison"] = compare_kernels(types=types, n_rows=n_rows, n=n, threads=threads, warmup=warmup,
                                            repeat=repeat)
    return out


# -- the comparison -------------------------------------------------------------------------------------------

def _fn_addr(f) -> int:
    return ctypes.cast(f, ctypes.c_void_p).value


def _ggml_row_fn(kind: str, type: str, plan: str | None):
    """ggml's function for a (kind, type, plan), or None with no counterpart: quantize ``ref`` -> from_float_ref
    (``quantize_row_<t>_ref``), quantize ``x86`` -> the CPU back-end's from_float, dequantize -> to_float."""

    if not gp.available() or type not in gp.GGML_TYPE:
        return None
    g = gp.lib()
    t = gp.ggml_type(type)
    if kind == "dequantize":
        f = g.ggml_get_type_traits(t).contents.to_float
    elif plan == "ref":
        f = g.ggml_get_type_traits(t).contents.from_float_ref
        if not f:
            try:
                f = gp.symbol(f"quantize_row_{type}_ref")
            except NotImplementedError:
                return None
    elif plan == "x86":
        f = g.ggml_get_type_traits_cpu(t).contents.from_float
    else:
        return None
    return f if f else None


def _stats(ts: list[float] | None, nbytes: int) -> dict | None:
    if not ts:
        return None
    med = statistics.median(ts)
    return {"median_s": med, "min_s": min(ts), "max_s": max(ts), "mb_per_s": nbytes / med / 1e6,
            "mb_per_s_max": nbytes / min(ts) / 1e6, "mb_per_s_min": nbytes / max(ts) / 1e6}


def _row(family, what, plan, kernel, nbytes, t, timings) -> dict:
    st = {k: _stats(v, nbytes) for k, v in timings.items()}
    r = {"family": family, "what": what, "plan": plan, "kernel": kernel, "n_threads": t, "bytes": nbytes,
         **{k: v for k, v in st.items()}}
    m = st.get("mlaref")
    for other in ("ggml", "reference", "memcpy"):
        o = st.get(other)
        r[f"vs_{other}"] = (o["median_s"] / m["median_s"]) if (m and o) else None
    a, g = st.get("mlaref_api"), st.get("ggml")
    r["api_vs_ggml"] = (g["median_s"] / a["median_s"]) if (a and g) else None
    return r


def _aligned(a_or_shape, dtype=None) -> np.ndarray:
    """A C-contiguous array whose data starts on a 64-byte boundary, as ggml places tensors: a copy of an array,
    or uninitialised of a shape and dtype. Every contender reads and writes buffers of the same alignment (NumPy's
    own land 16 bytes into a line or 48, which moved a store-bound row by 5 %)."""
    src = None
    if isinstance(a_or_shape, np.ndarray):
        src, shape, dtype = a_or_shape, a_or_shape.shape, a_or_shape.dtype
    else:
        shape, dtype = a_or_shape, np.dtype(dtype)

    out = aligned_buffer(int(np.prod(shape)) * dtype.itemsize).view(dtype).reshape(shape)
    if src is not None:
        out[...] = src
    return out


def _on_pool(kind: str, fn: int, n_rows: int, n_threads: int, args, keep: tuple):
    """A zero-argument call running ``fn`` on the pool: one job per thread, on equal shares of the rows (as
    :mod:`mlaref.codegen.kernels` splits them), with the arguments ``args(r0, r1)``; the job array is built
    once, as ggml's pointers are made once. ``keep``: the arrays the addresses point into, held as long as the
    call is."""
    jobs = pool.jobs_array([pool.job(kind, fn, *args(r0, r1)) for r0, r1 in K.split(n_rows, n_threads)])

    def call(_keep=keep):
        pool.run(jobs)

    return call


def compare_kernels(types=None, n_rows: int = 64, n: int = 4096, threads=(1, 2), warmup: int = 2,
                    repeat: int = 5, seed: int = 0, reference: bool = True) -> list[dict]:
    """Rows of the comparison (see the module docstring): quantize and dequantize per format and plan, vec_dot
    per pair ggml also has (ggml's x86 order and mlaref's ``l8a2``), and row copies vs memcpy."""

    ref_vec_dot = importlib.import_module("mlaref.reference.ops.vec_dot").vec_dot
    rng = np.random.default_rng(seed)
    out = []
    ref_repeat = max(1, min(repeat, 3))

    def want(*ts):
        return not types or any(t in types for t in ts if t)

    # quantize: (type, plan) of the catalog
    qkeys = sorted({(s.type_x, s.plan) for s in catalog.catalog() if s.family == "quantize_row"})
    for type_, plan in qkeys:
        if not want(type_):
            continue
        try:
            v = next(v for v, impl in R.get_type(type_).variants.items() if impl == plan)
            bs, ts_ = K.geometry(type_)
            nn = max(bs, n // bs * bs)
            x = _aligned(rng.standard_normal((n_rows, nn)).astype(np.float32))
            name = K.resolve("quantize_row", type_, None, plan)[0].name
        except Exception:
            continue
        f = _ggml_row_fn("quantize", type_, plan)
        res = _aligned((n_rows, nn // bs * ts_), np.uint8)
        ref_ts = _times(lambda: R.quantize(x, type_, variant=v), 0, ref_repeat) if reference else None
        for t in threads:
            spec, fn, ffi = K.resolve("quantize_row", type_, None, plan)
            ax, ar, sx, sr = pool.address(x), pool.address(res), x.strides[0], res.strides[0]
            calls = {"mlaref": _on_pool("quantize", K.address(ffi, fn), n_rows, t, lambda r0, r1: (
                         ax + r0 * sx, ar + r0 * sr, r1 - r0, nn, sx, sr), (x, res)),
                     "mlaref_api": lambda: K.quantize(x, type_, variant=v, n_threads=t, out=res)}
            if f is not None:
                g_out = _aligned(res.shape, res.dtype)
                ag = pool.address(g_out)
                calls["ggml"] = _on_pool("from_float", _fn_addr(f), n_rows, t, lambda r0, r1: (
                    ax + r0 * sx, ag + r0 * sr, (r1 - r0) * nn), (x, g_out))
            timings = {**_interleaved(calls, warmup, repeat), "reference": ref_ts}
            out.append(_row("quantize", type_, plan, name, x.nbytes, t, timings))

    # model quantizers (quantize_chunk): kernel, reference and ggml_quantize_chunk interleaved, without and with an
    # imatrix (the reference is in the rounds here: these are the rows whose reference speed is asked for)
    out += _compare_model_quantizers(types, n_rows, n, threads, warmup, repeat, rng, reference)

    # dequantize: every type with a dequantize kernel
    for type_ in sorted({s.type_x for s in catalog.catalog() if s.family == "dequantize_row"}):
        if not want(type_):
            continue
        try:
            bs, ts_ = K.geometry(type_)
            nn = max(bs, n // bs * bs)
            x = rng.standard_normal((n_rows, nn)).astype(np.float32)
            variant = next(iter(R.get_type(type_).variants))
            data = _aligned(R.quantize(x, type_, variant=variant))
            name = K.resolve("dequantize_row", type_, None, "ref")[0].name
        except Exception:
            continue
        f = _ggml_row_fn("dequantize", type_, None)
        res = _aligned((n_rows, nn), np.float32)
        ref_ts = _times(lambda: R.dequantize(data, type_), 0, ref_repeat) if reference else None
        for t in threads:
            spec, fn, ffi = K.resolve("dequantize_row", type_, None, "ref")
            ad, ar, sd, sr = pool.address(data), pool.address(res), data.strides[0], res.strides[0]
            calls = {"mlaref": _on_pool("dequantize", K.address(ffi, fn), n_rows, t, lambda r0, r1: (
                         ad + r0 * sd, ar + r0 * sr, r1 - r0, nn, sd, sr), (data, res)),
                     "mlaref_api": lambda: K.dequantize(data, type_, n_threads=t, out=res)}
            if type_ == "f32":  # a copy: memcpy of the same bytes is the bound
                mem_out = _aligned(res.shape, res.dtype)
                am = pool.address(mem_out)
                calls["memcpy"] = _on_pool("memcpy", 0, n_rows, t, lambda r0, r1: (
                    am + r0 * sr, ad + r0 * sd, (r1 - r0) * sr), (data, mem_out))
            if f is not None:
                g_out = _aligned(res.shape, res.dtype)
                ag = pool.address(g_out)
                calls["ggml"] = _on_pool("to_float", _fn_addr(f), n_rows, t, lambda r0, r1: (
                    ad + r0 * sd, ag + r0 * sr, (r1 - r0) * nn), (data, g_out))
            timings = {**_interleaved(calls, warmup, repeat), "reference": ref_ts}
            out.append(_row("dequantize", type_, "ref", name, res.nbytes, t, timings))

    # vec_dot: the pairs ggml has (x type with its vec_dot_type), 8 y rows
    n_y = 8
    for tx, tys in catalog.VEC_DOT_PAIRS.items():
        ty = tys[0]
        if not want(tx, ty):
            continue
        bs = max(K.geometry(tx)[0], 32 if tx not in ("f32", "f16", "bf16") else 1)
        nn = max(bs, n // bs * bs)
        xf = rng.standard_normal((n_rows, nn)).astype(np.float32)
        yf = rng.standard_normal((n_y, nn)).astype(np.float32)
        if tx == "f32":
            xb, yb = xf.view(np.uint8), yf.view(np.uint8)
        else:
            xb = R.quantize(xf, tx)
            yb = R.quantize(yf, ty) if ty in ("f16", "bf16") else R.quantize(yf, ty, variant="x86")
        xb, yb = _aligned(xb), _aligned(yb)
        vd = None
        if gp.available() and tx in gp.GGML_TYPE and gp.vec_dot_type(tx) == gp.ggml_type(ty):
            vd = gp.lib().ggml_get_type_traits_cpu(gp.ggml_type(tx)).contents.vec_dot
        plans = [p for p in ("ggml_x86_avx2", "l8a2") if any(
            s.family == "vec_dot" and (s.type_x, s.type_y, s.plan) == (tx, ty, p) for s in catalog.catalog())]
        for plan_tok in plans:
            plan = catalog.VEC_DOT_PLANS[plan_tok]
            try:
                spec, fn, ffi = K.resolve("vec_dot", tx, ty, plan_tok)
                name = spec.name
            except Exception:
                continue
            res = _aligned((n_rows, n_y), np.float32)
            ax, ay, ao = pool.address(xb), pool.address(yb), pool.address(res)
            sx, sy, so = xb.strides[0], yb.strides[0], res.strides[0]
            ref_ts = (_times(lambda: ref_vec_dot(xb, tx, yb, ty, nn, plan=plan), 0, 1)
                      if reference else None)
            for t in threads:
                calls = {"mlaref": _on_pool("vec_dot", K.address(ffi, fn), n_rows, t, lambda r0, r1: (
                             ax + r0 * sx, sx, r1 - r0, ay, sy, n_y, nn, ao + r0 * so, so), (xb, yb, res)),
                         "mlaref_api": lambda: K.vec_dot(xb, tx, yb, ty, nn, plan=plan, n_threads=t, out=res)}
                if vd is not None:
                    g_out = _aligned(res.shape, res.dtype)
                    ag = pool.address(g_out)
                    calls["ggml"] = _on_pool("ggml_vec_dot", _fn_addr(vd), n_rows, t, lambda r0, r1: (
                        ax + r0 * sx, sx, r1 - r0, ay, sy, n_y, nn, ag + r0 * so, so), (xb, yb, g_out))
                timings = {**_interleaved(calls, warmup, repeat), "reference": ref_ts}
                out.append(_row("vec_dot", f"{tx}.{ty}", plan, name, xb.nbytes, t, timings))

    # row copies (concat/repeat/cpy of one type): MLA cache rows of 576 f16 values into a wider destination
    if want("f16", "bytes"):
        spec, fn, ffi = K.resolve("copy_rows", "bytes", None, "ref")
        rows_n = max(1, n_rows * n * 4 // 1152)  # about the f32 bytes of the other rows
        src = _aligned(rng.integers(0, 256, (rows_n, 1152), dtype=np.uint8))
        dst = _aligned((rows_n, 1152), np.uint8)
        a_s, a_d, mem = pool.address(src), pool.address(dst), _aligned(dst.shape, dst.dtype)
        a_m, fa, big = pool.address(mem), K.address(ffi, fn), 1152 * rows_n
        for t in threads:
            timings = _interleaved({
                "mlaref": _on_pool("copy", fa, rows_n, t, lambda r0, r1: (
                    a_d + r0 * 1152, a_s + r0 * 1152, 1152, 1, r1 - r0, 1, 1, 1152, big, big, 1152, big, big,
                    K.streams(2 * big)),
                    (src, dst)),
                "memcpy": _on_pool("memcpy", 0, rows_n, t, lambda r0, r1: (
                    a_m + r0 * 1152, a_s + r0 * 1152, (r1 - r0) * 1152), (src, mem))}, warmup, repeat)
            out.append(_row("copy_rows", "f16 rows of 576 (1152 B)", "ref", spec.name, src.nbytes, t, timings))
        out.extend(_mla_copy_rows(spec.name, rng, warmup, repeat, threads))
    return out


def _mla_copy_rows(kernel: str, rng, warmup: int, repeat: int, threads=(1, 2), n_kv: int = 4096,
                   heads: int = 16) -> list[dict]:
    """The MLA K build as the graph runs it (kernels.repeat / kernels.concat on Tensors, Python included, into
    destination tensors allocated once, as ggml's allocator plans them): the 64 rope values of each f16 cache row
    of 576 repeated over the heads, then k_nope (128) ++ rope (64) along dim 0 by the one-pass concat_rows
    kernel; against memcpy of the output bytes on the same threads."""

    cache = Tensor.from_numpy(rng.standard_normal((n_kv, 576)).astype(np.float16))
    row = cache.nb[1]
    rope = cache.view((64, n_kv, 1, 1), (2, row, row * n_kv, row * n_kv), 2 * 512)
    k_nope = Tensor.from_numpy(rng.standard_normal((heads, n_kv, 128)).astype(np.float16))
    target = (64, n_kv, heads, 1)
    rep = K.repeat(rope, target)
    rep_out, cat_out = Tensor.empty("f16", target), Tensor.empty("f16", (192, n_kv, heads, 1))
    concat_kernel = K.resolve("concat_rows", "bytes", None, "ref")[0].name
    out = []
    for t in threads:
        for what, call, nbytes, name in (
                (f"repeat rope 64 x{heads} heads", lambda: K.repeat(rope, target, n_threads=t, out=rep_out),
                 rep.nbytes(), kernel),
                (f"concat 128++64, {n_kv}x{heads}", lambda: K.concat(k_nope, rep, 0, n_threads=t, out=cat_out),
                 cat_out.nbytes(), concat_kernel)):
            a = _aligned(rng.integers(0, 256, nbytes, dtype=np.uint8))
            b = _aligned(a.shape, a.dtype)
            memcpy = _on_pool("memcpy", 0, nbytes, t, lambda r0, r1, pa=pool.address(a), pb=pool.address(b): (
                pb + r0, pa + r0, r1 - r0), (a, b))
            timings = _interleaved({"mlaref": call, "memcpy": memcpy}, warmup, repeat)
            out.append(_row("copy_op", what, "ref", name, nbytes, t, timings))
    return out


def _fmt_mb(st) -> str:
    return f"{'-':>8}" if not st else f"{st['mb_per_s']:8.0f}"


def _fmt_ratio(r) -> str:
    return "-" if r is None else f"{r:5.2f}x"


def _compare_model_quantizers(types, n_rows, n, threads, warmup, repeat, rng, reference) -> list[dict]:
    """Rows ``quantize_chunk`` per model-quantizer type and imatrix (``model`` / ``model+imatrix``): the dispatched
    kernel on the pool (``mlaref``), through :func:`mlaref.codegen.kernels.quantize` (``mlaref_api``), the NumPy
    reference and ggml's ``ggml_quantize_chunk`` (one job per thread on its rows, ``start`` at its first row),
    all in the same rounds."""
    out = []
    have_ggml = gp.available()
    g_fn = _fn_addr(gp.lib().ggml_quantize_chunk) if have_ggml else None
    for type_ in catalog.MODEL_QUANT_TYPES:
        if types and type_ not in types:
            continue
        bs, ts_ = K.geometry(type_)
        nn = max(256, n // 256 * 256)
        x = _aligned(rng.standard_normal((n_rows, nn)).astype(np.float32))
        res = _aligned((n_rows, nn // bs * ts_), np.uint8)
        g_out = _aligned(res.shape, res.dtype)
        spec, fn, ffi = K.resolve("quantize_chunk", type_, None, "model")
        ax, ar, ag, sx, sr = pool.address(x), pool.address(res), pool.address(g_out), x.strides[0], res.strides[0]
        for label, im in (("model", None), ("model+imatrix", _aligned(rng.random(nn).astype(np.float32) * 2))):
            aw = 0 if im is None else pool.address(im)
            for t in threads:
                calls = {"mlaref": _on_pool("quantize_chunk", K.address(ffi, fn), n_rows, t, lambda r0, r1: (
                             ax + r0 * sx, ar + r0 * sr, aw, r1 - r0, nn, sx, sr), (x, res, im)),
                         "mlaref_api": lambda: K.quantize(x, type_, variant="model", imatrix=im, n_threads=t, out=res)}
                if reference:
                    calls["reference"] = lambda: R.quantize(x, type_, variant="model", imatrix=im)
                if have_ggml:
                    calls["ggml"] = _on_pool("ggml_quantize_chunk", g_fn, n_rows, t, lambda r0, r1: (
                        gp.ggml_type(type_), ax, ag, r0 * nn, r1 - r0, nn, aw), (x, g_out, im))
                with np.errstate(all="ignore"):
                    timings = _interleaved(calls, warmup, repeat)
                out.append(_row("quantize_chunk", type_, label, spec.name, x.nbytes, t, timings))
    return out


def format_table(result) -> str:
    """The comparison of :func:`bench_kernels` (or a :func:`compare_kernels` list) as a text table: median MB/s
    per contender, [min..max] MB/s of the mlaref kernel, and the median ratios vs ggml (kernel to kernel, and
    through the Python API), the reference and memcpy."""
    rows = result.get("comparison", []) if isinstance(result, dict) else result
    head = (f"{'op':10} {'what':26} {'plan':13} {'T':>2} {'mlaref':>8} {'[min..max]':>15} {'api':>8} {'ggml':>8} "
            f"{'ref':>8} {'memcpy':>8} {'vs ggml':>8} {'api/ggml':>8} {'vs ref':>9} {'vs memcpy':>9}  kernel")
    lines = ["MB/s (median of repeats; float32 bytes for quantize/dequantize, x bytes for vec_dot, copied bytes "
             "for copies); mlaref = the C kernel called directly, api = through mlaref.codegen.kernels",
             head, "-" * len(head)]
    for r in rows:
        m = r.get("mlaref")
        span = f"[{m['mb_per_s_min']:.0f}..{m['mb_per_s_max']:.0f}]" if m else "-"
        lines.append(f"{r['family']:10} {r['what']:26} {r['plan']:13} {r['n_threads']:>2} {_fmt_mb(m)} {span:>15} "
                     f"{_fmt_mb(r.get('mlaref_api'))} {_fmt_mb(r.get('ggml'))} {_fmt_mb(r.get('reference'))} "
                     f"{_fmt_mb(r.get('memcpy'))} {_fmt_ratio(r['vs_ggml']):>8} "
                     f"{_fmt_ratio(r.get('api_vs_ggml')):>8} {_fmt_ratio(r['vs_reference']):>9} "
                     f"{_fmt_ratio(r['vs_memcpy']):>9}  {r['kernel']}")
    return "\n".join(lines)
