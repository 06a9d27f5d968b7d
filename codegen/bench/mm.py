"""Benchmarks of the mul_mat and flash_attn_ext kernels against upstream ggml (ggml-python), for `mlaref bench`.

``bench_mul_mat(...)`` times ``kv_f32 = mul_mat(wkv_b [512, 4096], cache view [512, n_kv])`` (upstream facts §3.3
node 12; the cache rows hold 576 values, the view the first 512) for each case

* ``f16 x f16``: both run it directly (iqk and mlaref read the f16 cache as is);
* ``q8_0 x f32``: ggml quantizes the f32 src1 to q8_0 in its work buffer, mlaref inside the kernel;
* ``q8_0 x f16`` and ``iq4_nl x f16`` (the #253 cases): upstream ggml cannot take a non-f32 src1 for a q8_0 /
  iq4_nl weight, so its contender is the old graph: ``cast(cache -> f32)`` then ``mul_mat`` in one graph;
* on request (``EXTRA_CASES``): ``q4_K x f32`` (both direct) and ``q6_K x f16`` (ggml after the f32 cast).

``bench_flash_attn(...)`` times FlashMLA-2's attention: q f32 [192, 512, 16], K [192, n_kv, 16] and V [128, n_kv,
16] in f16, an f16 mask [n_kv, 512] of zeros, scale 1/sqrt(192): mlaref's blocked kernel (plan ``k_step`` 64,
one KV chunk, exp as chosen) against ``ggml_flash_attn_ext``.

Method: as :mod:`mlaref.codegen.bench` (warm-up, then contenders interleaved, median of ``repeats``), recording
both wall-clock seconds and the process CPU seconds of each call (all threads). On a shared machine the wall
clock includes time other processes took from our cores; CPU seconds do not, so the table gives GFLOP/s of both
(``cpu GF/s`` = flops per CPU-second, i.e. per busy core). ggml's graph
and its work buffer are built once per cell, so only ``ggml_graph_compute`` is timed; mlaref's time is the whole
Python call (argument checks, thread start, per-call scratch). GFLOP/s counts 2 flops per multiply-add of the
math (mul_mat: 2*K*M*N; attention: 2*nh*nq*n_kv*(Dk + Dv)); mlaref's mul_mat runs this CPU's native plan
(:func:`mlaref.codegen.kernels.mm.fastest_plan`: mlaref_l8s1 on AVX2, mlaref_l16a1 on AVX-512), named in the table
and the result; ``peak`` is this CPU's f32 FMA peak at the thread
count used, measured once per run by :func:`mlaref.codegen.bench.peak.fma_peak` (the widest FMA ISA the CPU has,
so 8 lanes on an AVX2-only CPU, 16 with AVX-512). Quantized dot products run int8 instructions, so for them the
fraction is of the float peak, not of the int8 peak.
"""

from __future__ import annotations

import ctypes
import functools
import math

import numpy as np

from mlaref import reference as R
from mlaref.codegen.bench import method as _bench
from mlaref.codegen.bench import peak as _peak
from mlaref.codegen.kernels import mm as _km
from mlaref.codegen.peers import ggml as ggml_peer
from mlaref.codegen.peers import ggml_ops as ggml_ops
from mlaref.reference import compare
from mlaref.reference.tensor import Tensor

__all__ = ["bench_mul_mat", "bench_flash_attn", "peak_gflops", "format_table", "MM_CASES", "EXTRA_CASES"]

MM_CASES = ("f16 x f16", "q8_0 x f32", "q8_0 x f16", "iq4_nl x f16")
EXTRA_CASES = ("q4_K x f32", "q6_K x f16")  # k-quant weights (ggml: q4_K x f32 direct, q6_K x f16 after a cast)


@functools.cache
def peak_gflops(n_threads: int) -> float:
    """This CPU's measured f32 FMA peak at ``n_threads`` threads in GFLOP/s (0.0 where none is measured), once per
    process and thread count (:func:`mlaref.codegen.bench.peak.fma_peak`)."""
    p = _peak.fma_peak(n_threads)
    return p["gflops"] if p else 0.0


def _tensor(rng, type: str, rows: int, n: int, row_len: int | None = None, scale: float = 1.0) -> Tensor:
    width = row_len or n
    x = (rng.standard_normal((rows, width)) * scale).astype(np.float32)
    if type == "f32":
        data = x.view(np.uint8)
    elif type == "q8_0":
        data = R.quantize(x, type, variant="x86")
    else:
        data = R.quantize(x, type)
    data = np.ascontiguousarray(data).reshape(rows, -1)
    base = Tensor.from_bytes(data, type, (width, rows, 1, 1))
    if row_len is None:
        return base
    return base.view((n, rows, 1, 1), (base.nb[0], base.nb[1], base.nb[1] * rows, base.nb[1] * rows))


class _GgmlGraph:
    """One ggml graph built once over copies of mlaref tensors; ``compute()`` runs it (the timed part)."""

    def __init__(self, builder, *inputs: Tensor, n_threads: int, extra_bytes: int = 0):


        g = self.g = ggml_peer.lib()
        need = sum(max(t.data.size, ggml_ops.span(t)) + 64 for t in inputs)
        mem = need + extra_bytes + (64 << 20) + int(g.ggml_graph_overhead())  # + results and casts
        self.ctx = g.ggml_init(g.ggml_init_params(mem_size=mem, mem_buffer=None, no_alloc=False))
        if not self.ctx:
            raise MemoryError(f"bench_mm: ggml_init could not allocate {mem} bytes")
        bases: dict = {}
        views: dict = {}
        for t in inputs:
            views.setdefault(id(t.data), []).append(t)
        gts = [ggml_ops.to_ggml(g, self.ctx, t, bases, views) for t in inputs]
        self.out = builder(g, self.ctx, *gts)
        self.gf = g.ggml_new_graph(self.ctx)
        g.ggml_build_forward_expand(self.gf, self.out)
        self.plan = g.ggml_graph_plan(self.gf, n_threads, None)
        self.work = np.zeros(max(1, int(self.plan.work_size)) + 256, np.uint8)
        self.plan.work_data = ctypes.cast(self.work.ctypes.data, type(self.plan.work_data))

    def compute(self) -> None:
        status = self.g.ggml_graph_compute(self.gf, ctypes.byref(self.plan))
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute returned {status}")

    def result(self) -> np.ndarray:
        return ggml_ops.from_ggml(self.g, self.out).to_numpy()

    def close(self) -> None:
        self.g.ggml_free(self.ctx)


def _measure(fns: dict, *, repeats: int, warmup: int) -> tuple[dict, dict]:
    """(wall Timing, CPU Timing) per contender, runs interleaved after a warm-up (bench.measure_interleaved's
    method, plus ``time.process_time``)."""
    import time

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict = {n: [] for n in fns}
    cpu: dict = {n: [] for n in fns}
    for order in _bench.round_orders(fns, repeats):
        for name in order:
            fn = fns[name]
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return ({n: _bench.Timing(tuple(v), warmup) for n, v in wall.items()},
            {n: _bench.Timing(tuple(v), warmup) for n, v in cpu.items()})


def _cell(case: str, n_kv: int, threads: int, flops: float, timings: tuple, nmse: float) -> dict:
    (wall, cpu) = timings
    ours, theirs = wall["mlaref"], wall["ggml"]
    peak = peak_gflops(threads)
    g_ours, g_theirs = flops / ours.median * 1e-9, flops / theirs.median * 1e-9
    c_ours, c_theirs = flops / cpu["mlaref"].median * 1e-9, flops / cpu["ggml"].median * 1e-9
    return {
        "mlaref_cpu_s": cpu["mlaref"].median, "ggml_cpu_s": cpu["ggml"].median,
        "mlaref_cpu_gflops": c_ours, "ggml_cpu_gflops": c_theirs,
        "mlaref_cpu_peak_frac": c_ours / peak_gflops(1) if peak else math.nan,
        "ggml_cpu_peak_frac": c_theirs / peak_gflops(1) if peak else math.nan,
        "case": case, "n_kv": n_kv, "threads": threads, "gflop": flops * 1e-9,
        "mlaref_s": ours.median, "mlaref_s_min": ours.min, "mlaref_s_max": ours.max,
        "ggml_s": theirs.median, "ggml_s_min": theirs.min, "ggml_s_max": theirs.max,
        "mlaref_gflops": g_ours, "ggml_gflops": g_theirs,
        "mlaref_peak_frac": g_ours / peak if peak else math.nan,
        "ggml_peak_frac": g_theirs / peak if peak else math.nan,
        "speedup": theirs.median / ours.median, "nmse_vs_ggml": nmse,
    }


def bench_mul_mat(*, n_kvs=(1024, 4096, 16384), threads=(1, 2), cases=MM_CASES, repeats: int = 5,
                  warmup: int = 1, seed: int = 0) -> dict:
    """Median seconds and GFLOP/s of kv_f32 per (case, n_kv, threads), mlaref kernel vs ggml; see the module doc."""
    rng = np.random.default_rng(seed)
    K, M = 512, 4096
    plan = _km.fastest_plan()  # this CPU's native plan (mlaref_l8s1 on avx2, mlaref_l16a1 on avx512)
    rows = []
    for case in cases:
        if case not in MM_CASES + EXTRA_CASES:
            raise ValueError(f"bench_mul_mat: case {case!r} is not one of {', '.join(MM_CASES + EXTRA_CASES)}")
        tx, ty = (s.strip() for s in case.split(" x "))
        w = _tensor(rng, tx, M, K, scale=0.05)
        direct = case in ("f16 x f16", "q8_0 x f32", "q4_K x f32")
        for n_kv in n_kvs:
            cache = _tensor(rng, ty, n_kv, K, row_len=576)
            for nt in threads:
                if direct:
                    def build(g, ctx, a, b):
                        return g.ggml_mul_mat(ctx, a, b)
                else:
                    def build(g, ctx, a, b):
                        return g.ggml_mul_mat(ctx, a, g.ggml_cast(ctx, b, 0))  # GGML_TYPE_F32 = 0
                graph = _GgmlGraph(build, w, cache, n_threads=nt, extra_bytes=4 * n_kv * (M + K))
                try:
                    box = {}

                    def ours(nt=nt):
                        box["out"] = _km.mul_mat(w, cache, plan=plan, n_threads=nt)

                    timings = _measure({"mlaref": ours, "ggml": graph.compute}, repeats=repeats, warmup=warmup)
                    nmse = compare.nmse(box["out"].to_numpy(), graph.result())
                finally:
                    graph.close()
                rows.append(_cell(case, n_kv, nt, 2.0 * K * M * n_kv, timings, nmse))
    return {"benchmark": "mul_mat kv_f32", "environment": _bench.environment(), "peak_gflops_1": peak_gflops(1),
            "mlaref_plan": plan.name, "rows": rows}


def bench_flash_attn(*, n_kvs=(1024, 4096, 16384), threads=(1, 2), kv_type: str = "f16", n_q: int = 512,
                     n_head: int = 16, exp: str = "v_expf_avx512", repeats: int = 5, warmup: int = 1,
                     seed: int = 0) -> dict:
    """Median seconds and GFLOP/s of FlashMLA-2's flash_attn_ext per (n_kv, threads), mlaref vs ggml."""
    rng = np.random.default_rng(seed)
    Dk, Dv = 192, 128
    q = Tensor.from_numpy((rng.standard_normal((1, n_head, n_q, Dk)) * 0.5).astype(np.float32))
    plan = _km.fa_plan(64, 1, exp)
    rows = []
    for n_kv in n_kvs:
        k = _tensor(rng, kv_type, n_kv * n_head, Dk)
        k = Tensor(k.type, (Dk, n_kv, n_head, 1), (k.nb[0], k.nb[1], k.nb[1] * n_kv, k.nb[1] * n_kv * n_head), k.data)
        v = _tensor(rng, kv_type, n_kv * n_head, Dv)
        v = Tensor(v.type, (Dv, n_kv, n_head, 1), (v.nb[0], v.nb[1], v.nb[1] * n_kv, v.nb[1] * n_kv * n_head), v.data)
        mask = Tensor.zeros("f16", (n_kv, -(-n_q // 64) * 64, 1, 1))
        scale = 1.0 / math.sqrt(Dk)
        for nt in threads:
            graph = _GgmlGraph(lambda g, ctx, a, b, c, m: g.ggml_flash_attn_ext(ctx, a, b, c, m, scale, 0.0, 0.0),
                               q, k, v, mask, n_threads=nt, extra_bytes=4 * Dv * n_head * n_q)
            try:
                box = {}

                def ours(nt=nt):
                    box["out"] = _km.flash_attn_ext(q, k, v, mask, scale, plan=plan, n_threads=nt)

                timings = _measure({"mlaref": ours, "ggml": graph.compute}, repeats=repeats, warmup=warmup)
                nmse = compare.nmse(box["out"].to_numpy(), graph.result())
            finally:
                graph.close()
            rows.append(_cell(f"fa {kv_type} {exp}", n_kv, nt, 2.0 * n_head * n_q * n_kv * (Dk + Dv), timings, nmse))
    return {"benchmark": "flash_attn_ext FlashMLA-2 PP", "environment": _bench.environment(), "peak_gflops_1": peak_gflops(1),
            "rows": rows}


def format_table(result: dict) -> str:
    """A plain-text table of a result of :func:`bench_mul_mat` or :func:`bench_flash_attn`: wall-clock median
    seconds and GFLOP/s with the fraction of the wall peak of the threads used, then GFLOP/s per CPU-second with
    the fraction of one core's peak, the speedup (wall) and the NMSE between the two results."""
    head = (f"{'case':<22} {'n_kv':>6} {'thr':>3} | {'mlaref s':>8} {'GF/s':>6} {'%pk':>5} {'cpuGF/s':>7} {'%pk':>5} | "
            f"{'ggml s':>8} {'GF/s':>6} {'%pk':>5} {'cpuGF/s':>7} {'%pk':>5} | {'speedup':>7} {'nmse':>7}")
    plan = f", mlaref plan {result['mlaref_plan']}" if "mlaref_plan" in result else ""
    lines = [f"{result['benchmark']} (peak = this CPU's FMA peak, measured: {result['peak_gflops_1']:.1f} GFLOP/s at "
             f"1 thread{plan})", head]
    for r in result["rows"]:
        lines.append(f"{r['case']:<22} {r['n_kv']:>6} {r['threads']:>3} | {r['mlaref_s']:>8.4f} "
                     f"{r['mlaref_gflops']:>6.1f} {100 * r['mlaref_peak_frac']:>4.0f}% {r['mlaref_cpu_gflops']:>7.1f} "
                     f"{100 * r['mlaref_cpu_peak_frac']:>4.0f}% | {r['ggml_s']:>8.4f} {r['ggml_gflops']:>6.1f} "
                     f"{100 * r['ggml_peak_frac']:>4.0f}% {r['ggml_cpu_gflops']:>7.1f} "
                     f"{100 * r['ggml_cpu_peak_frac']:>4.0f}% | "
                     f"{r['speedup']:>7.2f} {r['nmse_vs_ggml']:>7.1e}")
    return "\n".join(lines)
