"""`mlaref bench mla --backend arena`: the MLA layer on the arena executor against three ggml graphs, interleaved.

Per ``n_kv`` the three variants are prepared once for every contender and timed in the same rounds (every contender
once per round, shuffled order: :func:`mlaref.codegen.bench.method.round_orders`, after one warm-up run each):

``arena/<variant>``
    :class:`mlaref.codegen.arena.Arena` over :func:`mlaref.codegen.arena.layer_graph` (the model builder's K/V
    build + ``flash_attn_ext``; ``chunked``: + ``flash_attn_ext_partial`` per chunk and ``fa_merge``): every tensor
    at the allocator model's offset in one compute buffer, every node on a generated kernel, one C call per run
    (the input copies of q and the mask included, as ``llama_set_inputs`` writes them before each compute);
    timed here around :meth:`Arena.run`.
``ggml/<variant>``
    :class:`mlaref.codegen.bench.mla_layers.GgmlLayer`: upstream ggml 0.15.3's graph of the same layer through
    ggml-python, ``ggml_graph_compute`` with its plan and work buffer made once (its tensors preallocated in one
    no-reuse context; q and the mask are not rewritten between computes); timed here around the call.
``ik/<variant>``, ``ggml025/<variant>``
    **the same IR graph** the arena runs (``chunked``: its ggml-only form, below), built on ik_llama.cpp (the April-2026
    snapshot) and on upstream ggml 0.25.3 (llama-cpp-python's) by the peer harness
    (:func:`mlaref.codegen.peers.harness_graph.prepare_graph`, node for node: views as ``ggml_view_4d``, casts as
    ``ggml_cpy``, each op the ggml call of its name), over the same leaf values, in a child process per (peer, variant)
    (:meth:`mlaref.codegen.bench.peers.RemoteGraph.of_graph`: two ``libggml.so`` cannot share a process). Each tensor
    has its own bytes in one context (no reuse); a compute is what ``ggml_graph_compute_with_ctx`` does (a plan per
    call, then ``ggml_graph_compute``; the graph and the work buffer are kept from the first call), timed in the child
    around that call. Only peers whose native builds are cached take part; the others are listed as skipped, with the
    command that builds them (a cold ik_llama.cpp build takes 11 to 20 minutes on 2 cores).

Every contender takes ``wkv_b`` as **f16** (the only type upstream ggml's mul_mat accepts with the f16 cache as
src1, see :mod:`mlaref.codegen.bench.mla`), an f16 cache, f32 queries, the f16 causal mask, the same values
(GgmlLayer's f16 data, exact in f32; the arena and the peers encode it with the same
:func:`mlaref.reference.graphs.executor.bind_leaves`, so they get the same bytes). ``chunked`` beyond ``kv_chunk``
is, on the arena, the whole layer as the model builds it: per chunk the K/V build and ``flash_attn_ext_partial``,
then ``fa_merge`` of the chunks in order, so its time includes the merge. ggml has no partial attention or merge
op, so the ggml contenders run the ggml-only form (``layer_graph(..., merged=False)``: ``flash_attn_ext`` per
chunk, the results left unmerged): their chunked times lack the merge (O(T·H·Dv) per chunk boundary, against the
O(T·H·n_kv·(Dk + Dv)) of the attention), and their attention results are compared with those of an untimed arena
run of that same ggml-only graph (at ``n_kv <= kv_chunk`` chunked is the ``direct`` graph everywhere).

Each row reports per variant the medians, the spread ``(max - min) / median``, the IQR ``(q3 - q1) / median`` and
min / median of every contender, the ratios ``t_contender / t_arena`` (> 1: the arena is faster) of the medians,
of the minima and paired (the median of the ratios within each round), the NMSE of each peer's attention results
(every ``flash_attn_ext`` node: the chunked graph's chunks too) against the arena's with the bound of
:data:`NMSE_BOUND`, and a profile: seconds per op kind of the arena (its steps timed in C) and of each peer (each
node of its graph computed alone), from which the share of the arena's time outside mul_mat and flash_attn_ext.

Noise, shown rather than hidden: the rounds also time :data:`NOISE`, a fixed FMA loop on the same threads (no
memory traffic, no system calls), and every timed run records the CPU time the hypervisor stole meanwhile
(``steal`` of /proc/stat). Measured on the 2-vCPU Zen 3 VM (n_kv 2048, 10-12 rounds, under the exclusive lock,
no other process of the VM using CPU in any run): the FMA loop alone spread 35-84 % (max - min) and its slowest
runs took 1.3-1.6x its median with no steal and no other process; a 256 MB memcpy 33-65 %; the arena and ik
27-94 %. Pinning the process to the first CPUs (sched_setaffinity) did not narrow any of them, so it is not done.
"""

from __future__ import annotations

import os
import time

import numpy as np

from mlaref.codegen.arena import Arena, layer_graph, layer_values
from mlaref.codegen.arena.executor import DEFAULT_OPTIONS
from mlaref.codegen.bench import method as bench
from mlaref.codegen.bench import peak as _peak
from mlaref.codegen.bench.mla_layers import VARIANTS, GgmlLayer, layer_data
from mlaref.codegen.bench.peers import RemoteGraph
from mlaref.codegen.kernels import mm as _mm
from mlaref.codegen.peers import build as peer_build
from mlaref.reference import compare
from mlaref.reference.graphs.executor import VIEW_OPS

__all__ = ["ARENA_WEIGHT", "NMSE_BOUND", "NMSE_BOUND_Q8_0", "PEER_TAGS", "Q8_0_CACHE_UNSUPPORTED", "arena_layers", "arena_options", "arena_row", "attention_names", "format_arena", "format_profile",
           "layer_setups", "peers_ready"]

_MM_FA = ("MUL_MAT", "FLASH_ATTN_EXT", "FLASH_ATTN_EXT_PARTIAL")

# peer -> the contender prefix in a row
PEER_TAGS = {"ik-llama-cpp-python": "ik", "llama-cpp-python": "ggml025"}

# NMSE of a peer's attention results against the arena's (f32 accumulation on both sides, only the float order
# differs, except where the peer rounds more):
# * ik_llama.cpp: iqk's flash attention, Q·K and the V sum in f32 (measured 2.6e-8 to 2.9e-8 at 2 heads,
#   32 queries, n_kv 256 / 512);
# * ggml 0.25.3: Q is converted to K's vec_dot type (f16) and, off the tiled path, the V sum is accumulated in an
#   f16 vector (``VKQ16``, ``ggml_compute_forward_flash_attn_ext_f16_one_chunk`` in ggml/src/ggml-cpu/ops.cpp of
#   llama-cpp-python 0.3.36): measured 4.9e-6 to 5.2e-6 at the same shapes.
NMSE_BOUND = {"ik-llama-cpp-python": 1e-6, "llama-cpp-python": 1e-4}
# With a q8_0 cache (and q8_0 wkv_b) the float math differs more: ik_llama.cpp converts mul_mat's src1 and the
# attention's Q to q8_2_x4 (bf16 scales, docs/facts/ik-snapshot.md) where mlaref's #253 path quantizes to q8_0
# (f16 scales): measured 4.1e-5 to 4.4e-5 at 16 heads, 512 queries, n_kv 1024, every variant.
NMSE_BOUND_Q8_0 = {"ik-llama-cpp-python": 1e-4}
# Why a contender cannot run the layer with a q8_0 cache (it is left out and named).
Q8_0_CACHE_UNSUPPORTED = {
    "ggml 0.15.3": "its layer (codegen/bench/mla_layers.GgmlLayer, through ggml-python) is built with an f16 "
                   "cache only",
    "llama-cpp-python": "ggml 0.25.3's CPU repeat has no q8_0 case and aborts (ggml_compute_forward_repeat, "
                        "ggml/src/ggml-cpu/ops.cpp:1789-1818 in the llama-cpp-python 0.3.36 sdist): #253's direct "
                        "and chunked graphs repeat q8_0 rows",
}
# the wkv_b type the arena's layer uses with each cache type
ARENA_WEIGHT = {"f16": "f16", "q8_0": "q8_0"}


def layer_setups(hp, s: dict, n_kv: int, kv_chunk: int, seed: int, weight_type: str = "f16",
                 cache_type: str = "f16", merged: bool = True) -> dict:
    """variant -> ``(g, values)``: :func:`layer_graph` at these shapes (``merged``: the chunked variant with its
    merge, else its ggml-only form) and its leaf values, on GgmlLayer's data (:func:`layer_data`; the mask's
    padding rows masked)."""
    d = layer_data(s, n_kv, seed)
    hp = hp.replace(n_head=s["n_head"], n_head_kv=s["n_head"])
    out = {}
    for v in VARIANTS:
        g = layer_graph(hp, n_kv, variant=v, cache_type=cache_type, n_tokens=s["T"], weight_type=weight_type,
                        kv_chunk=kv_chunk, merged=merged)
        pad = next(t for t in g.inputs.values() if t.name.startswith("KQ_mask")).ne[1]
        mask = np.full((pad, n_kv), -np.inf, dtype=np.float32)
        mask[: s["T"]] = d["mask"].astype(np.float32)
        vals = layer_values(g, wkv_b=d["wkv_b"].astype(np.float32), cache=d["cache"].astype(np.float32),
                            q=d["q"], mask=mask)
        out[v] = (g, vals)
    return out


def arena_options() -> dict:
    """The timed arena's plans: this CPU's native ones, as ``mlaref bench peers`` runs them (on AVX2 mul_mat in
    mlaref_l8s1, :func:`mlaref.codegen.kernels.mm.fastest_plan`; flash attention with l8s1 K.Q dots and the default
    plan's k_step, chunks and exp, :func:`~mlaref.codegen.kernels.mm.fastest_fa_plan`; the chunked variant's
    partial attention with the same plan, whose kv_chunks it does not use)."""
    fa = _mm.fastest_fa_plan(None, _mm.FA_PLAN.k_step, _mm.FA_PLAN.kv_chunks, _mm.FA_PLAN.exp)
    return {**DEFAULT_OPTIONS, "MUL_MAT": {"plan": _mm.fastest_plan()}, "FLASH_ATTN_EXT": {"plan": fa},
            "FLASH_ATTN_EXT_PARTIAL": {"plan": fa}}


def arena_layers(hp, s: dict, n_kv: int, kv_chunk: int, n_threads: int, seed: int,
                 weight_type: str = "f16") -> dict:
    """variant -> a prepared Arena of the layer at these shapes (:func:`layer_setups`)."""
    return {v: Arena(g, **vals, n_threads=n_threads, options=arena_options())
            for v, (g, vals) in layer_setups(hp, s, n_kv, kv_chunk, seed, weight_type).items()}


def attention_names(g) -> list[str]:
    """The names of the graph's ``flash_attn_ext`` results: ``kqv-0``, or every chunk's ``kqv_c{i}-0`` (the
    ggml-only chunked graph; the merged one has none)."""
    return [n.name for n in g.graph.nodes if n.op == "FLASH_ATTN_EXT"]


def peers_ready(peers) -> tuple[list[str], dict[str, str]]:
    """``(peers whose native build is cached, {peer: why it is skipped})``; unknown names raise ValueError."""
    ready, skipped = [], {}
    for p in peers:
        peer_build.peer_spec(p)
        if p not in PEER_TAGS:
            raise ValueError(f"bench mla: {p!r} has no ggml graph API here; of: {', '.join(PEER_TAGS)}")
        if peer_build.built("native", p):
            ready.append(p)
        else:
            skipped[p] = f"not built here: run `mlaref peer build {p}`"
    return ready, skipped


def _arena_attention(arena: Arena, names: list[str]) -> np.ndarray:
    """The arena's attention results, concatenated; each must still hold its bytes (never freed by the plan)."""
    freed = {id(t) for ts in arena.plan.frees.values() for t in ts}
    parts = []
    for name in names:
        t = arena.graph.find(name)
        if id(t) in freed:
            raise RuntimeError(f"bench mla: the arena's plan frees {name!r}; its bytes cannot be compared")
        parts.append(arena.tensor(name).to_numpy().reshape(-1))
    return np.concatenate(parts)


def _timed(fn):
    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return run


def _steal_ticks() -> int | None:
    """The machine's stolen CPU time so far (``steal`` of /proc/stat's cpu line: time the hypervisor ran something
    else while this VM had work), in clock ticks; None where /proc/stat does not say."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        return int(fields[8]) if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError):
        return None


_TICK = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _measure(fns: dict, repeats: int, warmup: int = 1) -> tuple[dict, dict]:
    """Every contender ``warmup`` times, then ``repeats`` shuffled rounds; each callable returns its seconds.
    ``(timings, steal)``: a Timing per contender (its seconds in round order, so ``seconds[i]`` of two contenders
    ran in the same round) and the seconds stolen by the hypervisor during each of its runs (None: unknown)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    secs = {name: [] for name in fns}
    steal = {name: [] for name in fns}
    for order in bench.round_orders(fns, repeats):
        for name in order:
            s0 = _steal_ticks()
            secs[name].append(fns[name]())
            s1 = _steal_ticks()
            steal[name].append(None if s0 is None or s1 is None else (s1 - s0) * _TICK)
    return {name: bench.Timing(tuple(v), warmup) for name, v in secs.items()}, steal


def _ratio(t_other, t_arena, who: str) -> dict:
    """``t_other / t_arena`` three ways: of the medians (the headline), of the minima (each side's least
    disturbed run), and the median of the per-round ratios (runs of one round saw the same spell of the
    machine), with that median's IQR."""
    paired = np.array(t_other.seconds) / np.array(t_arena.seconds)
    q1, q3 = np.percentile(paired, [25, 75])
    med = float(np.median(paired))
    return {"value": t_other.median / t_arena.median, "unit": "1",
            "of_mins": t_other.min / t_arena.min, "paired": med, "paired_iqr": float((q3 - q1) / med),
            "method": f"median t_{who} / median t_arena (> 1: the arena is faster); of_mins: min / min; paired: "
                      f"median over rounds of t_{who} / t_arena in the same round, paired_iqr its IQR / median"}


# the yardstick of the machine's own noise, timed in the same rounds: the FMA loop of codegen/bench/fma_peak.c on
# n_threads threads, about 0.1 s per thread (no memory traffic, no system calls: what varies there is the core)
NOISE = "noise/fma"
_FMA_ITERS = 50_000_000


def _fma_noise(n_threads: int):
    """A callable timing the FMA loop on ``n_threads`` threads (None: no FMA ISA here), as a contender."""
    if _peak.peak_isa() is None:
        return None
    return lambda: _peak.fma_seconds(_FMA_ITERS, n_threads)


def arena_row(hp, s: dict, n: int, kv_chunk: int, n_threads: int, repeats: int, seed: int,
              with_ggml: bool = True, peers=(), cache_type: str = "f16") -> dict:
    """One ``n_kv``: interleaved timings of the arena, ggml 0.15.3 and the ``peers`` (cached builds only: see
    :func:`peers_ready`) on every variant, ratios, spreads, the peers' NMSE, the arena's profile."""
    setups = layer_setups(hp, s, n, kv_chunk, seed, ARENA_WEIGHT[cache_type], cache_type)
    # the graphs the ggml peers run: the same but for chunked (no partial or merge op in ggml: the unmerged form)
    peer_setups = layer_setups(hp, s, n, kv_chunk, seed, ARENA_WEIGHT[cache_type], cache_type, merged=False)
    bounds = NMSE_BOUND if cache_type == "f16" else NMSE_BOUND_Q8_0
    arenas = {v: Arena(g, **vals, n_threads=n_threads, options=arena_options()) for v, (g, vals) in setups.items()}
    fns = {f"arena/{v}": _timed(a.run) for v, a in arenas.items()}
    layer = GgmlLayer(s, n, kv_chunk, n_threads, seed) if with_ggml else None
    remotes: dict[tuple[str, str], RemoteGraph] = {}
    try:
        if layer is not None:
            fns.update({f"ggml/{v}": _timed(lambda v=v: layer.compute(v)) for v in VARIANTS})
        for p in peers:
            for v, (g, vals) in peer_setups.items():
                remotes[p, v] = RemoteGraph.of_graph(p, g, vals, keep=attention_names(g))
                fns[f"{PEER_TAGS[p]}/{v}"] = lambda r=remotes[p, v]: r.compute(n_threads)
        noise = _fma_noise(n_threads)
        if noise is not None:
            fns[NOISE] = noise
        timings, steal = _measure(fns, repeats)
        profiles = _profiles(arenas, remotes, n_threads)
        nmse = {}
        checks = {}  # the arenas holding the peers' attention results: the timed ones, or an untimed run of the
        for (p, v), r in remotes.items():  # ggml-only graph where the peers' graph differs (chunked)
            g, vals = peer_setups[v]
            if v not in checks:
                checks[v] = arenas[v] if attention_names(g) == attention_names(setups[v][0]) else \
                    Arena(g, **vals, n_threads=n_threads, options=arena_options())
                if checks[v] is not arenas[v]:
                    checks[v].run()
            names = attention_names(g)
            theirs = np.concatenate([t.to_numpy().reshape(-1) for t in r.results()[: len(names)]])
            nmse[p, v] = compare.nmse(theirs, _arena_attention(checks[v], names))
    finally:
        if layer is not None:
            layer.free()
        for r in remotes.values():
            r.close()
    row = {"n_kv": n}
    for name, t in timings.items():
        row[name] = {**t.to_json(), "spread": t.spread, "iqr": t.iqr, "min_over_median": t.min / t.median,
                     "steal": steal[name]}
    for v in VARIANTS:
        ta = timings[f"arena/{v}"]
        if layer is not None:
            row[f"ratio_{v}"] = _ratio(timings[f"ggml/{v}"], ta, "ggml")
        for p in peers:
            tag = PEER_TAGS[p]
            row[f"ratio_{tag}_{v}"] = _ratio(timings[f"{tag}/{v}"], ta, tag)
            row[f"nmse_{tag}_{v}"] = {
                "value": nmse[p, v], "bound": bounds[p], "within_bound": nmse[p, v] < bounds[p],
                "unit": "1", "outputs": attention_names(peer_setups[v][0]),
                "method": f"sum((peer - arena)^2) / sum(arena^2) in float64 over every flash_attn_ext result, "
                          f"after the last timed compute (chunked: the peers' unmerged per-chunk graph against an "
                          f"untimed arena run of it); bound {bounds[p]:g} (NMSE_BOUND / NMSE_BOUND_Q8_0 in "
                          f"codegen/bench/mla_arena.py)"}
        ops = profiles[v]["arena"]
        total = sum(ops.values())
        outside = sum(sec for op, sec in ops.items() if op not in _MM_FA)
        row[f"outside_mm_fa_{v}"] = {
            "value": outside / total, "unit": "1", "seconds": outside, "total": total,
            "method": "the arena's profile (below): seconds of the steps other than mul_mat and "
                      "flash_attn_ext(_partial) (casts, repeat, concat, the chunked variant's fa_merge, input "
                      "copies) / all steps"}
        row[f"profile_{v}"] = {
            "unit": "s", "ops": profiles[v],
            "arena_busy": arenas[v].profile_busy(PROFILE_REPEATS),
            "step_overhead": arenas[v].step_overhead(),
            "method": f"seconds per op kind, the median of {PROFILE_REPEATS} profiles per node summed over the "
                      "op's nodes. arena: one C call per compute with the clock read after every step "
                      "(Arena.profile_steps; 'inputs' = the copies of q and the mask; step_overhead = one empty "
                      "step at this thread count). A peer: every node of its ggml graph computed alone as a graph of "
                      "one node (mh_graph_profile: ggml_graph_plan + ggml_graph_compute per node, so each node "
                      "also pays the thread start and barrier a whole graph pays once); '(harness)' = the views "
                      "of the inputs' base tensors the harness adds. arena_busy: per op, the arena threads' work "
                      "over the time they were given (Arena.profile_busy; < 1: hand-off or waiting for the "
                      "slowest thread)"}
    return row


PROFILE_REPEATS = 3


def _peer_ops(remote: RemoteGraph, n_threads: int, repeats: int) -> dict:
    """Seconds per IR op kind of a peer's graph: each node's median over ``repeats`` profiles, summed per op
    (views and nodes of no time left out)."""
    runs = [remote.profile(n_threads) for _ in range(repeats)]
    out: dict[str, float] = {}
    for k, (_, op, _) in enumerate(runs[0]):
        sec = float(np.median([r[k][2] for r in runs]))
        if op in VIEW_OPS and sec < 1e-4:
            continue
        out[op] = out.get(op, 0.0) + sec
    return out


def _profiles(arenas: dict, remotes: dict, n_threads: int) -> dict:
    """variant -> {"arena": {op: s}, "<peer tag>": {op: s}, ...} (see ``profile_<variant>`` of a row)."""
    out = {}
    for v, a in arenas.items():
        out[v] = {"arena": a.profile_ops(PROFILE_REPEATS)}
        for (p, pv), r in remotes.items():
            if pv == v:
                out[v][PEER_TAGS[p]] = _peer_ops(r, n_threads, PROFILE_REPEATS)
    return out


def format_profile(rows: list[dict]) -> str:
    """One block per (n_kv, variant): seconds per op kind of the arena and of every profiled peer."""
    lines = []
    for r in rows:
        for v in VARIANTS:
            prof = r.get(f"profile_{v}")
            if not prof:
                continue
            who = list(prof["ops"])
            kinds = list(dict.fromkeys(k for w in who for k in prof["ops"][w]))
            lines.append(f"n_kv {r['n_kv']} {v}: seconds per op kind (each alone; step overhead "
                         f"{1e6 * prof['step_overhead']:.1f} us; busy: the arena threads' work / time given)")
            busy = prof.get("arena_busy", {})
            width = max(16, *(len(k) + 2 for k in kinds))  # FLASH_ATTN_EXT_PARTIAL: 22 characters
            head = f"{'op':<{width}}" + "".join(f"{w:>10}" for w in who) + (f"{'busy':>7}" if busy else "")
            lines.append("  " + head)
            for k in [*kinds, "total"]:
                cells = []
                for w in who:
                    ops = prof["ops"][w]
                    sec = sum(ops.values()) if k == "total" else ops.get(k)
                    cells.append(f"{sec:>10.4f}" if sec is not None else f"{'-':>10}")
                if busy:
                    cells.append(f"{busy[k]:>7.2f}" if k in busy else f"{'':>7}")
                lines.append("  " + f"{k:<{width}}" + "".join(cells))
    return "\n".join(lines)


def format_arena(rows: list[dict], n_threads: int, repeats: int, skipped: dict | None = None,
                 cache_type: str = "f16") -> str:
    """One line per (n_kv, variant): each contender's median, spread and IQR, its ratio to the arena (of the
    medians, and the median of the per-round ratios), the peers' NMSE; then the noise yardstick's line per n_kv."""
    tags = [t for t in ("ggml", *PEER_TAGS.values()) if any(f"{t}/{v}" in r for r in rows for v in VARIANTS)]
    label = {"ggml": "ggml015", **{t: t for t in PEER_TAGS.values()}}

    def pct(c, key):
        return f"{100 * c[key]:.0f}" if c and key in c else "-"

    head = ["n_kv", "variant", "arena s", "spr/iqr %"]
    for t in tags:
        head += [f"{label[t]} s", "spr/iqr %", f"{'ggml' if t == 'ggml' else label[t]}/arena", "paired"]
        if t != "ggml":
            head.append("nmse")
    head.append("outside mm+fa")
    lines = []
    for r in rows:
        for v in VARIANTS:
            a = r[f"arena/{v}"]
            line = [str(r["n_kv"]), v, f"{a['median']:.4f}", f"{pct(a, 'spread')}/{pct(a, 'iqr')}"]
            for t in tags:
                c = r.get(f"{t}/{v}")
                ratio = r.get(f"ratio_{v}" if t == "ggml" else f"ratio_{t}_{v}")
                line += [f"{c['median']:.4f}" if c else "-", f"{pct(c, 'spread')}/{pct(c, 'iqr')}",
                         f"{ratio['value']:.3f}" if ratio else "-",
                         f"{ratio['paired']:.3f}" if ratio and "paired" in ratio else "-"]
                if t != "ggml":
                    e = r.get(f"nmse_{t}_{v}")
                    line.append(f"{e['value']:.1e}{'' if e['within_bound'] else ' > bound'}" if e else "-")
            line.append(f"{100 * r[f'outside_mm_fa_{v}']['value']:.1f} %")
            lines.append(line)
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*x) for x in lines)]
    for r in rows:
        c = r.get(NOISE)
        if c:
            stolen = [x for name, t in r.items() if isinstance(t, dict) and "steal" in t for x in t["steal"]
                      if x is not None]
            out.append(f"n_kv {r['n_kv']}: the FMA loop in the same rounds (noise yardstick) median {c['median']:.4f} "
                       f"s, spread {pct(c, 'spread')} %, IQR {pct(c, 'iqr')} %, min/median "
                       f"{c['min_over_median']:.2f}; hypervisor steal in {sum(x > 0 for x in stolen)} of "
                       f"{len(stolen)} timed runs, {sum(stolen):.2f} s in all")
    bounds = NMSE_BOUND if cache_type == "f16" else NMSE_BOUND_Q8_0
    out.append(f"arena: one buffer at the allocator model's offsets, every node on a generated kernel, one C call per "
               f"run; ggml015: upstream ggml 0.15.3's graph (ggml-python); ik / ggml025: the arena's IR graph on "
               f"ik_llama.cpp / ggml 0.25.3 (ggml_graph_compute_with_ctx, timed in the peer's child process); "
               f"x/arena > 1: the arena is faster (of the medians; paired: the median of the per-round ratios); "
               f"nmse: a peer's attention results against the arena's (bounds "
               f"{', '.join(f'{PEER_TAGS[p]} {b:g}' for p, b in bounds.items())}); wkv_b {ARENA_WEIGHT[cache_type]}, "
               f"cache {cache_type}; "
               f"{n_threads} threads; median of {repeats} interleaved rounds; spr = (max - min) / median, iqr = "
               f"(q3 - q1) / median")
    for p, why in (skipped or {}).items():
        out.append(f"skipped {p}: {why}")
    return "\n".join(out)
