"""The graph executor: runs an IR graph node by node, in graph order, on the reference ops (or on overrides).

``run_graph(g, weights=..., kv_cache=..., inputs=..., keep=..., impl=..., options=...)`` walks
``g.graph.nodes`` (the order ``build_forward_expand`` gives, upstream facts §3.3) and binds every IR tensor to an
:class:`mlaref.reference.tensor.Tensor`:

* **leaves** by name: weights (``g.weights``; every IR leaf of that name, e.g. ``attn_kv_b`` used once per KV chunk,
  gets the same tensor), the KV cache ``cache_kv_l{il}`` (``g.kv_cache``; bound to the caller's buffer, which
  the graph's CPY node writes in place, as ggml writes the cache), inputs (``g.inputs``: ``inp_tokens``,
  ``inp_pos``, ``KQ_mask``, ``inp_out_ids``);
* **views** (VIEW / RESHAPE / PERMUTE / TRANSPOSE and CPY's result): a byte view of the tensor bound to the IR
  ``view_src`` (already collapsed to the base by the IR), at ``view_offs`` with the IR's ``ne``/``nb``; nothing
  is copied, so a write through a view lands in the base;
* **every other node**: the op's result, a new contiguous tensor, checked against the IR's type and shape.

Ops: the IR op name selects an implementation (table :data:`REFERENCE_OPS`; reference/ops/<op>.py). ``impl``
overrides any of them by op name, the hook for generated kernels: a callable ``fn(node, *srcs, **options)``
taking the IR node (for its ``op_params``) and the bound source tensors, returning the result tensor. For CPY
the sources are ``(src, dst)`` where ``dst`` is the destination (a view of the base, or a fresh tensor of the
cast's type), and the callable writes ``dst`` and returns it. SET_ROWS (mainline's cache store,
reference/ops/set_rows.py) is called as ``fn(node, dst, src, rows)`` with ``dst`` the view of the cache and
``rows`` the i64 index leaf, which binds to a NumPy int64 vector (mlaref tensors have no i64 type); it too writes
``dst`` and returns it. ``options`` gives keyword arguments per op name
(e.g. ``{"MUL_MAT": {"plan": "mlaref_l8a2"}, "FLASH_ATTN_EXT": {"algorithm": "blocked"}}``) on top of
:data:`DEFAULT_OPTIONS`.

The MoE ops run their reference files too: ``FUSED_MUL_UNARY``, ``MULTI_ADD`` (ik_llama.cpp-only ops, modelled
from ggml.c@676f0e71b), ``ARGSORT`` (ik's exchange sort by default; option ``algorithm="std_sort"`` is
upstream's ``std::sort``) and ``MUL_MAT_ID`` (the mul_mat plan and ``from_float`` variant, as ``MUL_MAT``).
The TG path runs with an f16 cache; with a q8_0 cache its ``cont(transpose(latent cache))`` has no element-wise
meaning and the reference ``cpy`` refuses it (ValueError).

Memory: a tensor's buffer is dropped after the last node that reads it (directly or through a view), unless it
is a leaf, the graph output or named in ``keep``, so the executor's live set follows ggml-alloc's free rule
(upstream facts §6.2) without in-place reuse: after every node of the synthetic graphs it holds exactly the bytes
:func:`mlaref.reference.graphs.alloc.allocate_graph` holds, inputs aside (tests/graphs/test_executor.py).
``stats`` (a dict) receives ``peak_bytes`` (the largest sum of live owned buffers, each rounded up to the
32-byte alignment, taken right after a node's result exists and before its dead sources are dropped),
``peak_node`` and ``live`` (the sum after each node, dead sources dropped).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mlaref.reference import ops
from mlaref.reference.graphs import ir
from mlaref.reference.ops.fa_partial import fa_merge, flash_attn_ext_partial
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.ops.mul_mat import mul_mat
from mlaref.reference.ops.set_rows import set_rows
from mlaref.reference.tensor import Tensor

__all__ = ["run_graph", "REFERENCE_OPS", "DEFAULT_OPTIONS", "VIEW_OPS", "bind_leaf", "bind_leaves", "leaf_values"]

VIEW_OPS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})
ALIGNMENT = 32  # CPU TENSOR_ALIGNMENT, as ggml-alloc rounds sizes

DEFAULT_OPTIONS: dict[str, dict] = {
    "MUL_MAT": {"plan": "ggml_generic", "variant": "x86"},
    "MUL_MAT_ID": {"plan": "ggml_generic", "variant": "x86"},
    "ARGSORT": {"algorithm": "exchange"},
    "FLASH_ATTN_EXT": {"algorithm": "generic", "plan": "ggml_generic", "variant": "x86"},
    "FLASH_ATTN_EXT_PARTIAL": {"plan": "ggml_generic", "variant": "x86"},
    "SOFT_MAX": {"simd": "avx512"},
    "FUSED_MUL_UNARY": {"simd": "avx512"},
}


# -- reference implementations, by IR op name --------------------------------------------------------------
def _cpy(node, src, dst, **kw):
    return ops.cpy(src, dst, **kw)


def _cont(node, a, **kw):
    return ops.dup(a)


def _get_rows(node, a, rows, **kw):
    return ops.get_rows(a, rows)


def _add(node, a, b, **kw):
    return ops.add(a, b)


def _mul(node, a, b, **kw):
    return ops.mul(a, b)


def _scale(node, a, **kw):
    return ops.scale(a, node.op_params["scale"])


def _rms_norm(node, a, **kw):
    return ops.rms_norm(a, node.op_params["eps"])


def _fused_rms_norm(node, a, w, order="x_w_scale", **kw):
    return ops.fused_rms_norm(a, w, node.op_params["eps"], order=order)


def _soft_max(node, a, mask=None, **kw):
    p = node.op_params
    return ops.soft_max(a, mask, p["scale"], p["max_bias"], **kw)


def _rope(node, a, pos, **kw):
    return ops.rope(a, pos, **node.op_params, **kw)


def _concat(node, a, b, **kw):
    return ops.concat(a, b, node.op_params["dim"])


def _repeat(node, a, **kw):
    return ops.repeat(a, node.ne)


def _mul_mat(node, a, b, **kw):
    return mul_mat(a, b, **kw)


def _flash_attn_ext(node, q, k, v, mask=None, **kw):
    p = node.op_params
    return flash_attn_ext(q, k, v, mask, p["scale"], p["max_bias"], p["softcap"], **kw)


def _fa_partial(node, q, k, v, mask=None, **kw):
    return flash_attn_ext_partial(q, k, v, mask, node.op_params["scale"], **kw)


def _fa_merge(node, a, b=None, **kw):
    return fa_merge(a, b, node.op_params["final"])


def _set_rows(node, dst, src, rows, **kw):
    return set_rows(dst, src, rows, **kw)


# -- the MoE ops (reference/ops/{fused_mul_unary,argsort,mul_mat_id,multi_add}.py) -------------------------------
def _fused_mul_unary(node, a, b, **kw):
    return ops.fused_mul_unary(a, b, node.op_params["unary"], **kw)


def _argsort(node, a, **kw):
    return ops.argsort(a, node.op_params["order"], **kw)


def _mul_mat_id(node, experts, b, ids, **kw):
    return ops.mul_mat_id(experts, b, ids, **kw)


def _multi_add(node, a, **kw):
    return ops.multi_add(a, node.op_params["n_experts"])


REFERENCE_OPS: dict[str, Callable] = {
    "CPY": _cpy, "CONT": _cont, "GET_ROWS": _get_rows, "ADD": _add, "MUL": _mul, "SCALE": _scale,
    "RMS_NORM": _rms_norm, "FUSED_RMS_NORM": _fused_rms_norm, "SOFT_MAX": _soft_max, "ROPE": _rope,
    "CONCAT": _concat, "REPEAT": _repeat, "MUL_MAT": _mul_mat, "FLASH_ATTN_EXT": _flash_attn_ext,
    "FLASH_ATTN_EXT_PARTIAL": _fa_partial, "FA_MERGE": _fa_merge, "SET_ROWS": _set_rows,
    "FUSED_MUL_UNARY": _fused_mul_unary, "ARGSORT": _argsort, "MUL_MAT_ID": _mul_mat_id, "MULTI_ADD": _multi_add,
}


# -- binding ---------------------------------------------------------------------------------------------
def bind_leaf(t: ir.Tensor, value) -> Tensor:
    """An mlaref Tensor for IR leaf ``t`` from ``value``: a Tensor (type and shape must match), raw bytes
    (uint8, the encoded rows of ``t``'s type), float32 values (encoded as ``t.type``) or int32 values (i32).
    An i64 leaf (mainline's ``k_idxs``) binds to a NumPy int64 vector instead (mlaref tensors have no i64)."""
    if t.type == "i64":
        a = np.asarray(value)
        if a.dtype != np.int64 or a.size != t.nelements:
            raise ValueError(f"leaf {t.name!r}: expected {t.nelements} int64 values, got {a.dtype} {a.shape}")
        return a.reshape(-1)
    if isinstance(value, Tensor):
        if value.type != t.type or value.ne != t.ne:
            raise ValueError(f"leaf {t.name!r}: expected a {t.type} tensor of ne {list(t.ne)}, "
                             f"got {value.type} ne {list(value.ne)}")
        if not value.is_contiguous():
            raise ValueError(f"leaf {t.name!r}: the bound tensor must be contiguous")
        return value
    a = np.asarray(value)
    if a.dtype == np.uint8:  # bound without a copy when contiguous, so writes (the KV cache) land in ``value``
        if a.size != t.nbytes:
            raise ValueError(f"leaf {t.name!r}: {t.type} ne {list(t.ne)} takes {t.nbytes} bytes, got {a.size}")
        return Tensor(t.type, t.ne, t.nb, a.reshape(-1), 0, t.name)
    if a.size != t.nelements:
        raise ValueError(f"leaf {t.name!r}: expected {t.nelements} values for ne {list(t.ne)}, got {a.size}")
    shape = (t.ne[3], t.ne[2], t.ne[1], t.ne[0])
    if a.dtype == np.int32:
        if t.type != "i32":
            raise TypeError(f"leaf {t.name!r} is {t.type}; int32 values bind only to i32 leaves")
        return Tensor.from_numpy(a.reshape(shape), name=t.name)
    if a.dtype != np.float32:
        raise TypeError(f"leaf {t.name!r}: values must be float32, int32 or uint8 bytes, got {a.dtype}")
    if t.type == "i32":
        raise TypeError(f"leaf {t.name!r} is i32; bind int32 values")
    return Tensor.from_numpy(a.reshape(shape), t.type, name=t.name)


def leaf_values(g, weights, kv_cache, inputs) -> dict[str, object]:
    """The values of ``g``'s leaves by name (weights, each layer's KV cache, inputs), every one required."""
    by_name: dict[str, object] = {}
    for name in g.weights:
        if name not in weights:
            raise ValueError(f"weights: missing {name!r}")
        by_name[name] = weights[name]
    if len(kv_cache) != len(g.kv_cache):
        raise ValueError(f"kv_cache: expected {len(g.kv_cache)} layers, got {len(kv_cache)}")
    for t, c in zip(g.kv_cache, kv_cache):
        by_name[t.name] = c
    for name in g.inputs:
        if name not in inputs:
            raise ValueError(f"inputs: missing {name!r}")
        by_name[name] = inputs[name]
    return by_name


def _aligned(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def bind_leaves(graph, values: dict, bind=None) -> dict[int, object]:
    """``id(leaf) -> bind(Tensor)`` for every leaf of ``graph`` that is not a view, bound by name from ``values``
    (:func:`leaf_values`); one binding per name (the chunked graph has one wkv_b leaf per chunk). ``bind`` maps the
    bound Tensor to what the caller keeps (default: the Tensor itself)."""
    out: dict[int, object] = {}
    bound: dict[str, object] = {}
    for t in graph.leafs:
        if t.view_src is not None:
            continue
        if t.name not in values:
            raise ValueError(f"graph leaf {t.name!r} is neither a weight, a KV cache nor an input")
        if t.name not in bound:
            tensor = bind_leaf(t, values[t.name])
            bound[t.name] = tensor if bind is None else bind(tensor)
        out[id(t)] = bound[t.name]
    return out


def run_graph(g, *, weights: dict, kv_cache: list, inputs: dict, keep=(), impl: dict | None = None,
              options: dict | None = None, stats: dict | None = None) -> dict[str, Tensor]:
    """Execute ``g`` (an :class:`~mlaref.reference.graphs.deepseek2.MLAGraph`) and return the tensors named in
    ``keep`` plus the graph output (``result_output``), by name. See the module docstring.

    A name that several nodes carry (llama.cpp reuses ``q-%d`` for three nodes of the q path) means the
    first of them in graph order (:meth:`ir.Graph.find`). ``weights`` and ``inputs`` map names to Tensors,
    float32 / int32 values or encoded bytes (:func:`bind_leaf`); ``kv_cache`` holds one tensor (or uint8
    buffer) per layer and is written in place.
    """
    impl = dict(impl or {})
    for op, fn in impl.items():
        if not callable(fn):
            raise TypeError(f"impl[{op!r}] must be callable")
        if op in VIEW_OPS:
            raise ValueError(f"impl: {op} is a view, executed by the executor itself, not overridable")
    opts = {k: dict(v) for k, v in DEFAULT_OPTIONS.items()}
    for op, kw in (options or {}).items():
        opts.setdefault(op, {}).update(kw)
    keep = set(keep)
    graph = g.graph
    values = leaf_values(g, weights, kv_cache, inputs)

    env: dict[int, Tensor] = bind_leaves(graph, values)

    def base_of(t):
        return t.view_src if t.view_src is not None else t

    # last node index reading each buffer (directly or through a view)
    last: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        if node.view_src is not None:
            last[id(node.view_src)] = i
        for s in node.src:
            if s is not None and s is not node:
                last[id(base_of(s))] = i
    protected = {id(t) for t in graph.leafs}
    if g.output is not None:
        protected.add(id(base_of(g.output)))
    for name in keep:
        try:
            protected.add(id(base_of(graph.find(name))))
        except KeyError:
            raise ValueError(f"keep: no tensor named {name!r} in the graph") from None
    owned: dict[int, int] = {}  # base id -> aligned bytes of executor-owned buffers
    views_of: dict[int, list[int]] = {}
    live_trace = []
    peak, peak_node = 0, None

    for i, node in enumerate(graph.nodes):
        srcs = [env[id(s)] if s is not node else None for s in node.src if s is not None]
        if node.op in VIEW_OPS or (node.view_src is not None and node.op not in ("CPY", "SET_ROWS")):
            res = _view(node, env)
        elif node.op == "SET_ROWS":
            dst = _view(node, env)
            fn = impl.get("SET_ROWS", REFERENCE_OPS["SET_ROWS"])
            res = fn(node, dst, srcs[0], srcs[1], **opts.get("SET_ROWS", {}))
            if res is not dst:
                raise RuntimeError(f"node {node.name!r}: the SET_ROWS implementation must write and return dst")
        elif node.op == "CPY":
            if node.src[1] is node:  # ggml_cast: a new tensor of the target type
                dst = Tensor.empty(node.type, node.ne, name=node.name)
                owned[id(node)] = _aligned(node.nbytes)
            else:
                dst = _view(node, env)
            fn = impl.get("CPY", REFERENCE_OPS["CPY"])
            res = fn(node, srcs[0], dst, **opts.get("CPY", {}))
            if res is not dst:
                raise RuntimeError(f"node {node.name!r}: the CPY implementation must write and return dst")
        else:
            fn = impl.get(node.op) or REFERENCE_OPS.get(node.op)
            if fn is None:
                raise NotImplementedError(f"node {node.name!r}: no implementation of op {node.op}")
            res = fn(node, *srcs, **opts.get(node.op, {}))
            owned[id(node)] = _aligned(node.nbytes)
        _check_result(node, res)
        res.name = node.name
        env[id(node)] = res
        if node.view_src is not None:
            views_of.setdefault(id(node.view_src), []).append(id(node))

        live = sum(owned.values())
        if live > peak:
            peak, peak_node = live, node.name
        for b, li in list(last.items()):
            if li == i and b not in protected and b in owned:
                del owned[b]
                env.pop(b, None)
                for v in views_of.pop(b, []):
                    env.pop(v, None)
                del last[b]
        live_trace.append(sum(owned.values()))

    if stats is not None:
        stats.update(peak_bytes=peak, peak_node=peak_node, live=live_trace)
    out = {}
    for name in keep | ({g.output.name} if g.output is not None else set()):
        t = graph.find(name)
        out[name] = env[id(t)] if id(t) in env else _view(t, env)
    return out


def _view(node: ir.Tensor, env: dict) -> Tensor:
    base = env[id(node.view_src)]
    return Tensor(node.type, node.ne, node.nb, base.data, base.offset + node.view_offs, node.name)


def _check_result(node: ir.Tensor, res) -> None:
    if not isinstance(res, Tensor):
        raise TypeError(f"node {node.name!r} ({node.op}): the implementation returned {type(res).__name__}, "
                        "not a Tensor")
    if res.type != node.type or res.ne != node.ne:
        raise RuntimeError(f"node {node.name!r} ({node.op}): expected {node.type} ne {list(node.ne)}, "
                           f"got {res.type} ne {list(res.ne)}")
    if node.view_src is None and res.nb != node.nb:
        raise RuntimeError(f"node {node.name!r} ({node.op}): expected strides {list(node.nb)}, got {list(res.nb)}")
