"""The generated C kernels behind the interface of :mod:`mlaref.reference`, function by function.

``quantize``, ``dequantize``, ``convert``, ``vec_dot``, ``concat``, ``repeat``, ``cpy``, ``mul_mat`` and
``flash_attn_ext`` take the arguments of
their reference counterparts (``mlaref.reference.quantize`` / ``dequantize``, ``reference.ops.vec_dot.vec_dot``,
``reference.ops.{concat,repeat,cpy}``) and return the same bytes, plus

* ``isa=``: cap dispatch at this ISA (it and the ISAs it implies), as ``dispatch.forced`` does;
* ``kernel=``: run exactly this kernel (a name from generated/manifest.json; tests use it);
* ``n_threads=``: split the rows over C threads (:mod:`mlaref.codegen.kernels.pool`: one cffi call hands the parts to
  worker threads, with the GIL released); each row is written by one thread only and no reduction crosses rows,
  so the bytes do not depend on the thread count;
* ``out=``: write into a caller's array (checked by :mod:`mlaref.codegen.args`: dtype, shape, strides,
  writability, overlap, alignment).

Where no kernel exists (a K-quant ``ref`` quantizer, a legacy model quantizer with an imatrix, concat along dim > 0 of
f32) the function raises
:class:`~mlaref.codegen.dispatch.DispatchError` (quantize/dequantize/convert) or runs the reference (the
Tensor ops, which are documented as kernels for their #253 row paths only).

Per-call cost. A row-sized call must not be dominated by Python, so: :func:`resolve` caches ``(spec, C function,
ffi)`` per request and dispatch state (:func:`mlaref.codegen.dispatch.state_key`: ``isa=``, ``dispatch.forced``,
``MLAREF_ISA``, ``MLAREF_DISABLE_ISA``, ``MLAREF_SANITIZE``), so a forced or disabled ISA still takes effect on the
next call; outputs the function allocates skip the output checks (they cannot fail on a fresh ``np.empty``);
C-contiguous inputs become rows by ``reshape``; pointers are cast once per call. Threaded splits run on the C
pool of :mod:`mlaref.codegen.kernels.pool` (started once, and again after a ``fork``): the caller runs the first part
itself, and a call that finds the pool serving another thread runs its parts in turn on its own thread, so
concurrent calls cannot deadlock.
"""

from __future__ import annotations

import functools
import importlib
from types import MappingProxyType

import numpy as np

from mlaref.codegen import args as _args
from mlaref.codegen import build as _build
from mlaref.codegen import catalog as _catalog
from mlaref.codegen import cpu as _cpu
from mlaref.codegen import dispatch as _dispatch
from mlaref.codegen.kernels import pool as _pool
from mlaref.codegen import cpu
from mlaref.reference import get_type
from mlaref.reference.tensor import Tensor

__all__ = [
    "quantize", "dequantize", "convert", "vec_dot", "concat", "repeat", "cpy", "resolve", "geometry", "split",
    "address", "streams", "DispatchError", "GEOMETRY", "concat_jobs", "repeat_jobs", "copy_jobs", "cast_jobs",
]


DispatchError = _dispatch.DispatchError

# (values per block, bytes per block) of every type a row kernel handles, from the format registry (read-only).
# The C code hard-codes the same numbers; the kernel tests compare its bytes with the reference's.
GEOMETRY = MappingProxyType({
    t: (get_type(t).block_size, get_type(t).type_size)
    for t in dict.fromkeys([*_catalog.DEQUANT_TYPES, *_catalog.QUANT_VARIANTS, *_catalog.VEC_DOT_PAIRS,
                            *(y for ys in _catalog.VEC_DOT_PAIRS.values() for y in ys)])
})


def geometry(type: str) -> tuple[int, int]:
    if not isinstance(type, str):
        raise TypeError(f"type: expected a type name, got {type!r}")
    try:
        return GEOMETRY[type]
    except KeyError:
        raise ValueError(f"type: no kernels for {type!r}; kernels exist for {', '.join(GEOMETRY)}") from None


def _variant_plan(type: str, variant: str) -> str:
    """The implementation a quantize variant names for ``type`` (the reference's variant table when it has it)."""
    if not isinstance(variant, str):
        raise TypeError(f"variant: expected a string, got {variant!r}")
    return _variant_plan_cached(type, variant)


@functools.lru_cache(maxsize=None)
def _variant_plan_cached(type: str, variant: str) -> str:
    """The variant tables are fixed once the reference is imported; errors are raised, never cached."""
    try:
        variants = get_type(type).variants
    except (KeyError, ValueError, ImportError):
        variants = {v: v for v in _catalog.QUANT_VARIANTS.get(type, {})} | {"model": "ref"}
    if variant not in variants:
        raise ValueError(f"variant: {type} has no quantize variant {variant!r}; it has {', '.join(variants)}")
    return variants[variant]


def resolve(family: str, type_x: str, type_y: str | None, plan: str, *, isa: str | None = None,
            kernel: str | None = None):
    """(spec, C function) of the kernel to run: ``kernel`` by name, else dispatch (capped at ``isa``)."""
    key = (family, type_x, type_y, plan, isa, kernel, _dispatch.state_key(isa))
    hit = _RESOLVED.get(key)
    if hit is None:
        hit = _resolve(family, type_x, type_y, plan, isa, kernel)
        _RESOLVED[key] = hit
    return hit


_RESOLVED: dict[tuple, tuple] = {}


def _resolve(family, type_x, type_y, plan, isa, kernel):
    if kernel is not None:
        spec = _catalog.by_name().get(kernel)
        if spec is None:
            raise DispatchError(f"kernel: {kernel!r} is not in the catalog")
        _catalog.check_computes(spec, kernel, family, type_x, type_y, plan)

        miss = cpu.missing(spec.isa)
        if miss:
            raise DispatchError(f"kernel: {kernel} needs {', '.join(miss)}, which this CPU lacks")
        module = _build.load(spec.family, spec.isa)
    else:
        spec, module = _dispatch.choose(family, type_x, type_y, plan, force=isa)
    return spec, getattr(module.lib, spec.name), module.ffi


def _base(ffi, a: np.ndarray):
    """A ``char *`` cdata at ``a``'s first byte: ``from_buffer`` when contiguous (a tenth of the cost of
    ``__array_interface__``), the address otherwise. The cdata keeps ``a`` alive while it is held."""
    if a.flags.c_contiguous:
        return ffi.from_buffer(a)
    return ffi.cast("char *", a.__array_interface__["data"][0])


def split(n_rows: int, n_threads: int):
    k = min(n_threads, n_rows)
    bounds = [n_rows * i // k for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k) if bounds[i + 1] > bounds[i]]


@functools.lru_cache(maxsize=None)
def address(ffi, fn) -> int:
    """The address of a kernel (a function of a cffi ``lib``, as :func:`resolve` returns it), for pool jobs."""
    return int(ffi.cast("uintptr_t", ffi.addressof(fn.__self__, fn.__name__)))


def _at(ffi, p) -> int:
    """The address a cffi pointer holds (pool jobs carry addresses as integers)."""
    return int(ffi.cast("uintptr_t", p))


def _run_rows(call, n_rows: int, n_threads: int, job=None) -> None:
    """``call(k, r0, r1)`` for the rows at once, or ``job(k, r0, r1)`` (a pool job row) per part on C threads."""
    if n_threads == 1 or n_rows == 1:
        call(0, 0, n_rows)
        return
    parts = split(n_rows, n_threads)
    if len(parts) == 1:
        call(0, parts[0][0], parts[0][1])
        return
    _pool.run([job(k, r0, r1) for k, (r0, r1) in enumerate(parts)])


def dequantize(data, type, *, isa=None, kernel=None, n_threads=1, out=None) -> np.ndarray:
    """``mlaref.reference.dequantize`` by a C kernel: uint8 rows of ``type`` -> float32."""
    bs, ts = geometry(type)
    n_threads = _args.check_threads(n_threads)
    rows = _args.input_rows(data, "data", np.uint8, multiple=ts, unit="bytes")
    n = rows.array.shape[1] // ts * bs
    shape = np.shape(data)[:-1] + (n,)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
        dst = _args.fresh_rows(out)
    else:
        dst = _args.output_rows(out, "out", np.float32, shape, inputs=[("data", rows.array)])
    spec, fn, ffi = resolve("dequantize_row", type, None, "ref", isa=isa, kernel=kernel)
    px, py, sx, sy = _base(ffi, rows.array), _base(ffi, dst.array), rows.stride, dst.stride
    cast = ffi.cast

    def call(_k, r0, r1):
        fn(cast("const uint8_t *", px + r0 * sx), cast("float *", py + r0 * sy), r1 - r0, n, sx, sy)

    def job(_k, r0, r1):
        return _pool.job("dequantize", address(ffi, fn), _at(ffi, px) + r0 * sx, _at(ffi, py) + r0 * sy, r1 - r0, n,
                         sx, sy)

    _run_rows(call, rows.n_rows, n_threads, job)
    return out


def quantize(x, type, *, variant="ref", imatrix=None, isa=None, kernel=None, n_threads=1, out=None) -> np.ndarray:
    """``mlaref.reference.quantize`` by a C kernel: float32 rows -> uint8 rows of ``type``.

    The model quantizers of iq4_nl, q4_K and q6_K (``variant="model"``, with or without ``imatrix``) run the
    ``quantize_chunk`` kernels; every other variant the ``quantize_row`` kernels, which take no imatrix."""
    bs, ts = geometry(type)
    plan = _variant_plan(type, variant)
    family = "quantize_chunk" if plan == "model" and type in _catalog.MODEL_QUANT_TYPES else "quantize_row"
    if imatrix is not None and family != "quantize_chunk":
        raise DispatchError(f"quantize: no kernel takes an imatrix ({type}, variant {variant!r}); use the reference")
    n_threads = _args.check_threads(n_threads)
    rows = _args.input_rows(x, "x", np.float32, multiple=bs)
    n = rows.array.shape[1]
    qw = None if imatrix is None else _imatrix(imatrix, n)
    shape = np.shape(x)[:-1] + (n // bs * ts,)
    inputs = [("x", rows.array)] + ([] if qw is None else [("imatrix", qw)])
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
        dst = _args.fresh_rows(out)
    else:
        dst = _args.output_rows(out, "out", np.uint8, shape, inputs=inputs)
    spec, fn, ffi = resolve(family, type, None, plan, isa=isa, kernel=kernel)
    px, py, sx, sy = _base(ffi, rows.array), _base(ffi, dst.array), rows.stride, dst.stride
    cast = ffi.cast
    if family == "quantize_chunk":
        pw = ffi.NULL if qw is None else ffi.cast("const float *", _base(ffi, qw))

        def call(_k, r0, r1):
            fn(cast("const float *", px + r0 * sx), cast("uint8_t *", py + r0 * sy), pw, r1 - r0, n, sx, sy)

        def job(_k, r0, r1):
            return _pool.job("quantize_chunk", address(ffi, fn), _at(ffi, px) + r0 * sx, _at(ffi, py) + r0 * sy,
                             _at(ffi, pw), r1 - r0, n, sx, sy)
    else:
        def call(_k, r0, r1):
            fn(cast("const float *", px + r0 * sx), cast("uint8_t *", py + r0 * sy), r1 - r0, n, sx, sy)

        def job(_k, r0, r1):
            return _pool.job("quantize", address(ffi, fn), _at(ffi, px) + r0 * sx, _at(ffi, py) + r0 * sy, r1 - r0,
                             n, sx, sy)

    _run_rows(call, rows.n_rows, n_threads, job)
    return out


def _imatrix(imatrix, n: int) -> np.ndarray:
    """The importance matrix as the kernels read it: float32 of shape ``(n,)`` (one weight per column, as
    ``mlaref.reference.quantize`` takes it), contiguous (a strided one is copied); TypeError / ValueError else."""
    if not isinstance(imatrix, np.ndarray):
        raise TypeError(f"imatrix: expected a NumPy array, got {type(imatrix).__name__}")
    if imatrix.dtype != np.float32:
        raise TypeError(f"imatrix: dtype must be float32, got {imatrix.dtype}")
    if imatrix.shape != (n,):
        raise ValueError(f"imatrix: must have shape ({n},) (one weight per column of x), got {imatrix.shape}")
    return np.ascontiguousarray(imatrix)


def convert(data, src_type, dst_type, *, variant="ref", isa=None, kernel=None, n_threads=1, out=None) -> np.ndarray:
    """Rows of ``src_type`` -> rows of ``dst_type``: ``to_float`` then ``from_float`` per row, as #253's
    ``iqk_quantize_any`` does; equals ``quantize(dequantize(data, src_type), dst_type, variant=variant)``."""
    sbs, sts = geometry(src_type)
    dbs, dts = geometry(dst_type)
    plan = _variant_plan(dst_type, variant)
    n_threads = _args.check_threads(n_threads)
    rows = _args.input_rows(data, "data", np.uint8, multiple=sts, unit="bytes")
    n = rows.array.shape[1] // sts * sbs
    if n % dbs:
        raise ValueError(f"data: rows of {n} values are not a multiple of {dst_type}'s block size {dbs}")
    shape = np.shape(data)[:-1] + (n // dbs * dts,)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
        dst = _args.fresh_rows(out)
    else:
        dst = _args.output_rows(out, "out", np.uint8, shape, inputs=[("data", rows.array)])
    spec, fn, ffi = resolve("convert_rows", src_type, dst_type, plan, isa=isa, kernel=kernel)
    parts = split(rows.n_rows, n_threads)
    scratch = np.empty((len(parts), n), dtype=np.float32)
    px, py, pt, sx, sy = _base(ffi, rows.array), _base(ffi, dst.array), _base(ffi, scratch), rows.stride, dst.stride
    cast = ffi.cast

    def call(k, r0, r1):
        fn(cast("const uint8_t *", px + r0 * sx), cast("uint8_t *", py + r0 * sy), cast("float *", pt + k * 4 * n),
           r1 - r0, n, sx, sy)

    def job(k, r0, r1):
        return _pool.job("convert", address(ffi, fn), _at(ffi, px) + r0 * sx, _at(ffi, py) + r0 * sy,
                         _at(ffi, pt) + k * 4 * n, r1 - r0, n, sx, sy)

    _run_rows(call, rows.n_rows, n_threads, job)
    return out


def _row_bytes(type: str, n: int) -> int:
    """Bytes of a row of ``n`` values (the x4 layouts have the byte count of their plain blocks)."""
    bs, ts = geometry(type)
    return n // bs * ts


@functools.cache
def _plan_tokens() -> dict[str, str]:
    """Plan name -> catalog plan token of the vec_dot kernels."""
    return {v: k for k, v in _catalog.VEC_DOT_PLANS.items()}


def vec_dot(x, x_type, y, y_type, n, plan="ggml_generic", *, isa=None, kernel=None, n_threads=1, out=None):
    """``mlaref.reference.ops.vec_dot.vec_dot`` by a C kernel: float32 ``(M, N)`` dot products of x rows with y
    rows in the float order of ``plan`` (a plan name of reference/plan.py, e.g. ``mlaref_l8a2``)."""
    geometry(x_type), geometry(y_type)
    if not isinstance(plan, str):
        plan = getattr(plan, "name", plan)
    token = _plan_tokens().get(plan)
    if token is None:
        raise ValueError(f"plan: no vec_dot kernels for {plan!r}; kernels exist for "
                         f"{', '.join(_catalog.VEC_DOT_PLANS.values())}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0 or n > _args.MAX_ELEMENTS:
        raise ValueError(f"n: must be a positive int, got {n!r}")
    n = int(n)
    bs = max(geometry(x_type)[0], geometry(y_type)[0], 32 if x_type not in ("f32", "f16", "bf16") else 1)
    if n % bs:
        raise ValueError(f"n: {n} must be a multiple of {bs} for {x_type}.{y_type}")
    n_threads = _args.check_threads(n_threads)
    xr = _args.input_rows(x, "x", np.uint8, row_len=_row_bytes(x_type, n), unit="bytes")
    yr = _args.input_rows(y, "y", np.uint8, row_len=_row_bytes(y_type, n), unit="bytes")
    if np.ndim(x) != 2 or np.ndim(y) != 2:
        raise ValueError("x, y: must be 2-D (rows, row_bytes)")
    shape = (xr.n_rows, yr.n_rows)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
        dst = _args.fresh_rows(out)
    else:
        dst = _args.output_rows(out, "out", np.float32, shape, inputs=[("x", xr.array), ("y", yr.array)])
    spec, fn, ffi = resolve("vec_dot", x_type, y_type, token, isa=isa, kernel=kernel)
    px, po, sx, so, sy, ny = _base(ffi, xr.array), _base(ffi, dst.array), xr.stride, dst.stride, yr.stride, yr.n_rows
    cast = ffi.cast
    py = cast("const uint8_t *", _base(ffi, yr.array))

    def call(_k, r0, r1):
        fn(cast("const uint8_t *", px + r0 * sx), sx, r1 - r0, py, sy, ny, n, cast("float *", po + r0 * so), so)

    def job(_k, r0, r1):
        return _pool.job("vec_dot", address(ffi, fn), _at(ffi, px) + r0 * sx, sx, r1 - r0, _at(ffi, py), sy, ny, n,
                         _at(ffi, po) + r0 * so, so)

    _run_rows(call, xr.n_rows, n_threads, job)
    return out


# -- Tensor ops: #253's row paths on the copy kernels -----------------------------------------------------

def _row_bytes_ok(t) -> bool:
    return t.nb[0] == t.type_size


def _span(t) -> tuple[int, int]:
    """[first, last) absolute addresses of the bytes a tensor view covers."""
    lo = t.data.__array_interface__["data"][0] + t.offset
    return lo, lo + t.nbytes()


def _check_disjoint(dst_t, srcs, op: str) -> None:
    """The destination's byte span must not meet a source's: the kernels read and write without ordering."""
    d0, d1 = _span(dst_t)
    for arg, t in srcs:
        s0, s1 = _span(t)
        if d0 < s1 and s0 < d1:
            raise ValueError(f"{op}: out overlaps {arg} (bytes [{d0:#x}, {d1:#x}) and [{s0:#x}, {s1:#x}))")


def _out_tensor(out, op: str, type_: str, ne, srcs):
    """A fresh contiguous destination, or the caller's ``out`` once checked (type, ne, contiguity, writable,
    disjoint from every source)."""

    if out is None:
        return Tensor.empty(type_, ne)
    if not isinstance(out, Tensor):
        raise TypeError(f"{op}: out must be a Tensor, got {type(out).__name__}")
    if out.type != type_ or tuple(out.ne) != tuple(ne):
        raise ValueError(f"{op}: out must be a {type_} tensor of ne {tuple(ne)}, got {out.type} of ne {out.ne}")
    if not out.is_contiguous():
        raise ValueError(f"{op}: out must be contiguous (nb {out.nb})")
    if not out.data.flags.writeable:
        raise ValueError(f"{op}: out is read-only")
    _check_disjoint(out, srcs, op)
    return out


def _split_dim(ne123, n_threads: int) -> int:
    """The dim (1..3) whose rows are split over threads: the outermost with at least ``n_threads`` entries, else
    the largest. Every destination row is written by one thread, so the bytes do not depend on the split."""
    for d in (3, 2, 1):
        if ne123[d - 1] >= n_threads:
            return d
    return max((3, 2, 1), key=lambda d: ne123[d - 1])


def _row_jobs(ne123, n_threads: int, bases_nb):
    """(pointer offsets per tensor, ne1, ne2, ne3) of each thread's share of the rows; ``bases_nb`` holds each
    tensor's (nb1, nb2, nb3)."""
    if n_threads == 1:
        return [((0,) * len(bases_nb), *ne123)]
    d = _split_dim(ne123, n_threads)
    jobs = []
    for r0, r1 in split(ne123[d - 1], n_threads):
        ne = list(ne123)
        ne[d - 1] = r1 - r0
        jobs.append((tuple(r0 * nb[d - 1] for nb in bases_nb), *ne))
    return jobs


def streams(footprint: int) -> int:
    """The ``stream`` argument of the row-copy kernels for an op that reads and writes ``footprint`` bytes in all
    (every thread's share): 1 (streaming stores) when that is more than a quarter of the last-level cache, so the
    output could not stay in cache for its reader anyway, else 0. Measured here (48 MiB L3): the 36 MB MLA concat
    runs at 0.54x memcpy with ordinary stores and 0.9x streamed; the 8.5 MB repeat at 0.9x ordinary, 0.7x
    streamed. The bytes do not depend on it."""
    return int(footprint * 4 > _cpu.llc_bytes())


def _rows_of(t) -> np.ndarray:
    """The rows of ``t`` (``nb[0] == type_size``) in ggml order as a ``(nrows, row_size)`` uint8 array: a strided
    view of ``t.data`` when the rows sit at one stride, else a copy; the bytes of ``np.stack`` of ``t.row(...)``."""
    rs = t.row_size()
    base = t.data[t.offset:]
    view = np.lib.stride_tricks.as_strided(base, (t.ne[3], t.ne[2], t.ne[1], rs), (t.nb[3], t.nb[2], t.nb[1], 1),
                                           writeable=False)
    return view.reshape(-1, rs)


def _from_reference(result, out, op: str, srcs):
    """A reference result, or its bytes written into the checked ``out``."""
    if out is None:
        return result
    dst = _out_tensor(out, op, result.type, result.ne, srcs)
    dst.data[dst.offset: dst.offset + dst.nbytes()] = result.data[result.offset: result.offset + result.nbytes()]
    return dst


def concat_jobs(a, b, dst, *, isa=None, kernel=None, n_threads=1) -> list[list[int]]:
    """The pool jobs (one step) of ``dst = concat(a, b, 0)`` by the one-pass ``concat_rows`` kernel: every type
    (dim 0 joins the bytes of two rows, so f32 gets ggml's element-wise concat's bytes too), rows packed;
    ``dst`` checked as ``out=`` (a Tensor over memory that must stay alive while the jobs run)."""
    if a.type != b.type or not (_row_bytes_ok(a) and _row_bytes_ok(b)):
        raise ValueError(f"concat: the kernel joins rows of one type with packed elements, got {a.type} "
                         f"nb0 {a.nb[0]} and {b.type} nb0 {b.nb[0]}")
    if a.ne[1:] != b.ne[1:]:
        raise ValueError(f"concat: a and b must agree in ne[1:] for dim 0, got {a.ne} and {b.ne}")
    dst = _out_tensor(dst, "concat", a.type, (a.ne[0] + b.ne[0],) + tuple(a.ne[1:]), [("a", a), ("b", b)])
    spec, fn, ffi = resolve("concat_rows", "bytes", None, "ref", isa=isa, kernel=kernel)
    ad = _pool.address(dst.data) + dst.offset
    aa = _pool.address(a.data) + a.offset
    ab = _pool.address(b.data) + b.offset
    a_nb, b_nb, d_nb = tuple(a.nb[1:]), tuple(b.nb[1:]), tuple(dst.nb[1:])
    ra, rb, fa = a.row_size(), b.row_size(), address(ffi, fn)
    stream = streams(2 * dst.nbytes())  # a and b are read once, dst written once
    return [_pool.job("concat", fa, ad + od, aa + oa, ab + ob, ra, rb, n1, n2, n3, *a_nb, *b_nb, *d_nb, stream)
            for (od, oa, ob), n1, n2, n3 in _row_jobs(tuple(a.ne[1:]), n_threads, (d_nb, a_nb, b_nb))]


def concat(a, b, dim: int, *, isa=None, kernel=None, n_threads=1, out=None):
    """``reference.ops.concat.concat``; dim 0 with packed rows (``concat_any``, and f32's element-wise concat,
    whose bytes are the same) runs the one-pass ``concat_rows`` kernel (each destination row written once, a's
    bytes then b's). ``out``: a contiguous Tensor of the result's type and ne to write into (as ggml writes into
    an allocator-planned buffer)."""
    ref = importlib.import_module("mlaref.reference.ops.concat")

    n_threads = _args.check_threads(n_threads)
    if dim != 0 or a.type != b.type or not (_row_bytes_ok(a) and _row_bytes_ok(b)):
        return _from_reference(ref.concat(a, b, dim), out, "concat", [("a", a), ("b", b)])
    if a.ne[1:] != b.ne[1:]:
        raise ValueError(f"concat: a and b must agree in ne[1:] for dim 0, got {a.ne} and {b.ne}")
    dst = _out_tensor(out, "concat", a.type, (a.ne[0] + b.ne[0],) + tuple(a.ne[1:]), [("a", a), ("b", b)])
    _pool.run(concat_jobs(a, b, dst, isa=isa, kernel=kernel, n_threads=n_threads))
    return dst


def repeat_jobs(src, dst, *, isa=None, kernel=None, n_threads=1) -> list[list[list[int]]]:
    """The pool jobs of ``dst = repeat(src, dst.ne)`` by the copy kernel, one step per tile of the dims where src
    has several entries and is repeated (a broadcast dim is a source stride of 0, no tile); src rows packed,
    ``dst`` checked as ``out=``."""
    ref = importlib.import_module("mlaref.reference.ops.repeat")

    if not _row_bytes_ok(src):
        raise ValueError(f"repeat: the kernel copies rows with packed elements, got nb0 {src.nb[0]}")
    ne = ref._target(src, dst.ne)
    dst = _out_tensor(dst, "repeat", src.type, ne, [("src", src)])
    bcast = [k for k in (1, 2, 3) if src.ne[k] == 1]
    s_nb = [0 if k in bcast else src.nb[k] for k in (1, 2, 3)]
    ne123 = tuple(ne[k] if k in bcast else src.ne[k] for k in (1, 2, 3))
    reps = [1 if k in bcast else ne[k] // src.ne[k] for k in range(4)]
    reps[0] = ne[0] // src.ne[0]
    row = src.row_size()
    spec, fn, ffi = resolve("copy_rows", "bytes", None, "ref", isa=isa, kernel=kernel)
    ad, as_, fa = _pool.address(dst.data) + dst.offset, _pool.address(src.data) + src.offset, address(ffi, fn)
    d_nb = tuple(dst.nb[1:])
    tiles = [t1 * src.ne[1] * dst.nb[1] + t2 * src.ne[2] * dst.nb[2] + t3 * src.ne[3] * dst.nb[3]
             for t3 in range(reps[3]) for t2 in range(reps[2]) for t1 in range(reps[1])]
    stream = streams(dst.nbytes() + row * src.nrows())  # each source row is read from memory once
    return [[_pool.job("copy", fa, ad + off + od, as_ + os_, row, reps[0], n1, n2, n3, *s_nb, *d_nb, stream)
             for (od, os_), n1, n2, n3 in _row_jobs(ne123, n_threads, (d_nb, tuple(s_nb)))]
            for off in tiles]


def repeat(src, b, *, isa=None, kernel=None, n_threads=1, out=None):
    """``reference.ops.repeat.repeat`` by the copy kernel (every type: rows tiled, each row repeated in ne0).
    ``out``: a contiguous Tensor of the target type and ne to write into."""
    ref = importlib.import_module("mlaref.reference.ops.repeat")

    n_threads = _args.check_threads(n_threads)
    ne = ref._target(src, b)
    if not _row_bytes_ok(src):
        return _from_reference(ref.repeat(src, b), out, "repeat", [("src", src)])
    dst = _out_tensor(out, "repeat", src.type, ne, [("src", src)])
    for step in repeat_jobs(src, dst, isa=isa, kernel=kernel, n_threads=n_threads):  # each tile over the threads
        _pool.run(step)
    return dst


def copy_jobs(src, dst, *, isa=None, kernel=None, n_threads=1) -> list[list[int]]:
    """The pool jobs (one step) of a same-type row copy ``dst <- src`` (``cpy`` / ``cont``) by the copy kernel:
    equal ne, rows of both packed (any strides), disjoint, dst writable."""
    if src.type != dst.type or src.ne != dst.ne or not (_row_bytes_ok(src) and _row_bytes_ok(dst)):
        raise ValueError(f"copy: the kernel copies packed rows of one type and shape, got {src.type} {src.ne} "
                         f"-> {dst.type} {dst.ne}")
    if not dst.data.flags.writeable:
        raise ValueError("copy: the destination buffer is read-only")
    _check_disjoint(dst, [("the source", src)], "copy")
    spec, fn, ffi = resolve("copy_rows", "bytes", None, "ref", isa=isa, kernel=kernel)
    ad, as_, fa = _pool.address(dst.data) + dst.offset, _pool.address(src.data) + src.offset, address(ffi, fn)
    s_nb, d_nb = tuple(src.nb[1:]), tuple(dst.nb[1:])
    row = src.row_size()
    stream = streams(2 * row * src.nrows())
    return [_pool.job("copy", fa, ad + od, as_ + os_, row, 1, n1, n2, n3, *s_nb, *d_nb, stream)
            for (od, os_), n1, n2, n3 in _row_jobs(tuple(src.ne[1:]), n_threads, (d_nb, s_nb))]


def cast_jobs(src, dst, *, isa=None, kernel=None, n_threads=1) -> list[list[int]]:
    """The pool jobs (one step) of the float cast ``dst <- src`` (``ggml_cpy`` / ``ggml_cast``) by a ``cast_rows``
    kernel: f32 to or from f16, bf16 or q8_0, equal ne, rows of both packed (any strides), disjoint. From f32 the
    conversion is the quantize variant ggml's x86 cpy uses (``_catalog.CAST_PLANS``; reference/ops/cpy.py)."""
    pair = (src.type, dst.type)
    if src.ne != dst.ne or not (_row_bytes_ok(src) and _row_bytes_ok(dst)):
        raise ValueError(f"cast: the kernel converts packed rows of one shape, got {src.ne} nb0 {src.nb[0]} -> "
                         f"{dst.ne} nb0 {dst.nb[0]}")
    if "f32" not in pair or src.type == dst.type or not set(pair) - {"f32"} <= set(_catalog.CAST_TYPES):
        raise ValueError(f"cast: no cast_rows kernel for {src.type} -> {dst.type} (f32 to or from "
                         f"{', '.join(_catalog.CAST_TYPES)})")
    bs = get_type(dst.type if src.type == "f32" else src.type).block_size
    if src.ne[0] % bs:
        raise ValueError(f"cast: rows of {src.ne[0]} values are not whole {pair[0] if bs == 1 else pair[1]} blocks")
    if not dst.data.flags.writeable:
        raise ValueError("cast: the destination buffer is read-only")
    f32 = src if src.type == "f32" else dst
    if (_pool.address(f32.data) + f32.offset) % 4 or any(nb % 4 for nb in f32.nb[1:]):
        raise ValueError("cast: the f32 side must be 4-byte aligned (its address and row strides)")
    _check_disjoint(dst, [("the source", src)], "cast")
    plan = "ref" if dst.type == "f32" else _catalog.CAST_PLANS[dst.type]
    spec, fn, ffi = resolve("cast_rows", src.type, dst.type, plan, isa=isa, kernel=kernel)
    ad, as_, fa = _pool.address(dst.data) + dst.offset, _pool.address(src.data) + src.offset, address(ffi, fn)
    # walk the source in memory order: the K/V casts read kv_f32's rows front to back (17-27 % faster, same bytes)
    o = sorted(range(1, 4), key=lambda k: src.nb[k])
    ne123, s_nb, d_nb = (tuple(t[k] for k in o) for t in (src.ne, src.nb, dst.nb))
    return [_pool.job("cast", fa, ad + od, as_ + os_, src.ne[0], n1, n2, n3, *s_nb, *d_nb)
            for (od, os_), n1, n2, n3 in _row_jobs(ne123, n_threads, (d_nb, s_nb))]


_FLOAT_CASTS = ("f16", "bf16")


def _float_cast(src, dst) -> bool:
    """Whether ``cpy(src, dst)`` is an element cast a ``cast_rows`` kernel runs: f32 <-> f16 / bf16, f32 aligned."""
    pair = {src.type, dst.type}
    if src.type == dst.type or "f32" not in pair or not pair - {"f32"} <= set(_FLOAT_CASTS):
        return False
    f32 = src if src.type == "f32" else dst
    return (_pool.address(f32.data) + f32.offset) % 4 == 0 and all(nb % 4 == 0 for nb in f32.nb[1:])


def cpy(src, dst, *, variant=None, isa=None, n_threads=1, **kwargs):
    """``reference.ops.cpy.cpy``: same-type row copies, the element casts f32 <-> f16 / bf16 (``cast_rows``),
    float -> block type and block type -> f32 by kernels; everything else (other element casts, keyword options
    of the reference) by the reference."""
    ref = importlib.import_module("mlaref.reference.ops.cpy")

    if kwargs:
        return ref.cpy(src, dst, variant=variant, **kwargs)
    if isinstance(dst, str):
        dst = Tensor.empty(dst, src.ne)
    if src.ne != dst.ne or not (_row_bytes_ok(src) and dst.is_contiguous()):
        return ref.cpy(src, dst, variant=variant)
    if src.type == dst.type:
        _pool.run(copy_jobs(src, dst, isa=isa, n_threads=n_threads))
        return dst
    if variant is None and _float_cast(src, dst):
        _pool.run(cast_jobs(src, dst, isa=isa, n_threads=n_threads))  # the element casts f32 <-> f16 / bf16
        return dst
    rows = _rows_of(src) if src.nrows() else None
    if rows is not None and src.type == "f32" and rows.__array_interface__["data"][0] % 4:
        rows = rows.copy()  # an f32 kernel reads aligned floats (a fresh copy is aligned, as np.stack's was)
    view = dst.data[dst.offset: dst.offset + dst.nbytes()].reshape(src.nrows(), -1)
    if src.type in ("f32", "f16", "bf16") and dst.type in GEOMETRY and dst.type not in ("f32", "f16", "bf16"):
        fmt = get_type(dst.type)
        v = variant or ("x86" if "x86" in fmt.variants else "ref")
        if src.type == "f32":
            quantize(rows.view(np.float32), dst.type, variant=v, isa=isa, n_threads=n_threads, out=view)
        else:
            convert(rows, src.type, dst.type, variant=v, isa=isa, n_threads=n_threads, out=view)
        return dst
    if dst.type == "f32" and src.type in GEOMETRY and src.type not in ("f32", "f16", "bf16"):
        dequantize(rows, src.type, isa=isa, n_threads=n_threads, out=view.view(np.float32))
        return dst
    return ref.cpy(src, dst, variant=variant)
