"""Conformance of one DeepSeek-V2-Lite layer's MLA attention as a whole graph, on a real ggml through the harness.

``mla_block``: the attention of one layer (:func:`mlaref.reference.graphs.deepseek2.build_attention_block`: the
cache store, the K/V build of the ``f32`` or ``direct`` branch, flash attention, the output projection) is run
twice from the same bytes: by mlaref's executor on the spec's ops with the peer's models (for the ik snapshot
``mul_mat_ik2026`` and ``algorithm="iqk2026"``), and on the peer as one ggml graph built node for node
(:mod:`mlaref.codegen.peers.harness_graph`). The case names the node compared (``k-0``, ``v-0``, ``kqv-0``,
``kqv_out-0``).

``mla_identity``: the peer alone, both branches: the ``direct`` branch's node (K and V built in the cache type,
#253) against the ``f32`` branch's (K and V through f32): on the real system they must be the same bytes.

The weights are the synthetic model's (``SyntheticModel(preset, seed)``), the cache holds ``n_ctx - n_tokens``
earlier cells, the input ``attn_norm-0`` is the case's ``x``. Both graphs of a case are computed once per worker
and shared by the cases that compare other nodes of them.
"""

from __future__ import annotations

import numpy as np

from mlaref.codegen.conform import peer as _peer
from mlaref.codegen.conform.outputs import Unsupported, out_tensor, spec_call
from mlaref.codegen.peers import harness, harness_graph
from mlaref.reference.graphs import executor
from mlaref.reference.graphs.deepseek2 import build_attention_block
from mlaref.reference.graphs.synthetic import SyntheticModel
from mlaref.reference.hparams import preset
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.ops.mul_mat_iqk import mul_mat_ik2026

__all__ = ["NODES", "op_mla_block", "op_mla_identity"]

NODES = ("k-0", "v-0", "kqv-0", "kqv_out-0")
_memo: dict = {}


def _setup(p, x):
    hp = preset(p["preset"]).replace(n_layer=1, n_layer_dense_lead=1)
    g = build_attention_block(hp, p["n_ctx"], variant=p["variant"], cache_type=p["cache_type"],
                              n_tokens=p["n_tokens"], weight_type=p["weight_type"])
    m = SyntheticModel(hp, seed=p["seed"])
    inputs = m.inputs(g)
    if x.shape != (p["n_tokens"], hp.n_embd):
        raise ValueError(f"mla_block: x must be ({p['n_tokens']}, {hp.n_embd}), got {x.shape}")
    inputs["attn_norm-0"] = np.ascontiguousarray(x, np.float32)
    return g, m.weights(g), m.kv_cache(g), inputs


def _peer_graph(p, x, variant):
    """The peer's values of NODES for ``variant`` (computed once per worker)."""
    key = ("lib", variant, *(p[k] for k in ("preset", "cache_type", "weight_type", "n_tokens", "n_ctx", "seed",
                                            "n_threads")), x.tobytes())
    if key not in _memo:
        if not _peer.uses_harness():
            raise Unsupported("the MLA block runs through mlaref's harness (mlaref conform --harness)")
        g, w, kv, inp = _setup(dict(p, variant=variant), x)
        try:
            _memo[key] = harness_graph.run_graph(g, weights=w, kv_cache=kv, inputs=inp, keep=NODES,
                                                 n_threads=p["n_threads"])
        except harness.HarnessError as exc:
            raise Unsupported(f"{_peer.module().name} cannot build ik_llama.cpp's MLA graph: {exc}") from None
    return _memo[key]


def _spec_impl(nth: int) -> tuple[dict, dict]:
    """The executor's implementations and options for the peer checked: its models, never this CPU's."""
    m = _peer.module()
    if m.name != "ik-llama-cpp-python":
        raise Unsupported(f"the graph is ik_llama.cpp's (fused_rms_norm, any-type src1); {m.name} is not")
    b = m.build()
    if not b.has("avx2", "fma", "f16c") or b.has("avx512f"):
        raise Unsupported(f"the spec models the ik snapshot's AVX2 build; this build is {b.name}")

    def mm(node, a, x, **kw):
        return mul_mat_ik2026(a, x, n_threads=nth)

    def fa(node, q, k, v, mask=None, **kw):
        op = node.op_params
        return flash_attn_ext(q, k, v, mask, op["scale"], op["max_bias"], op["softcap"], algorithm="iqk2026",
                              n_threads=nth)

    return {"MUL_MAT": mm, "FLASH_ATTN_EXT": fa}, {"ROPE": {"fma": b.fma}, "SOFT_MAX": {"simd": b.simd},
                                                   "FUSED_RMS_NORM": {"order": "scale_w_x"}}  # ik #1427


def _spec_graph(p, x):
    key = ("spec", *(p[k] for k in ("variant", "preset", "cache_type", "weight_type", "n_tokens", "n_ctx", "seed",
                                    "n_threads")), x.tobytes())
    if key not in _memo:
        impl, options = _spec_impl(p["n_threads"])
        g, w, kv, inp = _setup(p, x)
        _memo[key] = spec_call(executor.run_graph, g, weights=w, kv_cache=kv, inputs=inp, keep=NODES, impl=impl,
                               options=options)
    return _memo[key]


def _node(p):
    if p["node"] not in NODES:
        raise ValueError(f"mla_block: node must be one of {', '.join(NODES)}, got {p['node']!r}")
    return p["node"]


def op_mla_block(p, inp):
    """The spec's executor against the peer's graph, one node of one branch."""
    node, x = _node(p), inp["x"]
    lib = _peer_graph(p, x, p["variant"])[node]
    spec = _spec_graph(p, x)[node]
    return out_tensor(spec), out_tensor(lib), f"one layer's attention run as one graph on {_peer.module().name}"


def op_mla_identity(p, inp):
    """On the peer alone: the direct branch's node against the f32 branch's (K and V in the cache type vs f32)."""
    node, x = _node(p), inp["x"]
    f32 = _peer_graph(p, x, "f32")[node]
    direct = _peer_graph(p, x, "direct")[node]
    return out_tensor(f32), out_tensor(direct), (f"the f32 branch (as 'spec') against the direct branch, both on "
                                                 f"{_peer.module().name}")
