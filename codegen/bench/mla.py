"""`mlaref bench mla`: one layer's K/V build + flash attention at DeepSeek-V2-Lite's shapes, f32 vs direct vs chunked.

What is timed (per layer, prompt processing, ``T`` queries against ``n_kv`` cache cells, f16 cache; the op
sequences of :mod:`mlaref.reference.graphs.deepseek2`, which follow ``build_deepseek2`` in
``src/llama.cpp@676f0e71b``):

``f32`` (before PR #253)
    cast the cache view ``[576, n_kv]`` to f32; ``kv_f32 = wkv_b × c_kv``; repeat the rope part over the heads
    and permute it, concat K in f32; cast K and V to f16; ``flash_attn_ext(q, K, V, mask)``.
``direct`` (PR #253's CPU branch)
    ``kv_f32 = wkv_b × c_kv`` reading the f16 cache; cast the nope and v halves to f16; repeat the rope part in
    f16; concat K in f16; ``flash_attn_ext``.
``chunked`` (mlaref)
    the ``direct`` build per chunk of ``kv_chunk`` cells, partial attention per chunk, chunks merged in order;
    equal to ``direct`` when ``n_kv <= kv_chunk``.

Shapes (DeepSeek-V2-Lite, :func:`mlaref.reference.hparams.preset`): 16 heads, latent 512 + rope 64 per cell,
K head 192 = 128 + 64, V head 128, ``wkv_b`` ``[512, 16·256]``; ``T = 512`` (one micro-batch), the causal mask
of the last micro-batch of a prompt of ``n_kv`` tokens (token t sees cells ``<= n_kv - T + t``).

Back-ends, named in every result's ``backend`` field:

``kernels`` (the default where they run)
    mlaref's generated C kernels: ``mul_mat`` and ``flash_attn_ext`` of :mod:`mlaref.codegen.kernels.mm` (Python
    threads over disjoint work; iqk's blocked attention order), the ``copy_rows`` kernel for repeat and concat,
    NumPy for the float casts and the f32 concat (no kernel exists for those); ``wkv_b`` is **IQ4_NL**, the
    seed's weight type, which the direct branch can feed with the f16 cache (converted to q8_0 inside the
    kernel, #253's ``iqk_quantize_any``). ``<variant>/kv`` times the K/V build alone. ``chunked`` runs the full
    attention kernel per chunk; the merge is timed separately as for ``ggml``.
``ggml``
    upstream ggml's CPU kernels through ggml-python (``ggml_graph_compute`` with ``n_threads`` threads, one plan
    and work buffer per graph, reused over the runs). ``wkv_b`` is **f16**: upstream ggml's ``mul_mat`` accepts
    a non-f32 src1 only when it already is the weight's vec_dot type (``GGML_ASSERT(src1->type ==
    GGML_TYPE_F32)`` in ``ggml_compute_forward_mul_mat``, ggml-cpu.c of ggml-python 0.0.45), so the ``direct``
    branch with the seed's IQ4_NL weight (vec_dot type q8_0) cannot be expressed upstream; with an f16 weight
    both branches can. Upstream ggml has no partial flash attention, so ``chunked`` runs ``flash_attn_ext``
    per chunk (with a contiguous copy of the chunk's mask columns, as ggml requires a contiguous mask) and the
    merge of the chunks' partial results is not in the timed graph (its cost, O(T·H·Dv) per chunk boundary,
    is timed separately with the NumPy reference ``fa_merge`` and reported as ``merge_seconds``).
``reference``
    mlaref's NumPy reference ops (bit-exact models, single-threaded, orders of magnitude slower) at reduced
    shapes (fewer heads and queries, small ``n_kv``); used when ggml-python is absent, to show the pipeline
    runs, not to measure the seed's claim.

Method: every variant of one ``n_kv`` is prepared once (one ggml context; one set of tensors); one warm-up run each,
then ``repeats`` rounds in which each variant runs once, in a shuffled order
(:func:`mlaref.codegen.bench.measure_interleaved`); median, min, max.
Speed-ups are ratios of medians within one run: ``speedup_direct_over_f32 = t_f32 / t_direct`` (the seed's
sense: > 1 means the #253 branch is faster) and ``speedup_chunked_over_direct = t_direct / t_chunked``.

Why a per-layer ratio need not follow the seed's trend (1.018 at pp512 up to 1.131 at pp16384): the seed times
the whole model (MoE FFN, projections, 27 layers) over a prompt of N tokens, i.e. N/512 micro-batches with
``n_kv`` = 512, 1024, ..., N. The K/V build and attention both grow linearly with ``n_kv`` at fixed ``T``,
while the rest of the model does not, so the share of attention in the total, and with it the whole-model
speed-up, grows with N even when the per-layer ratio is flat. :func:`pp_estimate` turns per-layer times into
the attention-only ratio of a pp-N run (sum over its micro-batches, linear interpolation in ``n_kv``).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from mlaref.codegen import kernels as K
from mlaref.codegen.bench import method as bench
from mlaref.codegen.bench.mla_arena import (ARENA_WEIGHT, PEER_TAGS, Q8_0_CACHE_UNSUPPORTED, arena_options,
                                           arena_row, format_arena, format_profile, peers_ready)
from mlaref.codegen.bench.mla_layers import (
    KERNEL_OPS,
    VARIANTS,
    GgmlLayer,
    kernel_layer,
    merge_seconds,
    reference_layer,
    shapes,
)
from mlaref.codegen.peers import ggml as ggml_peer
from mlaref.reference.hparams import preset

__all__ = ["SEED_PP", "N_KV_FULL", "N_KV_QUICK", "VARIANTS", "run_mla", "pp_estimate", "format_table",
           "kernels_available"]

# The seed's prompt-processing table (PR #253; DeepSeek-V2-Lite, IQ4_NL, Ryzen-7950X): N -> (t/s main, t/s PR,
# speedup as printed).
SEED_PP = {
    512: (668.46, 680.74, 1.018),
    1024: (646.86, 668.65, 1.034),
    2048: (596.56, 628.99, 1.054),
    4096: (513.16, 552.36, 1.076),
    8192: (398.45, 442.89, 1.112),
    16384: (272.58, 308.21, 1.131),
}
N_KV_FULL = (512, 1024, 2048, 4096, 8192, 16384)
N_KV_QUICK = (512, 2048)



# ----------------------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------------------
def _ratio(num: float, den: float, method: str) -> dict:
    return {"value": num / den, "unit": "1", "method": method}


def kernels_available() -> str | None:
    """None when the generated mul_mat and flash_attn_ext kernels can run here, else the reason."""
    try:
        K.resolve("mul_mat", "iq4_nl", "f16", "l16a1")
        K.resolve("flash_attn_ext", "f16", "f16", "l16a1")
    except Exception as exc:  # absent module, no catalog entry, failed build: the reason is reported
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def run_mla(*, n_kv=N_KV_FULL, T: int = 512, repeats: int = 3, n_threads: int | None = None,
            kv_chunk: int = 4096, backend: str = "auto", seed: int = 0, n_head: int | None = None,
            weight_type: str = "iq4_nl", peers=None, progress=None, cache_type: str = "f16") -> dict:
    """Time the three variants at each ``n_kv``; return the machine-readable result (see the module docstring).

    ``backend``: ``"ggml"``, ``"reference"`` or ``"auto"`` (ggml when ggml-python imports). ``n_head`` reduces
    the head count (tests; the reference back-end defaults to 2). ``peers`` (arena back-end only): the peers whose
    graph of the layer is timed too, of :data:`~mlaref.codegen.bench.mla_arena.PEER_TAGS` (default: all; those
    without a cached build are skipped and named). ``progress(done, total, label)`` is called before each
    ``n_kv``. ``cache_type`` (arena back-end only): ``"f16"`` or ``"q8_0"`` (#253's quantized cache; the arena's
    wkv_b is then q8_0, :data:`~mlaref.codegen.bench.mla_arena.ARENA_WEIGHT`, and the contenders that cannot run
    it are left out with the reason, :data:`~mlaref.codegen.bench.mla_arena.Q8_0_CACHE_UNSUPPORTED`).
    """

    if backend not in ("auto", "ggml", "kernels", "reference", "arena"):
        raise ValueError(f"backend must be auto, ggml, kernels, arena or reference, got {backend!r}")
    if backend == "auto":
        backend = "kernels" if kernels_available() is None else ("ggml" if ggml_peer.available() else "reference")
    if backend in ("kernels", "arena") and kernels_available() is not None:
        raise RuntimeError(f"the mul_mat / flash_attn_ext kernels cannot run here: {kernels_available()}")
    if backend == "ggml" and not ggml_peer.available():
        raise RuntimeError(ggml_peer.unavailable_reason())
    if cache_type not in ARENA_WEIGHT:
        raise ValueError(f"cache_type must be one of {', '.join(ARENA_WEIGHT)}, got {cache_type!r}")
    if cache_type != "f16" and backend != "arena":
        raise ValueError(f"cache_type {cache_type} needs the arena back-end (the others build an f16 cache)")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not isinstance(T, int) or T <= 0:
        raise ValueError(f"T must be a positive int, got {T!r}")
    if kv_chunk <= 0 or kv_chunk % 256:
        raise ValueError(f"kv_chunk must be a positive multiple of 256, got {kv_chunk}")
    n_kv = tuple(n_kv)
    for n in n_kv:
        if not isinstance(n, int) or n < T or n % 256:
            raise ValueError(f"n_kv values must be multiples of 256 and >= T ({T}), got {n!r}")
    if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
        raise ValueError(f"n_threads must be an int >= 1, got {n_threads!r}")
    if backend == "kernels" and weight_type not in ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "iq4_nl",
                                                    "q4_1", "q5_1"):
        raise ValueError(f"weight_type must be a mul_mat kernel weight type, got {weight_type!r}")
    n_threads = n_threads or os.cpu_count() or 1
    hp = preset("deepseek-v2-lite")
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    if backend == "reference" and n_head is None:
        n_head = 2
    s = shapes(hp, T, n_head)
    if backend == "arena":
        ready, skipped = peers_ready(tuple(PEER_TAGS) if peers is None else tuple(peers))
        if cache_type != "f16":
            for p in [p for p in ready if p in Q8_0_CACHE_UNSUPPORTED]:
                ready.remove(p)
                skipped[p] = Q8_0_CACHE_UNSUPPORTED[p]
        return _run_arena(hp, s, n_kv, kv_chunk, n_threads, repeats, seed, load, progress, ready, skipped,
                          cache_type)
    rows = []
    for i, n in enumerate(n_kv):
        if progress:
            progress(i, len(n_kv), f"n_kv {n}")
        rows.append(_one(s, n, kv_chunk, n_threads, repeats, seed, backend, bench, weight_type))
    if progress:
        progress(len(n_kv), len(n_kv), "done")
    what = {
        "ggml": "upstream ggml CPU kernels via ggml-python (ggml_graph_compute), wkv_b f16, cache f16, "
                "Q f32, mask f16; chunked: per-chunk graph without the merge (merge timed separately with "
                "the NumPy reference fa_merge)",
        "reference": "mlaref NumPy reference ops (single-threaded bit-exact models) at reduced shapes; "
                     "not a measurement of the seed's claim",
        "kernels": f"mlaref's generated C kernels for mul_mat and flash_attn_ext ({n_threads} threads of the C "
                   f"pool), the copy_rows kernel for repeat/concat, NumPy for the float casts and the f32 concat; wkv_b "
                   f"{weight_type} (the seed's weight type), cache f16; chunked: per-chunk attention without the "
                   "merge (merge timed separately with the NumPy reference fa_merge)",
    }[backend]
    return {
        "benchmark": "mlaref bench mla",
        "backend": backend,
        "timed": what,
        "shapes": {**s, "model": hp.name, "kv_chunk": kv_chunk, "cache_type": "f16",
                   "weight_type_wkv_b": weight_type if backend == "kernels" else "f16"},
        "n_threads": 1 if backend == "reference" else n_threads,
        "ops": KERNEL_OPS if backend == "kernels" else {},
        "method": {
            "timer": "time.perf_counter around one graph compute (ggml) / one call (reference)",
            "warmup": 1,
            "repeats": repeats,
            "statistic": "median (min and max of the repeats also given); variants interleaved per round",
            "speedup": "ratio of median times within one run: direct/f32 = t_f32 / t_direct (> 1: direct "
                       "faster, the seed's sense); chunked/direct = t_direct / t_chunked",
        },
        "environment": bench.environment(),
        "load_average": {"value": load, "unit": "runnable processes",
                         "method": "os.getloadavg() over 1, 5 and 15 minutes before the benchmark; on a machine "
                                   "busy with other work the spread of the repeats grows"},
        "rows": rows,
        "seed_pp": {str(k): {"tps_main": v[0], "tps_pr": v[1], "speedup": v[2]} for k, v in SEED_PP.items()},
        "pp_estimate": pp_estimate(rows) if backend != "reference" else [],
    }


def _run_arena(hp, s, n_kv, kv_chunk, n_threads, repeats, seed, load, progress, peers, skipped,
               cache_type: str = "f16") -> dict:
    """``backend="arena"``: the arena executor against ggml 0.15.3's graph and the peers' graphs of the same IR in
    the same rounds (bench/mla_arena.py)."""
    with_ggml = ggml_peer.available() and cache_type == "f16"
    if cache_type != "f16":
        skipped = {**skipped, "ggml 0.15.3": Q8_0_CACHE_UNSUPPORTED["ggml 0.15.3"]}
    rows = []
    for i, n in enumerate(n_kv):
        if progress:
            progress(i, len(n_kv), f"n_kv {n}")
        rows.append(arena_row(hp, s, n, kv_chunk, n_threads, repeats, seed, with_ggml, peers, cache_type))
    if progress:
        progress(len(n_kv), len(n_kv), "done")
    hp_shapes = {**s, "model": hp.name, "kv_chunk": kv_chunk, "cache_type": cache_type,
                 "weight_type_wkv_b": ARENA_WEIGHT[cache_type]}
    return {
        "benchmark": "mlaref bench mla", "backend": "arena", "shapes": hp_shapes, "n_threads": n_threads,
        "timed": "the arena executor (one buffer at the allocator model's offsets, every node on a generated "
                 "kernel, one C call per run) against upstream ggml 0.15.3's graph"
                 + ("" if with_ggml else " (left out: " + ("ggml-python absent" if cache_type == "f16" else
                                                           Q8_0_CACHE_UNSUPPORTED["ggml 0.15.3"]) + ")")
                 + "".join(f" and the same IR graph on {p} ({PEER_TAGS[p]}/<variant>)" for p in peers),
        "peers": list(peers), "skipped_peers": skipped,
        "plans": {op: o["plan"].name for op, o in arena_options().items()},
        "method": {"timer": "time.perf_counter around one run (the arena, ggml 0.15.3: in this process; a peer: "
                            "in its child process around ggml_graph_compute_with_ctx)", "warmup": 1,
                   "repeats": repeats,
                   "statistic": "median, min, max, (max - min) / median ('spread'), (q3 - q1) / median ('iqr') "
                                "and min / median; every contender once per round, shuffled; ratios of the "
                                "medians ('value'), of the minima ('of_mins') and paired (the median of the "
                                "per-round ratios); 'steal': seconds stolen by the hypervisor during each run "
                                "(/proc/stat); 'noise/fma': a fixed FMA loop on the same threads timed in the "
                                "same rounds, the machine's own noise"},
        "environment": bench.environment(),
        "load_average": {"value": load, "unit": "runnable processes", "method": "os.getloadavg() before"},
        "rows": rows,
    }


def _one(s, n, kv_chunk, n_threads, repeats, seed, backend, bench, weight_type="iq4_nl") -> dict:
    row = {"n_kv": n}
    if backend == "kernels":
        layer = kernel_layer(s, n, kv_chunk, n_threads, seed, weight_type)
        last = {}
        fns = {v: (lambda v=v: last.__setitem__(v, layer[v]())) for v in layer}
        timings = bench.measure_interleaved(fns, repeats=repeats, warmup=1)
        same = np.array_equal(last["f32"].to_numpy().view(np.uint32), last["direct"].to_numpy().view(np.uint32))
        row["f32_equals_direct"] = {
            "value": bool(same),
            "method": "equal bits of the flash_attn_ext output of the f32 and direct sequences (the cache's f16 "
                      "values are exact in f32, so both convert the same values to q8_0 for the weight's vec_dot)",
        }
        n_chunks = len(last["chunked"]) if isinstance(last["chunked"], list) else 1
        last.clear()
        _kv_rows(row, timings, n_chunks, merge_seconds(s, n_chunks - 1, repeats), repeats)
    elif backend == "ggml":
        layer = GgmlLayer(s, n, kv_chunk, n_threads, seed)
        try:
            fns = {v: (lambda v=v: layer.compute(v)) for v in VARIANTS}
            fns.update({f"{v}/kv": (lambda v=v: layer.compute(f"{v}/kv")) for v in ("f32", "direct")})
            timings = bench.measure_interleaved(fns, repeats=repeats, warmup=1)
            same = layer.output_bytes("f32") == layer.output_bytes("direct")
            n_chunks = layer.n_chunks["chunked"]
        finally:
            layer.free()
        row["f32_equals_direct"] = {
            "value": same,
            "method": "equal bytes of the flash_attn_ext output of the f32 and direct graphs (with an f16 "
                      "wkv_b both feed the same f16 K and V to the same kernel, so they must agree)",
        }
        _kv_rows(row, timings, n_chunks, merge_seconds(s, n_chunks - 1, repeats), repeats)
    else:
        layer = reference_layer(s, n, kv_chunk, seed)
        last = {}
        fns = {v: (lambda v=v: last.__setitem__(v, layer[v]())) for v in VARIANTS}
        timings = bench.measure_interleaved(fns, repeats=repeats, warmup=1)
        out = {v: np.ascontiguousarray(last[v].to_numpy(), dtype=np.float32) for v in VARIANTS}
        row["f32_equals_direct"] = {
            "value": bool(np.array_equal(out["f32"].view(np.uint32), out["direct"].view(np.uint32))),
            "method": "equal bits of the reference flash_attn_ext output of the f32 and direct op sequences "
                      "(an f16 wkv_b gives both the same f16 K and V)",
        }
        ref = out["direct"].astype(np.float64)
        row["chunked_vs_direct_nmse"] = _q_nmse(out["chunked"], ref)
    for v in VARIANTS:
        row[v] = timings[v].to_json()
    tf, td, tc = (timings[v].median for v in VARIANTS)
    row["speedup_direct_over_f32"] = _ratio(tf, td, "median t_f32 / median t_direct")
    row["speedup_chunked_over_direct"] = _ratio(td, tc, "median t_direct / median t_chunked")
    row["speedup_direct_over_f32_min"] = _ratio(
        timings["f32"].min, timings["direct"].min,
        "fastest t_f32 / fastest t_direct: on a machine busy with other work the fastest run is the least "
        "disturbed one, so this ratio is the more robust of the two there")
    return row


def _kv_rows(row: dict, timings: dict, n_chunks: int, merge: float, repeats: int) -> None:
    """The K/V-build-only timings, their ratio and share, the chunk count and the merge time of one row."""
    row["chunks"] = n_chunks
    for v in ("f32", "direct"):
        row[f"kv_build_{v}"] = timings[f"{v}/kv"].to_json()
    kf, kd = timings["f32/kv"].median, timings["direct/kv"].median
    row["speedup_kv_build_direct_over_f32"] = _ratio(kf, kd, "median t of the f32 K/V build / of the direct "
                                                             "K/V build (the part PR #253 changes)")
    row["kv_build_share_f32"] = _ratio(kf, timings["f32"].median, "median t of the f32 K/V build alone / "
                                                                  "median t of the whole f32 layer")
    row["merge_seconds"] = {"value": merge, "unit": "s",
                            "method": f"median of {repeats} runs of {n_chunks - 1} reference fa_merge calls "
                                      "(NumPy, one thread); not included in the chunked time"}


def _q_nmse(x: np.ndarray, ref: np.ndarray) -> dict:
    err = float(np.sum((x.astype(np.float64) - ref) ** 2))
    den = float(np.sum(ref ** 2))
    return {"value": err / den if den else err, "unit": "1",
            "method": "sum((chunked - direct)^2) / sum(direct^2) in float64 over the attention output (chunked: "
                      "partial attention per chunk + fa_merge, blocked order; direct: ggml's generic order)"}


def pp_estimate(rows: list[dict]) -> list[dict]:
    """Attention-only speed-up of a pp-N run from per-layer times: sum over its micro-batches.

    A pp-N prompt is N/512 micro-batches with ``n_kv`` = 512, 1024, ..., N. Per variant, the time at each
    ``n_kv`` is the measured median, linearly interpolated between measured ``n_kv`` (times grow linearly in
    ``n_kv`` at fixed T); N is estimated only where every micro-batch's ``n_kv`` lies in the measured range.
    """
    pts = sorted((r["n_kv"], r) for r in rows)
    if len(pts) < 1:
        return []
    xs = np.array([p[0] for p in pts], dtype=np.float64)
    out = []
    for N in SEED_PP:
        steps = np.arange(512, N + 1, 512, dtype=np.float64)
        if steps[0] < xs[0] or steps[-1] > xs[-1]:
            continue
        tot = {}
        for v in ("f32", "direct"):
            ys = np.array([p[1][v]["median"] for p in pts])
            tot[v] = float(np.interp(steps, xs, ys).sum())
        out.append({
            "N": N,
            "speedup_direct_over_f32": {
                "value": tot["f32"] / tot["direct"], "unit": "1",
                "method": "sum over the micro-batches (n_kv = 512..N step 512) of the interpolated per-layer "
                          "median times, f32 / direct; attention and K/V build only, no FFN",
            },
            "seed_speedup": SEED_PP[N][2],
        })
    return out


def format_table(result: dict) -> str:
    """The result as a fixed-width text table."""
    if result["backend"] == "arena":
        return format_arena(result["rows"], result["n_threads"], result["method"]["repeats"],
                            result.get("skipped_peers"), result["shapes"].get("cache_type", "f16")) + (
            f"\nload average before {result['load_average']['value']}\n" + format_profile(result["rows"]))
    head = ("n_kv", "f32 s med [min-max]", "direct s med [min-max]", "chunked s med [min-max]",
            "direct/f32", "(of mins)", "seed", "chunked/direct")

    def t(c):
        return f"{c['median']:.4f} [{c['min']:.4f}-{c['max']:.4f}]"

    kv = any("speedup_kv_build_direct_over_f32" in r for r in result["rows"])
    if kv:
        head += ("K/V build direct/f32", "K/V build share (f32)")
    lines = []
    for r in result["rows"]:
        seed = SEED_PP.get(r["n_kv"])
        line = (str(r["n_kv"]), t(r["f32"]), t(r["direct"]), t(r["chunked"]),
                f"{r['speedup_direct_over_f32']['value']:.3f}",
                f"{r['speedup_direct_over_f32_min']['value']:.3f}" if "speedup_direct_over_f32_min" in r else "-",
                f"{seed[2]:.3f}" if seed else "-",
                f"{r['speedup_chunked_over_direct']['value']:.3f}")
        if kv:
            line += (f"{r['speedup_kv_build_direct_over_f32']['value']:.3f}",
                     f"{100 * r['kv_build_share_f32']['value']:.0f} %")
        lines.append(line)
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*row) for row in lines)]
    sh = result["shapes"]
    out.append("")
    out.append(f"backend {result['backend']}: {result['timed']}")
    out.append(f"{sh['model']} shapes: T {sh['T']}, {sh['n_head']} heads, K {sh['dk']}, V {sh['dv']}, "
               f"latent {sh['rank']}+{sh['rope']}, kv_chunk {sh['kv_chunk']}, wkv_b {sh['weight_type_wkv_b']}; "
               f"threads {result['n_threads']}; {result['method']['statistic']}, {result['method']['repeats']} "
               f"repeats; load average before {result.get('load_average', {}).get('value')}")
    out.append("seed = whole-model pp-N speed-up of PR #253 (Ryzen-7950X), N = n_kv; see pp_estimate in the JSON")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# CLI: mlaref bench mla (codegen/cli/bench.py adds the sub-command with these two functions)
# ----------------------------------------------------------------------------------------------------------
def configure(parser) -> None:
    parser.add_argument("--n-kv", type=int, nargs="+", default=list(N_KV_FULL), metavar="N",
                        help="cache cells (multiples of 256, >= T; default: the seed's 512 .. 16384)")
    parser.add_argument("--backend", choices=("auto", "kernels", "arena", "ggml", "reference"), default="auto",
                        help="mlaref's kernels, the arena executor against upstream ggml in the same rounds "
                             "(bench/mla_arena.py), upstream ggml (ggml-python) or the NumPy reference (default: "
                             "kernels when they run here, else ggml, else reference)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="threads (default: all CPUs)")
    parser.add_argument("--kv-chunk", type=int, default=4096, metavar="C", help="chunk of the chunked variant")
    parser.add_argument("--weight-type", default="iq4_nl", help="wkv_b type for the kernels back-end (default "
                                                               "iq4_nl, the seed's)")
    parser.add_argument("--peers", nargs="*", default=None, metavar="PEER",
                        help=f"arena back-end: the peers whose graph of the layer is timed too, of "
                             f"{', '.join(PEER_TAGS)} (default: all; those not built are skipped and named; none "
                             f"given: no peer)")
    parser.add_argument("--cache-type", choices=tuple(ARENA_WEIGHT), default="f16",
                        help="arena back-end: the KV cache type (q8_0: #253's quantized cache, wkv_b q8_0; "
                             "contenders that cannot run it are left out and named)")
    parser.add_argument("--json", metavar="FILE", help="also write the machine-readable result to FILE")


def run(args) -> int:
    try:
        result = run_mla(n_kv=tuple(args.n_kv), repeats=args.repeats, n_threads=args.threads,
                         kv_chunk=args.kv_chunk, backend=args.backend, weight_type=args.weight_type,
                         peers=args.peers, cache_type=args.cache_type)
    except (ValueError, RuntimeError) as exc:
        print(f"mlaref bench mla: {exc}", file=sys.stderr)
        return 2
    bench.print_and_save(format_table(result), result, args.json)
    return 0
