"""report.md: the report dict rendered as Markdown, one ``##`` section per report section, plots linked.

:func:`render_markdown` needs only the report dict (what report.json holds), so a saved report.json can be
rendered again, as the docs do (``docs/_gen/report.py``). Tables of the benchmarks are their modules' own text
tables in code blocks; the MLA sections end with a discussion of how the numbers compare with the seed's.
"""

from __future__ import annotations

from mlaref.codegen import bench
from mlaref.codegen.bench import mla as bench_mla
from mlaref.codegen.bench import ops as bench_ops
from mlaref.codegen.bench import throughput

__all__ = ["render_markdown"]


def _skipped(sec: dict) -> str | None:
    if sec.get("status") == "skipped":
        return f"skipped: {sec.get('reason', 'unknown reason')}\n"
    return None  # rendered as nothing


def _first(names, k: int = 8) -> str:
    names = list(names)
    more = f" and {len(names) - k} more (report.json lists all)" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def render_markdown(r: dict) -> str:
    """report.md from the report dict ``r`` (a freshly made report or a loaded report.json)."""
    s = r["sections"]
    env = r["environment"]
    L = [f"# mlaref report ({r['mode']})", "",
         f"Created {r['created']} by `{r['command']}` in {r['runtime']['value']:.1f} s; mlaref {r['mlaref_version']}, "
         f"Python {env.get('python')}, NumPy {env.get('numpy')}, ggml-python {'yes' if env.get('ggml_python') else 'no'}; "
         f"load average at the start {env.get('load_average', {}).get('value')} (1/5/15 min) on "
         f"{s['cpu'].get('logical_cpus', '?')} logical CPUs.",
         "", f"**Checks: {r['checks']['total'] - r['checks']['failed']} of {r['checks']['total']} passed"
         f"{'' if not r['checks']['failed'] else ' -- FAILED: ' + _first(c['name'] for c in r['checks']['list'] if not c['passed'])}**"
         f" (exit code {r['exit_code']}).", ""]

    L += ["## CPU", ""]
    c = s["cpu"]
    L.append(_skipped(c))
    if c.get("status") == "ok":
        L += [f"{c['model']} ({c['arch']}, {c['logical_cpus']} logical CPUs); compiler: {c['compiler']}.", "",
              "| ISA | here | missing features |", "|---|---|---|"]
        for tok, d in c["isas"].items():
            L.append(f"| {tok} | {'found' if d['found'] else 'not found'} | {', '.join(d['missing']) or '-'} |")
        L += ["", f"Dispatch order: {' > '.join(c['dispatch_order']) or '(none)'}.", ""]
        pk = c.get("fma_peak", {})
        if pk.get("status") == "ok":
            L += ["FMA peak, measured at the start: " + ", ".join(
                f"{v['value']:.1f} GFLOP/s at {k.split('_')[1]} thread(s)" for k, v in pk.items() if k != "status")
                + f" ({next(v for k, v in pk.items() if k != 'status')['method']}).", ""]

    L += ["## Build", ""]
    b = s["build"]
    L.append(_skipped(b))
    if "modules" in b:
        ok = [m for m in b["modules"] if m["status"] == "ok"]
        L.append(f"{len(ok)} of {len(b['modules'])} (family, ISA) modules built or loaded from {b['cache_dir']} in "
                 f"{b['seconds']['value']:.1f} s; flags {' '.join(b['compile_flags'])} + the ISA's.")
        L += ["", "| family | ISA | kernels | status |", "|---|---|---:|---|"]
        for m in b["modules"]:
            st = m["status"] if m["status"] == "ok" else f"{m['status']}: {m.get('reason', '')[:160]}"
            L.append(f"| {m['family']} | {m['isa']} | {m['kernels']} | {st} |")
        L.append("")

    L += ["## Kernel checks (bit-exact against the reference)", ""]
    k = s["check"]
    L.append(_skipped(k))
    if "kernels" in k:
        t = k["totals"]
        L += [f"{t['pass']} passed, {t['fail']} failed, {t['skipped']} skipped. Method: {k['method']}.", "",
              "| ISA | state | pass | fail | skipped | why skipped |", "|---|---|---:|---:|---:|---|"]
        for isa, d in k["isas"].items():
            L.append(f"| {isa} | {d['state']} | {d['pass']} | {d['fail']} | {d['skipped']} | "
                     f"{'; '.join(d['reasons'])[:200] or '-'} |")
        bad = [(n, d) for n, d in k["kernels"].items() if d["status"] == "fail"]
        if bad:
            L += ["", "Failed kernels:", ""] + [f"- `{n}`: {d['detail']}" for n, d in bad]
        odd = [(n, d) for n, d in k["kernels"].items()
               if d["status"] == "skipped" and not d["detail"].startswith("skipped:")]
        if odd:
            L += ["", "Kernels skipped on a supported ISA:", ""] + [f"- `{n}`: {d['detail']}" for n, d in odd]
        L.append("")

    L += ["## Seed tables: KV cache and compute buffer (allocator model)", ""]
    st = s["seed_tables"]
    L.append(_skipped(st))
    if "rows" in st:
        L += [f"{st['model']}, {st['cache_type']} cache, ubatch {st['ubatch']}; MiB as llama.cpp prints them. "
              "Model cell (seed cell / ik_llama.cpp's own print).", "",
              "| context | KV cache | compute buffer PR = direct | compute buffer main = f32 | chunked (mlaref) |",
              "|---:|---:|---:|---:|---:|"]
        for row in st["rows"]:
            def cell(v):
                c = row[v]
                extra = f" ({c['seed']} / {c['ik_prints']})" if c.get("seed") else ""
                return c["mib"]["value"] + extra
            kv = row["kv_cache"]
            L.append(f"| {row['n_ctx']} | {kv['mib']['value']}{' (' + kv['seed'] + ')' if kv['seed'] else ''} | "
                     f"{cell('direct')} | {cell('f32')} | {cell('chunked')} |")
        n_ok = sum(c["passed"] for c in st["checks"])
        L += ["", f"{n_ok} of {len(st['checks'])} cells equal. {st['note']}.", "",
              "![compute buffer](compute_buffer.png)", ""]

    L += ["## Kernel throughput", ""]
    bk = s["bench_kernels"]
    L.append(_skipped(bk))
    if "results" in bk:
        L += ["```", throughput.format_table(bk), "```", "", "![throughput](kernel_throughput.png)", ""]

    L += ["## The reference against gguf-py", ""]
    bt = s.get("bench_types", {"status": "skipped", "reason": "not run"})
    L.append(_skipped(bt))
    if "results" in bt:
        L += ["Both are NumPy: mlaref's readable reference (`mlaref.reference.quantize` / `dequantize`) and gguf-py's "
              "`gguf.quants`, on the same data; `same` says whether they gave the same bytes.", "",
              "```", bench.format_table(bt), "```", ""]

    L += ["## One MLA layer's ops (small shapes)", ""]
    bo = s.get("bench_ops", {"status": "skipped", "reason": "not run"})
    L.append(_skipped(bo))
    if "results" in bo:
        L += ["```", bench_ops.format_table(bo), "```", "", f"ggml: {bo['method']['ggml']}.", ""]

    L += ["## The kernels against ik_llama.cpp and upstream ggml 0.25.3", ""]
    bp = s.get("bench_peers", {"status": "skipped", "reason": "not run"})
    L.append(_skipped(bp))
    if "rows" in bp:
        L += ["FlashMLA-2's K/V-build mul_mat and its flash attention at DeepSeek-V2-Lite's shapes, through the peer "
              "harness (one child process per peer, the same input bytes, interleaved rounds). `%pk` is the "
              "fraction of the FMA loop's median rate, timed in each row's rounds.", "", "```", bp["table"], "```", ""]
        if bp["not_built"]:
            L += ["Not built here, so not timed: " + ", ".join(f"{p} (`mlaref peer build {p}`)"
                                                               for p in bp["not_built"]) + ".", ""]

    L += ["## The CUDA target (#253's row ops and mul_mat on a GPU)", ""]
    L += _md_cuda(s.get("cuda", {"status": "skipped", "reason": "not run"}))

    L += ["## The seed's speed claim on this CPU (per layer, PR #253)", ""]
    L += _md_mla(s["mla"], "")
    L += ["### The same layer on upstream ggml (ggml-python)", ""]
    L += _md_mla(s.get("mla_ggml", {"status": "skipped", "reason": "not run"}), "_ggml")

    L += ["## Skipped", ""]
    if r["skipped"]:
        L += [f"- {x['what']}: {x['reason'][:300]}" for x in r["skipped"]]
    else:
        L.append("nothing")
    L.append("")
    if r["plots"]["status"] == "skipped":
        L += [f"Plots skipped: {r['plots']['reason']}", ""]
    return "\n".join(x for x in L if x is not None) + "\n"


def _md_cuda(c: dict) -> list[str]:
    """The lines of the ``cuda`` section: the nvcc build, then the GPU runs or why they were skipped."""
    L = [_skipped(c)]
    if "build" not in c:
        return L
    b = c["build"]
    libs = ", ".join(f"{f} {'ok' if r['ok'] else 'FAILED'}" for f, r in b["libraries"].items())
    L += [f"Built with {b['nvcc_version']} ({' '.join(b['flags'])}): {libs}.", "", f"GPU: {c['gpu']}.", ""]
    runs = c["runs"]
    if runs["status"] == "skipped":
        return L + [f"Runs skipped: {runs['reason']}.", ""]
    cor = runs["correctness"]
    L += [f"Bit-exact against the reference: {cor['passed']} of {cor['total']} cases.", ""]
    L += [f"- FAIL {x['kernel']} [{x['case']}]: {x['detail']}" for x in cor["cases"] if not x["ok"]]
    if "timing" in runs:
        t = runs["timing"]
        L += ["", f"cudaMemcpy device-to-device: {t['memcpy_d2d_GBps']} GB/s ({t['note']})."]
        L += [f"- {k}: {v['ms']} ms, {v['GBps']} GB/s, {v['of_memcpy']} x memcpy" for k, v in t["row_copies"].items()]
    return L + [""]


def _md_mla(m: dict, tag: str) -> list[str]:
    """The lines of an ``mla`` / ``mla_ggml`` section (``tag``: the plots' file-name suffix)."""
    L = [_skipped(m)]
    if "rows" not in m:
        return L
    L += [f"What was timed: {m['timed']}.", ""]
    if m.get("note"):
        L += [f"**{m['note']}.**", ""]
    L += ["```", bench_mla.format_table(m), "```", ""]
    if m.get("pp_estimate"):
        L += ["Attention-only estimate of a pp-N run (sum over its micro-batches of the interpolated per-layer "
              "times):", "", "| N | direct/f32 estimate | seed |", "|---:|---:|---:|"]
        for e in m["pp_estimate"]:
            L.append(f"| {e['N']} | {e['speedup_direct_over_f32']['value']:.3f} | {e['seed_speedup']:.3f} |")
        L.append("")
    L += ["How this compares with the seed: " + _mla_discussion(m, bench_mla.SEED_PP), "",
          f"![speed-up](mla_speedup{tag}.png)", "", f"![times](mla_times{tag}.png)", ""]
    return L


def _mla_discussion(m: dict, seed_pp: dict) -> str:
    """How this run's per-layer ratios compare with the seed's whole-model ones, and why they need not agree."""
    rows = m["rows"]
    if m["backend"] == "reference":
        return ("only the reference back-end ran, at reduced shapes and single-threaded; its ratios describe NumPy, "
                "not the seed's kernels.")
    r = [x["speedup_direct_over_f32"]["value"] for x in rows]
    trend = "rises" if r[-1] > r[0] + 0.02 else ("falls" if r[-1] < r[0] - 0.02 else "is flat within 2 %")
    kv = ""
    if "speedup_kv_build_direct_over_f32" in rows[0]:
        kb = [x["speedup_kv_build_direct_over_f32"]["value"] for x in rows]
        share = [x["kv_build_share_f32"]["value"] for x in rows]
        kv = (f" The part the PR changes, the K/V build alone, runs {min(kb):.2f}x to {max(kb):.2f}x as fast in the "
              f"direct branch; it is {100 * min(share):.0f} % to {100 * max(share):.0f} % of the f32 layer's time "
              "here, which bounds what the layer can gain.")
    noise = [x["speedup_chunked_over_direct"]["value"] for x in rows if x.get("chunks", 1) == 1]
    if noise:
        kv += (f" Run-to-run noise: where chunked and direct run the same graph (n_kv <= kv_chunk), their ratio is "
               f"{min(noise):.3f} to {max(noise):.3f}; per-layer ratios closer to 1 than that are not resolved.")
    if m["backend"] == "ggml":
        impl = ("(2) upstream ggml's kernels with an f16 wkv_b (the seed: ik_llama.cpp's iqk kernels with IQ4_NL "
                "weights), so the work the PR removes is a different share of the layer; upstream's mul_mat can use "
                "the llamafile sgemm only for a contiguous src1, which the f32 branch's converted copy is and the "
                "direct branch's strided cache view is not")
    else:
        impl = ("(2) mlaref's kernels: mul_mat and flash_attn_ext are generated C, but the casts and the f32 concat "
                "are NumPy and every op is a Python call, so the K/V build's share and cost differ from "
                "ik_llama.cpp's fused, threaded C graph; and every intermediate is a fresh NumPy allocation per run "
                "(hundreds of MB at n_kv >= 8192, paid in page faults), which the ggml back-end, whose context is "
                "allocated once like ggml-alloc's buffer, does not pay: there the K/V build's timings and shares "
                "are not reliable")
    if all("speedup_direct_over_f32_min" in x for x in rows):
        rm = [x["speedup_direct_over_f32_min"]["value"] for x in rows]
        kv = (f" From the fastest runs (least disturbed by other work on this machine) it is {rm[0]:.3f} at "
              f"n_kv {rows[0]['n_kv']} and {rm[-1]:.3f} at n_kv {rows[-1]['n_kv']}, between {min(rm):.3f} and "
              f"{max(rm):.3f}.") + kv
    return (f"here direct/f32 per layer (ratio of medians) goes from {r[0]:.3f} (n_kv {rows[0]['n_kv']}) to "
            f"{r[-1]:.3f} (n_kv {rows[-1]['n_kv']}), i.e. it {trend}; the seed's whole-model ratio rises from "
            f"{seed_pp[512][2]:.3f} to {seed_pp[16384][2]:.3f}.{kv} Why the two need not agree: (1) the seed times "
            "the whole model over N/512 micro-batches with n_kv = 512..N, so the attention share of the total (and "
            "the speed-up) grows with N even if the per-layer ratio is constant, since K/V build and attention both "
            f"grow linearly in n_kv at T = 512 while the FFN does not; {impl}; (3) {m['n_threads']} thread(s) on a "
            "machine shared with other jobs versus 16 cores of a Ryzen-7950X, so the memory-bandwidth cost of the "
            "f32 copies (which grow past the caches at large n_kv) weighs differently. chunked/direct beyond "
            "kv_chunk shows the cost or gain of per-chunk attention (the merge is timed separately as "
            "merge_seconds).")


