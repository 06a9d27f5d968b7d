"""The CUDA kernels behind the interface of their CPU counterparts, every argument checked in Python first.

``repeat``, ``concat`` and ``cpy`` (same type) take Tensors as :mod:`mlaref.codegen.kernels.rows` does and write
the bytes of ``mlaref.reference.ops``; ``convert`` takes rows as ``rows.convert`` does (f32 rows as float32, f16 /
bf16 rows as uint8 bytes) and returns q8_0 or f16 rows; ``mul_mat`` takes weight rows and rows already converted
to the weight's vec_dot type and returns ggml's dst layout, float32 ``(n_y, m)``, in the order of the GPU plan
``cuda_w32`` (``reference.ops.vec_dot.vec_dot(x, x_type, y, y_type, n, "cuda_w32").T``); ``flash_attn_ext`` takes
Tensors as ``reference.ops.flash_attn_ext`` does and computes its ``blocked`` algorithm under the GPU plan
``cuda_fa_w32``.

Each call hands host buffers to the kernel's host entry, which copies them to the device, launches, synchronises and
copies the outputs back (``generated/cuda/*``). A Tensor is handed over as the bytes of its view, from its first
byte for ``nbytes()`` bytes, so an output's gaps between strided rows come back as they were. ``iters > 0`` runs the
kernel ``iters`` more times between CUDA events and returns ``(result, milliseconds per launch)``.

Checks, all before a pointer reaches C: a GPU is present (:class:`CudaUnavailable` with the driver's reason
otherwise), types and shapes as the op needs them, rows packed (``nb[0]`` the type size), 2-byte aligned strides
wherever the kernel reads f16 scales or values, 4-byte aligned f32 rows, writable outputs that overlap no input,
positive sizes below ``args.MAX_ELEMENTS``.
"""

from __future__ import annotations

import ctypes

import numpy as np

from mlaref.codegen import args as _args
from mlaref.codegen import catalog as _catalog
from mlaref.codegen.cuda import build as _cbuild
from mlaref.reference import get_type
from mlaref.reference.tensor import Tensor, type_geometry

__all__ = ["CudaUnavailable", "CudaError", "require_gpu", "resolve", "repeat", "concat", "cpy", "convert", "mul_mat",
           "flash_attn_ext"]


class CudaUnavailable(RuntimeError):
    """No CUDA GPU (or driver) here; the message says why."""


class CudaError(RuntimeError):
    """A CUDA call in a kernel's host entry failed."""


def require_gpu() -> None:
    if not _cbuild.gpu_present():
        raise CudaUnavailable(_cbuild.gpu_status())


def resolve(family: str, type_x: str, type_y: str | None, plan: str, kernel: str | None = None):
    """The CUDA spec of (family, types, plan), or the one named ``kernel`` (checked to compute that)."""
    if kernel is not None:
        spec = _catalog.cuda_by_name().get(kernel)
        if spec is None:
            raise ValueError(f"kernel: {kernel!r} is not in the CUDA catalog")
        _catalog.check_computes(spec, kernel, family, type_x, type_y, plan)
        return spec
    found = [s for s in _catalog.cuda_catalog() if (s.family, s.type_x, s.type_y, s.plan) ==
             (family, type_x, type_y, plan)]
    if not found:
        raise ValueError(f"no CUDA {family} kernel for {type_x}/{type_y} [{plan}]; the CUDA catalog has "
                         f"{', '.join(s.name for s in _catalog.cuda_catalog() if s.family == family)}")
    return found[0]


def _call(spec, iters: int, *argv) -> float:
    """Run the host entry of ``spec`` (the timed one when ``iters > 0``); milliseconds per launch or 0.0."""
    require_gpu()
    lib = _cbuild.load(spec.family, spec.isa)
    if iters:
        ms = np.zeros(1, np.float32)
        rc = lib.fn(spec.name + "_timed")(*argv, iters, ms.ctypes.data)
    else:
        rc = lib.fn(spec.name)(*argv)
    if rc != 0:
        raise CudaError(f"{spec.name}: {lib.error(rc)}")
    return float(ms[0]) / iters if iters else 0.0


def _iters(iters) -> int:
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or not 0 <= iters <= 100_000:
        raise ValueError(f"iters: must be an int in 0..100000, got {iters!r}")
    return int(iters)


def _done(result, ms: float, iters: int):
    return (result, ms) if iters else result


# -- Tensor views: the host span of a view ----------------------------------------------------------------------

def _addr(t: Tensor) -> int:
    return t.data.ctypes.data + t.offset


def _span(t: Tensor) -> tuple[int, int]:
    lo = _addr(t)
    return lo, lo + t.nbytes()


def _check_tensor(t, what: str, op: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {what} must be a Tensor, got {type(t).__name__}")
    if t.nb[0] != t.type_size:
        raise ValueError(f"{op}: the rows of {what} must be packed (nb[0] {t.nb[0]} != type size {t.type_size})")
    if any(v <= 0 for v in t.ne) or t.nbytes() > _args.MAX_ELEMENTS:
        raise ValueError(f"{op}: {what} must be non-empty and below {_args.MAX_ELEMENTS} bytes (ne {t.ne})")
    return t


def _check_out(out: Tensor, srcs, op: str) -> None:
    if not out.data.flags.writeable:
        raise ValueError(f"{op}: the destination buffer is read-only")
    d0, d1 = _span(out)
    for what, t in srcs:
        s0, s1 = _span(t)
        if d0 < s1 and s0 < d1:
            raise ValueError(f"{op}: the destination overlaps {what} (bytes [{d0:#x}, {d1:#x}) and [{s0:#x}, {s1:#x}))")


def _out_tensor(out, type_: str, ne, srcs, op: str) -> Tensor:
    if out is None:
        return Tensor.empty(type_, ne)
    _check_tensor(out, "out", op)
    if out.type != type_ or tuple(out.ne) != tuple(ne):
        raise ValueError(f"{op}: out must be a {type_} tensor of ne {tuple(ne)}, got {out.type} of ne {out.ne}")
    _check_out(out, srcs, op)
    return out


def _ptr(t: Tensor):
    return ctypes.c_void_p(_addr(t))


def _copy_rows(spec, dst: Tensor, src: Tensor, row_bytes: int, n_rep: int, ne123, s_nb, d_nb, iters: int) -> float:
    return _call(spec, iters, _ptr(dst), dst.nbytes(), _ptr(src), src.nbytes(), row_bytes, n_rep, *ne123, *s_nb,
                 *d_nb)


def repeat(src, b, *, out=None, kernel=None, iters=0):
    """``reference.ops.repeat.repeat`` of packed rows (f16, bf16, q8_0, any type): each target row is a source row
    repeated along dim 0 ``ne[0] / src.ne[0]`` times (whole rows only for block types); dims 1..3 tile, a source
    dim of 1 broadcasts (stride 0, one launch), a larger one takes one launch per tile."""
    iters = _iters(iters)
    _check_tensor(src, "src", "repeat")
    ne = tuple(b.ne) if isinstance(b, Tensor) else tuple(int(v) for v in b) + (1,) * (4 - len(tuple(b)))
    if len(ne) != 4 or any(v <= 0 for v in ne) or any(ne[k] % src.ne[k] for k in range(4)):
        raise ValueError(f"repeat: the target ne {ne} must be positive multiples of src ne {src.ne}")
    if type_geometry(src.type)[0] > 1 and ne[0] != src.ne[0]:
        raise ValueError(f"repeat: {src.type} rows can be repeated only whole (ne[0] {src.ne[0]} -> {ne[0]})")
    dst = _out_tensor(out, src.type, ne, [("src", src)], "repeat")
    spec = resolve("copy_rows", "bytes", None, "ref", kernel)
    bcast = [k for k in (1, 2, 3) if src.ne[k] == 1]
    s_nb = tuple(0 if k in bcast else src.nb[k] for k in (1, 2, 3))
    ne123 = tuple(ne[k] if k in bcast else src.ne[k] for k in (1, 2, 3))
    reps = [1 if k in bcast else ne[k] // src.ne[k] for k in range(4)]
    ms = 0.0
    for t3 in range(reps[3]):
        for t2 in range(reps[2]):
            for t1 in range(reps[1]):
                off = t1 * src.ne[1] * dst.nb[1] + t2 * src.ne[2] * dst.nb[2] + t3 * src.ne[3] * dst.nb[3]
                tile = Tensor(dst.type, (ne[0],) + ne123, dst.nb, dst.data, dst.offset + off)
                ms += _copy_rows(spec, tile, src, src.row_size(), ne[0] // src.ne[0], ne123, s_nb, dst.nb[1:],
                                 iters)
    return _done(dst, ms, iters)


def concat(a, b, dim: int = 0, *, out=None, kernel=None, iters=0):
    """``reference.ops.concat.concat`` along dim 0 of two tensors of one type with packed rows (#253's
    ``concat_any``): each destination row is a's row then b's row."""
    iters = _iters(iters)
    _check_tensor(a, "a", "concat")
    _check_tensor(b, "b", "concat")
    if dim != 0:
        raise ValueError(f"concat: the CUDA kernel joins rows along dim 0, got dim {dim!r}")
    if a.type != b.type or tuple(a.ne[1:]) != tuple(b.ne[1:]):
        raise ValueError(f"concat: a and b must have one type and agree in ne[1:], got {a.type} {a.ne} and "
                         f"{b.type} {b.ne}")
    dst = _out_tensor(out, a.type, (a.ne[0] + b.ne[0],) + tuple(a.ne[1:]), [("a", a), ("b", b)], "concat")
    spec = resolve("concat_rows", "bytes", None, "ref", kernel)
    ms = _call(spec, iters, _ptr(dst), dst.nbytes(), _ptr(a), a.nbytes(), _ptr(b), b.nbytes(), a.row_size(),
               b.row_size(), *a.ne[1:], *a.nb[1:], *b.nb[1:], *dst.nb[1:])
    return _done(dst, ms, iters)


def cpy(src, dst, *, kernel=None, iters=0):
    """A same-type row copy ``dst <- src`` (``ggml_cpy`` / ``ggml_cont`` of one type): equal ne, packed rows, any
    row strides on both sides, disjoint."""
    iters = _iters(iters)
    _check_tensor(src, "src", "cpy")
    _check_tensor(dst, "dst", "cpy")
    if src.type != dst.type or tuple(src.ne) != tuple(dst.ne):
        raise ValueError(f"cpy: the CUDA kernel copies one type and shape, got {src.type} {src.ne} -> {dst.type} "
                         f"{dst.ne}")
    _check_out(dst, [("src", src)], "cpy")
    spec = resolve("copy_rows", "bytes", None, "ref", kernel)
    ms = _copy_rows(spec, dst, src, src.row_size(), 1, src.ne[1:], src.nb[1:], dst.nb[1:], iters)
    return _done(dst, ms, iters)


# -- rows: convert and mul_mat ----------------------------------------------------------------------------------

def _rows_in(a, what: str, dtype, row_len: int, align: int):
    rows = _args.input_rows(a, what, dtype, row_len=row_len, unit="values" if dtype == np.float32 else "bytes")
    if np.ndim(a) != 2:
        raise ValueError(f"{what}: must be 2-D (rows, row values or bytes), got {np.ndim(a)} dimensions")
    if rows.stride % align:
        rows = _args.input_rows(np.ascontiguousarray(rows.array), what, dtype, row_len=row_len)
    return rows


def _extent(rows) -> int:
    """Host bytes from the first row's first byte to the last row's last byte."""
    return (rows.n_rows - 1) * rows.stride + rows.array.shape[1] * rows.array.itemsize


def convert(x, src_type: str, dst_type: str, *, variant: str = "x86", out=None, kernel=None, iters=0):
    """src1 rows -> the vec_dot type, as #253's ``iqk_quantize_any`` per row: ``to_float`` (exact) then
    ``from_float``: q8_0 (x86 variant: multiplier 127/amax, ties to even) or f16 (round to nearest even).

    ``x``: float32 ``(R, n)`` for f32; uint8 ``(R, 2n)`` for f16 / bf16. Returns uint8 ``(R, row bytes)``."""
    iters = _iters(iters)
    if dst_type not in _catalog.CUDA_CONVERT or src_type not in _catalog.CUDA_CONVERT[dst_type]:
        raise ValueError(f"convert: CUDA converts {dict(_catalog.CUDA_CONVERT)} (target: sources), not "
                         f"{src_type!r} -> {dst_type!r}")
    if variant != _catalog.CUDA_CONVERT_PLAN:
        raise ValueError(f"convert: the CUDA kernels compute the {_catalog.CUDA_CONVERT_PLAN!r} variant, not {variant!r}")
    dtype = np.float32 if src_type == "f32" else np.uint8
    width = 1 if src_type == "f32" else 2  # array entries per value
    xs = np.shape(x)
    if len(xs) != 2 or xs[1] == 0 or xs[1] % width:
        raise ValueError(f"x: must be 2-D with whole {src_type} values per row, got shape {xs}")
    n = xs[1] // width
    bs, ts = get_type(dst_type).block_size, get_type(dst_type).type_size
    if n % bs:
        raise ValueError(f"x: rows of {n} values are not a multiple of {dst_type}'s block size {bs}")
    rows = _rows_in(x, "x", dtype, xs[1], 4 if src_type == "f32" else 2)
    shape = (rows.n_rows, n // bs * ts)
    if out is None:
        out = np.empty(shape, np.uint8)
    dst = _args.output_rows(out, "out", np.uint8, shape, inputs=[("x", rows.array)])
    if dst.stride % 2:
        raise ValueError(f"out: the row stride ({dst.stride} bytes) must be even (f16 values and scales)")
    spec = resolve("convert_rows", src_type, dst_type, variant, kernel)
    ms = _call(spec, iters, ctypes.c_void_p(rows.array.ctypes.data), _extent(rows),
               ctypes.c_void_p(dst.array.ctypes.data), _extent(dst), rows.n_rows, n, rows.stride, dst.stride)
    return _done(out, ms, iters)


_PLAN_TOKENS = {v: k for k, v in _catalog.CUDA_PLANS.items()}


def mul_mat(x, x_type: str, y, y_type: str, n: int, *, plan: str = "cuda_w32", out=None, kernel=None, iters=0):
    """ggml's mul_mat on converted rows: ``out[j, i] = dot(x row i, y row j)`` in the order of ``plan``, float32
    ``(n_y, m)`` (ggml's dst: one row per src1 row). ``x``: uint8 ``(m, row bytes)`` of f16, q8_0 or iq4_nl;
    ``y``: uint8 ``(n_y, row bytes)`` of the weight's vec_dot type (f16 or q8_0)."""
    iters = _iters(iters)
    plan = getattr(plan, "name", plan)
    token = _PLAN_TOKENS.get(plan)
    if token is None:
        raise ValueError(f"plan: CUDA mul_mat kernels exist for {', '.join(_PLAN_TOKENS)}, not {plan!r}")
    if _catalog.CUDA_MUL_MAT.get(x_type) != y_type:
        raise ValueError(f"mul_mat: CUDA takes weight.vec_dot_type pairs {dict(_catalog.CUDA_MUL_MAT)}, not "
                         f"{x_type}.{y_type}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= _args.MAX_ELEMENTS:
        raise ValueError(f"n: must be a positive int, got {n!r}")
    n = int(n)
    xg, yg = get_type(x_type), get_type(y_type)
    if n % max(xg.block_size, yg.block_size):
        raise ValueError(f"n: {n} must be a multiple of {max(xg.block_size, yg.block_size)} for {x_type}.{y_type}")
    xr = _rows_in(x, "x", np.uint8, n // xg.block_size * xg.type_size, 2)
    yr = _rows_in(y, "y", np.uint8, n // yg.block_size * yg.type_size, 2)
    shape = (yr.n_rows, xr.n_rows)
    if out is None:
        out = np.empty(shape, np.float32)
    dst = _args.output_rows(out, "out", np.float32, shape, inputs=[("x", xr.array), ("y", yr.array)])
    spec = resolve("mul_mat", x_type, y_type, token, kernel)
    ms = _call(spec, iters, ctypes.c_void_p(xr.array.ctypes.data), _extent(xr), xr.stride, xr.n_rows,
               ctypes.c_void_p(yr.array.ctypes.data), _extent(yr), yr.stride, yr.n_rows, n,
               ctypes.c_void_p(dst.array.ctypes.data), _extent(dst), dst.stride)
    return _done(out, ms, iters)


# -- flash attention ---------------------------------------------------------------------------------------------

_FA_PLAN_TOKENS = {v: k for k, v in _catalog.CUDA_FA_PLANS.items()}


def _check_strides(t: Tensor, what: str, align: int, op: str) -> None:
    """The kernel reads t's rows from a device copy of its span (cudaMalloc'd, 256-byte aligned), so its strides
    decide the alignment of every row."""
    if any(s % align for s in t.nb[1:]):
        raise ValueError(f"{op}: the strides of {what} ({t.nb[1:]}) must be multiples of {align} bytes "
                         f"({t.type} values and scales)")


def _fa_masked_rows(mask: Tensor, n_kv: int, n_q: int, n_head: int, ne3: int) -> list:
    """The query rows (i1, i2, i3) whose mask masks every KV cell (the blocked algorithm needs S > 0)."""
    bits = np.stack([mask.row(i1, i2, i3).view(np.uint16)[:n_kv] for i3 in range(mask.ne[3])
                     for i2 in range(mask.ne[2]) for i1 in range(n_q)]).reshape(mask.ne[3], mask.ne[2], n_q, n_kv)
    dead = (bits != 0).all(axis=-1)  # (m3, m2, n_q)
    return [(i1, i2, i3) for i3 in range(ne3) for i2 in range(n_head) for i1 in range(n_q)
            if dead[i3 % mask.ne[3], i2 % mask.ne[2], i1]]


def flash_attn_ext(q, k, v, mask, scale, *, plan: str = "cuda_fa_w32", out=None, kernel=None, iters=0):
    """``reference.ops.flash_attn_ext.flash_attn_ext(q, k, v, mask, scale, algorithm="blocked", plan=plan,
    variant="x86")`` on the GPU: q f32 ``[Dk, n_q, n_head, ne3]``, k / v of one type (f16 or q8_0) ``[D, n_kv,
    n_head_kv, ne3_kv]`` with any row strides (``n_head % n_head_kv == 0``, ``ne3 % ne3_kv == 0``: GQA), an optional
    f16 mask ``[>= n_kv, >= n_q, m2, m3]`` (binary: bits other than +0.0 mask; broadcast over heads by ``i2 % m2``),
    ``Dk <= 576``, ``Dv <= 512``. Returns f32 ``[Dv, n_head, n_q, ne3]`` (ggml's FA layout), or writes ``out``
    (a tensor of that type and ne, any row strides). No softcap, no ALiBi; a query row with every KV cell masked is
    refused, as the reference refuses it."""
    op = "flash_attn_ext"
    iters = _iters(iters)
    plan = getattr(plan, "name", plan)
    token = _FA_PLAN_TOKENS.get(plan)
    if token is None:
        raise ValueError(f"plan: CUDA flash_attn_ext kernels exist for {', '.join(_FA_PLAN_TOKENS)}, not {plan!r}")
    for what, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(t, what, op)
    if mask is not None:
        _check_tensor(mask, "mask", op)
        if mask.type != "f16":
            raise ValueError(f"{op}: mask must be f16, got {mask.type}")
    if q.type != "f32":
        raise ValueError(f"{op}: q must be f32, got {q.type}")
    if k.type not in _catalog.CUDA_FA_KV or v.type != k.type:
        raise ValueError(f"{op}: CUDA takes K and V of one type in {', '.join(_catalog.CUDA_FA_KV)}, got "
                         f"{k.type} / {v.type}")
    dk, n_q, n_head, ne3 = q.ne
    dv, n_kv = v.ne[0], k.ne[1]
    if k.ne[0] != dk or dk > _catalog.CUDA_FA_DK_MAX:
        raise ValueError(f"{op}: k.ne[0] ({k.ne[0]}) must equal q.ne[0] ({dk}) and be <= {_catalog.CUDA_FA_DK_MAX}")
    if dv > _catalog.CUDA_FA_DV_MAX:
        raise ValueError(f"{op}: v.ne[0] ({dv}) must be <= {_catalog.CUDA_FA_DV_MAX}")
    if tuple(v.ne[1:]) != tuple(k.ne[1:]):
        raise ValueError(f"{op}: k and v must agree in ne[1:] (n_kv, heads), got {k.ne} and {v.ne}")
    if n_head % k.ne[2] or ne3 % k.ne[3]:
        raise ValueError(f"{op}: q.ne[2:4] {q.ne[2:]} must be multiples of k.ne[2:4] {k.ne[2:]} (head broadcast)")
    if mask is not None and (mask.ne[0] < n_kv or mask.ne[1] < n_q):
        raise ValueError(f"{op}: mask must cover [n_kv, n_q] = [{n_kv}, {n_q}], got ne {mask.ne[:2]}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) \
            or not np.isfinite(np.float32(scale)):
        raise ValueError(f"{op}: scale must be a finite real number, got {scale!r}")
    _check_strides(q, "q", 4, op)
    _check_strides(k, "k", 2, op)
    _check_strides(v, "v", 2, op)
    if mask is not None:
        _check_strides(mask, "mask", 2, op)
        dead = _fa_masked_rows(mask, n_kv, n_q, n_head, ne3)
        if dead:
            raise ValueError(f"{op}: {len(dead)} query row(s) have every KV cell masked, first (i1, i2, i3) = "
                             f"{dead[0]}: the blocked algorithm needs S > 0 (the reference refuses them too)")
    srcs = [("q", q), ("k", k), ("v", v)] + ([("mask", mask)] if mask is not None else [])
    dst = _out_tensor(out, "f32", (dv, n_head, n_q, ne3), srcs, op)
    _check_strides(dst, "out", 4, op)
    spec = resolve("flash_attn_ext", k.type, v.type, token, kernel)
    scale_bits = int(np.array([scale], np.float32).view(np.uint32)[0])
    m_args = ((_ptr(mask), mask.nbytes(), mask.ne[2], mask.ne[3], *mask.nb[1:]) if mask is not None else
              (None, 0, 1, 1, 0, 0, 0))
    ms = _call(spec, iters, _ptr(q), q.nbytes(), _ptr(k), k.nbytes(), _ptr(v), v.nbytes(), *m_args[:2],
               _ptr(dst), dst.nbytes(), dk, dv, n_q, n_head, ne3, n_kv, k.ne[2], k.ne[3], *m_args[2:4],
               *q.nb[1:], *k.nb[1:], *v.nb[1:], *m_args[4:], *dst.nb[1:], scale_bits)
    return _done(dst, ms, iters)
