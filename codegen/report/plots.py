"""The report's PNG plots (matplotlib, imported only here and only when plotting): seed tables, MLA, throughput.

Every plot is ``PLOT_SIZE`` pixels (figsize 9.6 x 6.0 in at 100 dpi) and is described in report.json by
``{file, what, width_px, height_px}``. Without matplotlib the plots are skipped with the reason; one plot that
fails costs only itself (its entry says why).
"""

from __future__ import annotations

import pathlib

import numpy as np

from mlaref.codegen.bench.mla import SEED_PP

__all__ = ["PLOT_SIZE", "draw", "plot_seed_tables", "plot_mla", "plot_bench_kernels"]

PLOT_SIZE = (960, 600)  # pixels of every PNG (figsize 9.6 x 6.0 in at 100 dpi)
_DPI = 100


def _plt():
    import matplotlib  # optional: only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw(sections: dict, out: pathlib.Path) -> dict:
    """Draw the plots of the report's ``sections`` into ``out``: report.json's ``plots`` object."""
    try:
        _plt()
    except ImportError as exc:
        return {"status": "skipped", "reason": f"matplotlib is not installed ({exc}); pip install matplotlib",
                "plots": []}
    plots = []
    for name, fn in (("seed_tables", plot_seed_tables), ("mla", plot_mla), ("mla_ggml", plot_mla),
                     ("bench_kernels", plot_bench_kernels)):
        if sections[name].get("status") != "ok" and name != "seed_tables":
            continue
        if name == "seed_tables" and "rows" not in sections[name]:
            continue
        try:
            r = fn(sections[name], out)
            plots.extend(r if isinstance(r, list) else [r])
        except Exception as exc:  # one broken plot must not cost the others
            plots.append({"file": None, "what": name, "error": f"{type(exc).__name__}: {exc}"})
    return {"status": "ok", "plots": plots}


def _save(fig, path: pathlib.Path, what: str) -> dict:
    fig.savefig(path, dpi=_DPI)
    _plt().close(fig)
    return {"file": path.name, "what": what, "width_px": PLOT_SIZE[0], "height_px": PLOT_SIZE[1]}


def _figure():
    plt = _plt()
    return plt.subplots(figsize=(PLOT_SIZE[0] / _DPI, PLOT_SIZE[1] / _DPI), dpi=_DPI)


def plot_seed_tables(st: dict, out: pathlib.Path) -> dict:
    """compute_buffer.png: the compute buffer of the three graphs and the KV cache vs context, with the seed's
    published cells."""
    fig, ax = _figure()
    xs = [r["n_ctx"] for r in st["rows"]]
    for v, style in (("f32", "o-"), ("direct", "s-"), ("chunked", "^-")):
        ax.plot(xs, [r[v]["bytes"]["value"] / 2**20 for r in st["rows"]], style, label=f"compute buffer, {v} (model)")
    seed_x = [r["n_ctx"] for r in st["rows"] if r["direct"].get("seed")]
    for v, mk in (("direct", "x"), ("f32", "+")):
        ax.plot(seed_x, [float(r[v]["seed"]) for r in st["rows"] if r[v].get("seed")], mk, color="black",
                markersize=10, linestyle="none", label=f"seed, {'PR' if v == 'direct' else 'main'}")
    ax.plot(xs, [r["kv_cache"]["bytes"]["value"] / 2**20 for r in st["rows"]], "--", color="grey", label="KV cache")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("MiB")
    ax.set_title(f"{st['model']}: CPU compute buffer and KV cache (f16 cache, ubatch 512)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out / "compute_buffer.png", "compute buffer (allocator model) and KV cache vs context, "
                                                  "with the seed's published cells")


def plot_mla(mla: dict, out: pathlib.Path) -> list[dict]:
    """mla_speedup[_ggml].png (per-layer speed-ups beside the seed's) and mla_times[_ggml].png (seconds)."""
    rows = mla["rows"]
    tag = "" if mla["backend"] != "ggml" else "_ggml"
    xs = [r["n_kv"] for r in rows]
    plots = []
    fig, ax = _figure()
    ax.plot(xs, [r["speedup_direct_over_f32"]["value"] for r in rows], "o-",
            label=f"direct/f32 per layer, this CPU ({mla['backend']})")
    if all("speedup_direct_over_f32_min" in r for r in rows):
        ax.plot(xs, [r["speedup_direct_over_f32_min"]["value"] for r in rows], "o:", color="C0", alpha=0.6,
                label="direct/f32 per layer, ratio of the fastest runs")
    ax.plot(xs, [r["speedup_chunked_over_direct"]["value"] for r in rows], "s-", label="chunked/direct per layer")
    if all("speedup_kv_build_direct_over_f32" in r for r in rows):
        ax.plot(xs, [r["speedup_kv_build_direct_over_f32"]["value"] for r in rows], "v-.",
                label="direct/f32, K/V build alone")
    ax.plot(list(SEED_PP), [v[2] for v in SEED_PP.values()], "x--", color="black",
            label="seed: PR/main whole-model pp-N (Ryzen-7950X)")
    est = mla.get("pp_estimate") or []
    if est:
        ax.plot([e["N"] for e in est], [e["speedup_direct_over_f32"]["value"] for e in est], "d:",
                label="direct/f32 attention-only pp-N estimate")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n_kv (tokens in the cache) / N (prompt length)")
    ax.set_ylabel("speed-up (ratio of times, > 1: faster)")
    ax.set_title(f"PR #253 speed-up: per-layer K/V build + attention, T={mla['shapes']['T']}, "
                 f"{mla['n_threads']} thread(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.append(_save(fig, out / f"mla_speedup{tag}.png", f"{mla['backend']} back-end: direct/f32 and "
                                                            "chunked/direct per-layer speed-up vs n_kv, beside the "
                                                            "seed's pp-N speed-up"))
    fig, ax = _figure()
    for v, style in (("f32", "o-"), ("direct", "s-"), ("chunked", "^-")):
        med = np.array([r[v]["median"] for r in rows])
        lo = med - np.array([r[v]["min"] for r in rows])
        hi = np.array([r[v]["max"] for r in rows]) - med
        ax.errorbar(xs, med, yerr=[lo, hi], fmt=style, capsize=3, label=v)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n_kv")
    ax.set_ylabel("seconds per layer (median; bars: min-max)")
    ax.set_title(f"K/V build + flash attention per layer ({mla['backend']} back-end)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.append(_save(fig, out / f"mla_times{tag}.png", f"{mla['backend']} back-end: per-layer seconds of the "
                                                          "three variants vs n_kv"))
    return plots


def plot_bench_kernels(bk: dict, out: pathlib.Path) -> dict:
    """kernel_throughput.png: MB/s per format and direction of the kernel, the reference and ggml."""
    fig, ax = _figure()
    labels = [f"{r['format']}\n{r['direction'][:5]}" for r in bk["results"]]
    x = np.arange(len(labels))
    w = 0.27
    for j, k in enumerate(("kernel", "reference", "ggml")):
        vals = [r[k]["throughput"]["median"] if r[k]["status"] == "ok" else 0.0 for r in bk["results"]]
        ax.bar(x + (j - 1) * w, vals, w, label=k)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("MB/s of float32 data (median)")
    ax.set_title("quantize / dequantize throughput, 1 thread")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out / "kernel_throughput.png", "MB/s per format and direction: kernel, reference, ggml")

