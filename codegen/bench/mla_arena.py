"""`mlaref bench mla --backend arena`: the MLA layer on the arena executor against upstream ggml's graph, interleaved.

Per ``n_kv`` the three variants are prepared once on both sides and timed in the same rounds
(:func:`mlaref.codegen.bench.method.measure_interleaved`: every contender once per round, shuffled order):

``arena/<variant>``
    :class:`mlaref.codegen.arena.Arena` over :func:`mlaref.codegen.arena.layer_graph` (the model builder's K/V
    build + ``flash_attn_ext``): every tensor at the allocator model's offset in one compute buffer, every node on
    a generated kernel, one C call per run (the input copies of q and the mask included, as
    ``llama_set_inputs`` writes them before each compute).
``ggml/<variant>``
    :class:`mlaref.codegen.bench.mla_layers.GgmlLayer`: upstream ggml's graph of the same layer through
    ggml-python, ``ggml_graph_compute`` with its plan and work buffer made once (its tensors preallocated in one
    no-reuse context; q and the mask are not rewritten between computes).

Both take ``wkv_b`` as **f16** (the only type upstream ggml's mul_mat accepts with the f16 cache as src1, see
:mod:`mlaref.codegen.bench.mla`), an f16 cache, f32 queries, the f16 causal mask, the same values (the arena
reads GgmlLayer's f16 data, exact in f32). ``chunked`` beyond ``kv_chunk`` is per-chunk attention without the
merge on both sides. Each row reports the medians, the spread ``(max - min) / median`` of every contender, the
ratio ``t_ggml / t_arena`` (> 1: the arena is faster) and, from a node-by-node profile of the arena, the share of
its time spent outside mul_mat and flash_attn_ext.
"""

from __future__ import annotations

import numpy as np

from mlaref.codegen.arena import Arena, layer_graph, layer_values
from mlaref.codegen.bench import method as bench
from mlaref.codegen.bench.mla_layers import VARIANTS, GgmlLayer, layer_data

__all__ = ["arena_layers", "arena_row", "format_arena"]

_MM_FA = ("MUL_MAT", "FLASH_ATTN_EXT")


def arena_layers(hp, s: dict, n_kv: int, kv_chunk: int, n_threads: int, seed: int,
                 weight_type: str = "f16") -> dict:
    """variant -> a prepared Arena of the layer at these shapes, on GgmlLayer's data (:func:`layer_data`)."""
    d = layer_data(s, n_kv, seed)
    hp = hp.replace(n_head=s["n_head"], n_head_kv=s["n_head"])
    out = {}
    for v in VARIANTS:
        g = layer_graph(hp, n_kv, variant=v, cache_type="f16", n_tokens=s["T"], weight_type=weight_type,
                        kv_chunk=kv_chunk)
        pad = next(t for t in g.inputs.values() if t.name.startswith("KQ_mask")).ne[1]
        mask = np.full((pad, n_kv), -np.inf, dtype=np.float32)
        mask[: s["T"]] = d["mask"].astype(np.float32)
        vals = layer_values(g, wkv_b=d["wkv_b"].astype(np.float32), cache=d["cache"].astype(np.float32),
                            q=d["q"], mask=mask)
        out[v] = Arena(g, **vals, n_threads=n_threads)
    return out


def _spread(t) -> float:
    return (t.max - t.min) / t.median


def arena_row(hp, s: dict, n: int, kv_chunk: int, n_threads: int, repeats: int, seed: int,
              with_ggml: bool = True) -> dict:
    """One ``n_kv``: interleaved timings of the arena (and ggml) variants, ratios, spreads, the arena's profile."""
    arenas = arena_layers(hp, s, n, kv_chunk, n_threads, seed)
    fns = {f"arena/{v}": a.run for v, a in arenas.items()}
    layer = GgmlLayer(s, n, kv_chunk, n_threads, seed) if with_ggml else None
    try:
        if layer is not None:
            fns.update({f"ggml/{v}": (lambda v=v: layer.compute(v)) for v in VARIANTS})
        timings = bench.measure_interleaved(fns, repeats=repeats, warmup=1)
    finally:
        if layer is not None:
            layer.free()
    row = {"n_kv": n}
    for name, t in timings.items():
        row[name] = {**t.to_json(), "spread": _spread(t)}
    for v in VARIANTS:
        if layer is not None:
            ta, tg = timings[f"arena/{v}"], timings[f"ggml/{v}"]
            row[f"ratio_{v}"] = {"value": tg.median / ta.median, "unit": "1",
                                 "method": "median t_ggml / median t_arena (> 1: the arena is faster)"}
        prof = arenas[v].profile(repeats=3)
        ops = {name: op for name, op, _ in arenas[v].kernels}
        total = sum(prof.values())
        outside = sum(sec for name, sec in prof.items() if ops.get(name) not in _MM_FA)
        row[f"outside_mm_fa_{v}"] = {
            "value": outside / total, "unit": "1", "seconds": outside, "total": total,
            "method": "node-by-node profile of the arena (median of 3 per node): seconds of the nodes other than "
                      "mul_mat and flash_attn_ext (casts, repeat, concat, input copies) / all nodes"}
    return row


def format_arena(rows: list[dict], n_threads: int, repeats: int) -> str:
    head = ["n_kv"]
    for v in VARIANTS:
        head += [f"arena {v} s", "spread", f"ggml {v} s", "spread", "ggml/arena", "outside mm+fa"]
    lines = []
    for r in rows:
        line = [str(r["n_kv"])]
        for v in VARIANTS:
            a, g = r[f"arena/{v}"], r.get(f"ggml/{v}")
            line += [f"{a['median']:.4f}", f"{100 * a['spread']:.0f} %",
                     f"{g['median']:.4f}" if g else "-", f"{100 * g['spread']:.0f} %" if g else "-",
                     f"{r[f'ratio_{v}']['value']:.3f}" if g else "-",
                     f"{100 * r[f'outside_mm_fa_{v}']['value']:.1f} %"]
        lines.append(line)
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*x) for x in lines)]
    out.append(f"arena: one buffer at the allocator model's offsets, every node on a generated kernel, one C call per "
               f"run; ggml: upstream ggml_graph_compute; wkv_b f16, cache f16; {n_threads} threads; median of "
               f"{repeats} interleaved rounds; spread = (max - min) / median")
    return "\n".join(out)
