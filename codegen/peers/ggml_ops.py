"""Single ggml ops run through real ggml graphs (ggml-python), as the oracle for ``mlaref.reference.ops``.

``run(builder, *inputs, n_threads=1)`` is the generic runner: it makes a ggml context, turns each input
:class:`~mlaref.reference.tensor.Tensor` into a ggml tensor with the same type, ``ne``, ``nb`` and offset
(views of one ggml base tensor per distinct mlaref buffer, so two views of one buffer stay views of one
ggml buffer), calls ``builder(ctx, *ggml_tensors)`` to add the op(s), computes the graph on the CPU
back-end with ``ggml_graph_compute_with_ctx(ctx, graph, n_threads)`` and returns the builder's result (or
tuple of results) as contiguous mlaref Tensors. The bytes come from upstream ggml's own kernels.

Strides are copied into the ggml view as they are, including ``nb[0]``: this is the tensor
``ggml_permute`` / ``ggml_transpose`` / ``ggml_view_4d`` would make, without building that chain.

The op functions below (``concat``, ``repeat``, ``cpy``, ``cast``, ``get_rows``, ``add``, ``mul``,
``scale``, ``rms_norm``, ``rope_ext``, ``soft_max_ext``, ``unary``) are one-line builders over ``run``. Being
module-level functions of Tensors, they also run against another build of ggml through
``peer_build.call(level, "mlaref.codegen.peers.ggml_ops:<op>", ...)`` (``call_many`` for several in one child).
Other op families append their functions at the end of this file.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np

from mlaref.codegen.peers import ggml as ggml_peer
from mlaref.reference.tensor import Tensor, row_size, type_geometry

__all__ = [
    "add",
    "cast",
    "concat",
    "cpy",
    "dup",
    "get_rows",
    "mul",
    "repeat",
    "rms_norm",
    "rope_ext",
    "run",
    "scale",
    "soft_max_ext",
    "type_id",
    "type_name",
    "unary",
]

_I32 = 26  # GGML_TYPE_I32 in ggml.h (upstream numbering)


def type_id(name: str) -> int:
    """The ``enum ggml_type`` value of a type name (the peer's table plus ``i32``)."""
    if name == "i32":
        return _I32
    return ggml_peer.ggml_type(name)


def type_name(tid: int) -> str:
    """The mlaref type name of an ``enum ggml_type`` value."""
    if tid == _I32:
        return "i32"
    for name in ggml_peer.GGML_TYPE:
        if ggml_peer.GGML_TYPE[name] == tid:
            return name
    raise ValueError(f"ggml type {tid} has no mlaref name")


def span(t: Tensor) -> int:
    """Bytes a ggml view of ``t`` must be allowed to reach: ggml_new_tensor_impl asserts the packed size."""
    packed = row_size(t.type, t.ne[0]) * t.ne[1] * t.ne[2] * t.ne[3]
    return t.offset + max(packed, t.nbytes())


def to_ggml(g, ctx, t: Tensor, bases: dict, views: dict):
    bs, ts = type_geometry(t.type)
    key = (id(t.data), t.type)
    if key not in bases:
        # One base per (buffer, type): the buffer's bytes, padded to whole blocks and to the packed size
        # every view of it needs.
        need = max([t.data.size] + [span(u) for u in views[id(t.data)]])
        n_blocks = -(-need // ts)
        base = g.ggml_new_tensor_1d(ctx, type_id(t.type), n_blocks * bs)
        dst = base.contents.data
        ctypes.memset(dst, 0, n_blocks * ts)
        if t.data.size:
            ctypes.memmove(dst, np.ascontiguousarray(t.data).ctypes.data, t.data.size)
        bases[key] = (base, n_blocks * ts)
    base, size = bases[key]
    if span(t) > size:
        raise ValueError(f"ggml_ops: view {t} reaches past its base buffer ({size} bytes)")
    v = g.ggml_view_4d(ctx, base, t.ne[0], t.ne[1], t.ne[2], t.ne[3], t.nb[1], t.nb[2], t.nb[3], t.offset)
    for i in range(4):
        v.contents.nb[i] = t.nb[i]
    return v


def from_ggml(g, out) -> Tensor:
    c = out.contents
    tname = type_name(int(c.type))
    ne = tuple(int(c.ne[i]) for i in range(4))
    nb = tuple(int(c.nb[i]) for i in range(4))
    n = int(g.ggml_nbytes(out))
    buf = np.zeros(max(n, 1), dtype=np.uint8)
    if n:
        ctypes.memmove(buf.ctypes.data, c.data, n)
    return Tensor(tname, ne, nb, buf, 0).copy()


def run(builder: Callable, *inputs: Tensor, n_threads: int = 1, mem_bytes: int | None = None):
    """Build ``builder(ctx, *ggml_inputs)`` in a fresh ggml context, compute it, return mlaref Tensor(s).

    ``builder`` returns one ggml tensor or a tuple of them; each is returned as a contiguous Tensor copy.
    ``mem_bytes`` sizes the context (default: four times the inputs' buffers plus 64 MiB, which holds the
    outputs, the graph and the work buffer of the ops here).
    """
    g = ggml_peer.lib()
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"ggml_ops.run: input {i} must be an mlaref Tensor, got {type(t).__name__}")
    if n_threads < 1:
        raise ValueError(f"ggml_ops.run: n_threads must be >= 1, got {n_threads}")
    in_bytes = sum(max(t.data.size, span(t)) + 64 for t in inputs)
    if mem_bytes is None:
        mem_bytes = 4 * in_bytes + (64 << 20)
    mem_bytes += int(g.ggml_graph_overhead()) + 4096 * (len(inputs) + 16)
    ctx = g.ggml_init(g.ggml_init_params(mem_size=mem_bytes, mem_buffer=None, no_alloc=False))
    if not ctx:
        raise MemoryError(f"ggml_ops.run: ggml_init could not allocate {mem_bytes} bytes")
    try:
        bases: dict = {}
        views: dict = {}
        for t in inputs:
            views.setdefault(id(t.data), []).append(t)
        gts = [to_ggml(g, ctx, t, bases, views) for t in inputs]
        res = builder(ctx, *gts)
        outs = tuple(res) if isinstance(res, (tuple, list)) else (res,)
        gf = g.ggml_new_graph(ctx)
        for o in outs:
            g.ggml_build_forward_expand(gf, o)
        status = g.ggml_graph_compute_with_ctx(ctx, gf, n_threads)
        if status != 0:
            raise RuntimeError(f"ggml_ops.run: ggml_graph_compute_with_ctx returned status {status}")
        result = tuple(from_ggml(g, o) for o in outs)
    finally:
        g.ggml_free(ctx)
    return result if isinstance(res, (tuple, list)) else result[0]


# -- the ops of reference/ops/{concat,repeat,cpy,get_rows,add,mul,scale,rms_norm,rope,soft_max}.py -------


def concat(a: Tensor, b: Tensor, dim: int, *, n_threads: int = 1) -> Tensor:
    """``ggml_concat(a, b, dim)``."""
    g = ggml_peer.lib()
    return run(lambda ctx, x, y: g.ggml_concat(ctx, x, y, dim), a, b, n_threads=n_threads)


def repeat(a: Tensor, ne, *, n_threads: int = 1) -> Tensor:
    """``ggml_repeat(a, b)`` with ``b`` a tensor of a's type and shape ``ne``."""
    g = ggml_peer.lib()
    ne4 = tuple(ne) + (1,) * (4 - len(tuple(ne)))

    def build(ctx, x):
        shape = g.ggml_new_tensor_4d(ctx, type_id(a.type), *ne4)
        return g.ggml_repeat(ctx, x, shape)

    return run(build, a, n_threads=n_threads)


def cpy(a: Tensor, dst, *, n_threads: int = 1) -> Tensor:
    """``ggml_cpy(a, b)``: ``dst`` is a type name (``b`` = a new contiguous tensor of a's shape) or a Tensor
    (a view into which to copy; the result is that view after the copy)."""
    g = ggml_peer.lib()
    if isinstance(dst, str):
        ne = a.ne

        def build(ctx, x):
            b = g.ggml_new_tensor_4d(ctx, type_id(dst), *ne)
            return g.ggml_cpy(ctx, x, b)

        return run(build, a, n_threads=n_threads)
    return run(lambda ctx, x, y: g.ggml_cpy(ctx, x, y), a, dst, n_threads=n_threads)


def cast(a: Tensor, type: str, *, n_threads: int = 1) -> Tensor:
    """``ggml_cast(a, type)``."""
    g = ggml_peer.lib()
    return run(lambda ctx, x: g.ggml_cast(ctx, x, type_id(type)), a, n_threads=n_threads)


def dup(a: Tensor, *, n_threads: int = 1) -> Tensor:
    """``ggml_dup(a)``: a contiguous copy of the same type."""
    g = ggml_peer.lib()
    return run(lambda ctx, x: g.ggml_dup(ctx, x), a, n_threads=n_threads)


def get_rows(a: Tensor, rows: Tensor, *, n_threads: int = 1) -> Tensor:
    """``ggml_get_rows(a, rows)``."""
    g = ggml_peer.lib()
    return run(lambda ctx, x, r: g.ggml_get_rows(ctx, x, r), a, rows, n_threads=n_threads)


def add(a: Tensor, b: Tensor, *, n_threads: int = 1) -> Tensor:
    """``ggml_add(a, b)``."""
    g = ggml_peer.lib()
    return run(lambda ctx, x, y: g.ggml_add(ctx, x, y), a, b, n_threads=n_threads)


def mul(a: Tensor, b: Tensor, *, n_threads: int = 1) -> Tensor:
    """``ggml_mul(a, b)``."""
    g = ggml_peer.lib()
    return run(lambda ctx, x, y: g.ggml_mul(ctx, x, y), a, b, n_threads=n_threads)


def scale(a: Tensor, s: float, *, n_threads: int = 1) -> Tensor:
    """``ggml_scale(a, s)``."""
    g = ggml_peer.lib()
    return run(lambda ctx, x: g.ggml_scale(ctx, x, float(s)), a, n_threads=n_threads)


def rms_norm(a: Tensor, eps: float, *, n_threads: int = 1) -> Tensor:
    """``ggml_rms_norm(a, eps)``."""
    g = ggml_peer.lib()
    return run(lambda ctx, x: g.ggml_rms_norm(ctx, x, float(eps)), a, n_threads=n_threads)


def rope_ext(
    a: Tensor,
    pos: Tensor,
    n_dims: int,
    mode: int,
    n_ctx_orig: int,
    freq_base: float,
    freq_scale: float,
    ext_factor: float,
    attn_factor: float,
    beta_fast: float,
    beta_slow: float,
    *,
    n_threads: int = 1,
) -> Tensor:
    """``ggml_rope_ext(a, pos, NULL, ...)`` (no frequency factors)."""
    g = ggml_peer.lib()
    args = (n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow)
    return run(lambda ctx, x, p: g.ggml_rope_ext(ctx, x, p, None, *args), a, pos, n_threads=n_threads)


def soft_max_ext(a: Tensor, mask: Tensor | None, scale: float, max_bias: float, *, n_threads: int = 1) -> Tensor:
    """``ggml_soft_max_ext(a, mask, scale, max_bias)``."""
    g = ggml_peer.lib()
    if mask is None:
        return run(lambda ctx, x: g.ggml_soft_max_ext(ctx, x, None, float(scale), float(max_bias)), a,
                   n_threads=n_threads)
    return run(lambda ctx, x, m: g.ggml_soft_max_ext(ctx, x, m, float(scale), float(max_bias)), a, mask,
               n_threads=n_threads)


def unary(a: Tensor, op: str, *, n_threads: int = 1) -> Tensor:
    """``ggml_silu`` / ``ggml_gelu`` / ``ggml_relu`` of ``a`` (``op`` = "SILU", "GELU", "RELU", as ``ggml_unary``)."""
    g = ggml_peer.lib()
    fn = {"SILU": g.ggml_silu, "GELU": g.ggml_gelu, "RELU": g.ggml_relu}[op]
    return run(lambda ctx, x: fn(ctx, x), a, n_threads=n_threads)


# -- the ops of reference/ops/{mul_mat,flash_attn_ext}.py ---------------------------------------------------------


def mul_mat(a: Tensor, b: Tensor, *, n_threads: int = 1) -> Tensor:
    """``ggml_mul_mat(a, b)``: f32 ``[a.ne1, b.ne1, b.ne2, b.ne3]``."""
    g = ggml_peer.lib()
    return run(lambda ctx, x, y: g.ggml_mul_mat(ctx, x, y), a, b, n_threads=n_threads)


def flash_attn_ext(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, max_bias: float = 0.0,
    softcap: float = 0.0, *, n_threads: int = 1,
) -> Tensor:
    """``ggml_flash_attn_ext(q, k, v, mask, scale, max_bias, softcap)``: f32 ``[Dv, n_head, n_q, ne3]``."""
    g = ggml_peer.lib()
    args = (float(scale), float(max_bias), float(softcap))
    if mask is None:
        return run(lambda ctx, a, b, c: g.ggml_flash_attn_ext(ctx, a, b, c, None, *args), q, k, v,
                   n_threads=n_threads)
    return run(lambda ctx, a, b, c, m: g.ggml_flash_attn_ext(ctx, a, b, c, m, *args), q, k, v, mask,
               n_threads=n_threads)
