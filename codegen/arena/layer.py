"""The benchmarked MLA layer as an IR graph: one layer's K/V build from the cache plus flash attention.

``mlaref bench mla`` times, per variant, what :mod:`mlaref.codegen.bench.mla_layers` runs on ggml and on the
kernels: the K/V build of the variant from the layer's latent cache and ``flash_attn_ext`` with the queries of one
micro-batch. :func:`layer_graph` builds that part of the layer with the model builder's own methods
(:class:`mlaref.reference.graphs.deepseek2.Builder`: ``kv_f32`` / ``kv_direct``, i.e. ``build_deepseek2`` in
``src/llama.cpp@676f0e71b``), so the op sequence, names and graph order are the model's; only the projections,
rope, norms and the cache store around it are left out (their ops have no kernels). Leaves:

``cache_kv_l0``           the layer's latent cache ``[kv_lora_rank + n_rot, n_kv]`` (external: the KV buffer)
``blk.0.attn_kv_b.weight`` ``wkv_b`` ``[kv_lora_rank, n_head·(nope + v)]`` (external: the model buffer)
``q``                     f32 ``[Dk, n_head, T]`` input, permuted to ``[Dk, T, n_head]`` as ``q_concat``
``KQ_mask``               f16 ``[n_kv, GGML_PAD(T, 32)]`` input (as the chunked variant's mask input)

``chunked`` with ``n_kv > kv_chunk`` is the model's chunked attention
(:meth:`~mlaref.reference.graphs.deepseek2.Builder.attn_chunked`): per chunk of cells the direct K/V build,
``flash_attn_ext_partial`` over the chunk with its column block of the one f16 ``KQ_mask`` (a strided view), and
``fa_merge`` of the chunks left to right, the last one final, so the output ``kqv-0`` is the layer's attention
result. ``merged=False`` builds instead what ggml can run (the peers of ``mlaref bench mla --backend arena``, which
have no partial attention or merge op): ``flash_attn_ext`` per chunk with that chunk's mask columns as an input of
its own (``KQ_mask_c{i}``; ggml wants a contiguous mask), the chunk results left unmerged. With
``n_kv <= kv_chunk`` it is the ``direct`` graph, as in the model.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.graphs import deepseek2 as _ds
from mlaref.reference.graphs import ir
from mlaref.reference.hparams import HParams

__all__ = ["layer_graph", "layer_values", "chunk_starts"]


def chunk_starts(n_kv: int, kv_chunk: int) -> list[int]:
    return list(range(0, n_kv, kv_chunk))


def layer_graph(hp: HParams, n_kv: int, *, variant: str = "direct", cache_type: str = "f16", n_tokens: int = 512,
                weight_type: str = "iq4_nl", kv_chunk: int = _ds.DEFAULT_KV_CHUNK, merged: bool = True) -> _ds.MLAGraph:
    """The K/V build + attention of one layer (see the module docstring) as an MLAGraph; its output is the
    attention result ``kqv-0`` (chunked with ``merged=False``: the last chunk's; every chunk's is ``kqv_c{i}-0``)."""
    _ds.check_hparams(hp, n_kv, variant, cache_type, n_tokens, n_kv, n_kv - n_tokens, kv_chunk, 512)
    b = _ds.Builder(hp, n_kv, variant, cache_type, n_tokens, n_kv, n_kv - n_tokens, weight_type, kv_chunk, False)
    H, T, dk = hp.n_head, n_tokens, hp.n_embd_head_k
    kv_l = ir.weight("cache_kv_l0", cache_type, (hp.kv_row_elems, n_kv))
    b.kv_l = [kv_l]
    q_in = ir.input_tensor("q", "f32", (dk, H, T))
    pad = (T + ir.GGML_KQ_MASK_PAD - 1) // ir.GGML_KQ_MASK_PAD * ir.GGML_KQ_MASK_PAD
    inputs = {"q": q_in}
    q = b.cb(ir.permute(q_in, 0, 2, 1, 3), "q_concat", 0)
    scale = float(hp.kq_scale)
    if variant == "chunked" and n_kv > kv_chunk and merged:
        b.kq_mask = inputs["KQ_mask"] = ir.input_tensor("KQ_mask", "f16", (n_kv, pad))
        out = b.cb(b.attn_chunked(q, kv_l, 0), "kqv", 0)
    elif variant == "chunked" and n_kv > kv_chunk:
        out = _chunks(b, hp, kv_l, q, inputs, n_kv, kv_chunk, pad, scale)
    else:
        mask = ir.input_tensor("KQ_mask", "f16", (n_kv, pad))
        inputs["KQ_mask"] = mask
        k, v = b.kv_f32(kv_l, 0) if variant == "f32" else b.kv_direct(kv_l, 0)
        out = b.cb(ir.flash_attn_ext(q, k, v, mask, scale, hp.f_max_alibi_bias, 0.0), "kqv", 0)
        b.gf.expand(out)
    return _ds.MLAGraph(graph=b.gf, hparams=hp, variant=variant, cache_type=cache_type, n_ctx=n_kv, n_tokens=T,
                        n_kv=n_kv, kv_head=n_kv - T, n_outputs=T, path="flash_mla2",
                        kv_chunk=kv_chunk if variant == "chunked" else None, inputs=inputs, weights=b.weights,
                        kv_cache=[kv_l], output=out)


def _chunks(b, hp, kv_l, q, inputs, n_kv, kv_chunk, pad, scale):
    """Per chunk: ``attn_chunked``'s K/V views and casts, then flash_attn_ext with the chunk's own mask input."""
    row = kv_l.nb[1]
    out = None
    for ci, c0 in enumerate(chunk_starts(n_kv, kv_chunk)):
        n = min(kv_chunk, n_kv - c0)
        nope_view = ir.view_2d(kv_l, hp.n_lora_kv, n, row, c0 * row)
        kv_f32 = b.cb(ir.mul_mat(b.wkv_b(0), nope_view), f"kv_f32_c{ci}", 0)
        k_nope_f32, v_f32 = b.split_kv(kv_f32, n)
        k_nope = b.cb(ir.cast(k_nope_f32, kv_l.type), f"k_nope_c{ci}", 0)
        v = b.cb(ir.cast(v_f32, kv_l.type), f"v_c{ci}", 0)
        b.gf.expand(k_nope)
        b.gf.expand(v)
        rope_view = ir.view_3d(kv_l, hp.n_rot, n, 1, row, row * n, c0 * row + ir.row_size(kv_l.type, hp.n_lora_kv))
        k_rope = b.cb(ir.repeat(rope_view, (hp.n_rot, n, hp.n_head, 1)), f"k_rope_c{ci}", 0)
        k = b.cb(ir.concat(k_nope, k_rope, 0), f"k_c{ci}", 0)
        b.gf.expand(k)
        mask = ir.input_tensor(f"KQ_mask_c{ci}", "f16", (n, pad))
        inputs[mask.name] = mask
        out = b.cb(ir.flash_attn_ext(q, k, v, mask, scale, hp.f_max_alibi_bias, 0.0), f"kqv_c{ci}", 0)
        b.gf.expand(out)
    return out


def layer_values(g: _ds.MLAGraph, seed: int = 0, wkv_b=None, cache=None, q=None, mask=None) -> dict:
    """Values for :func:`layer_graph`'s leaves: ``{"weights", "kv_cache", "inputs"}`` as ``run_graph`` takes them.

    Random unless given (float32 arrays in ggml's ``[ne1, ne0]`` order): ``wkv_b`` ~ N(0, 1/rank), the cache
    0.5·N(0, 1), ``q`` N(0, 1) of shape ``[T, H, Dk]``, and the causal mask of the last micro-batch (token t sees
    cells ``<= n_kv - T + t``; rows past T masked). Chunk masks are the full mask's column blocks."""
    hp, T, n_kv = g.hparams, g.n_tokens, g.n_kv
    rng = np.random.default_rng(seed)
    rank, H = hp.n_lora_kv, hp.n_head
    w_name = next(iter(g.weights))
    if wkv_b is None:
        wkv_b = (rng.standard_normal((H * (hp.n_embd_head_qk_nope + hp.n_embd_head_v), rank))
                 / np.sqrt(rank)).astype(np.float32)
    if cache is None:
        cache = (0.5 * rng.standard_normal((n_kv, hp.kv_row_elems))).astype(np.float32)
    if q is None:
        q = rng.standard_normal((T, H, hp.n_embd_head_k)).astype(np.float32)
    pad = next(t for t in g.inputs.values() if t.name.startswith("KQ_mask")).ne[1]
    if mask is None:
        cells = np.arange(n_kv)[None, :]
        last = (n_kv - T + np.arange(pad))[:, None]
        mask = np.where((cells <= last) & (np.arange(pad)[:, None] < T), 0.0, -np.inf).astype(np.float32)
    inputs = {"q": np.ascontiguousarray(q, np.float32)}
    for name, t in g.inputs.items():
        if name.startswith("KQ_mask_c"):
            c0 = int(name[len("KQ_mask_c"):]) * g.kv_chunk
            inputs[name] = np.ascontiguousarray(mask[:, c0:c0 + t.ne[0]])
        elif name == "KQ_mask":
            inputs[name] = np.ascontiguousarray(mask, np.float32)
    return {"weights": {w_name: wkv_b}, "kv_cache": [np.ascontiguousarray(cache, np.float32)], "inputs": inputs}
