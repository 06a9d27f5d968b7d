"""The report's sections other than ``check`` and ``seed_tables``: the CPU, the build, and the benchmarks run.

``section_cpu``
    architecture, model, each ISA token found or not found (the missing CPU features), the dispatch order and
    the compiler (:mod:`mlaref.codegen.cpu`, :mod:`mlaref.codegen.dispatch`).
``section_build``
    every (family, ISA) cffi module of the catalog (:func:`mlaref.codegen.build.load`), compiled in one worker
    process per CPU, with a progress bar on stderr; ISAs this CPU lacks and cross-architecture ISAs are skipped
    with the reason.
``section_bench_kernels``, ``section_bench_ops``, ``section_bench_types``
    :func:`mlaref.codegen.bench.throughput.bench_kernels`, :func:`mlaref.codegen.bench.ops.bench_ops` and
    :func:`mlaref.codegen.bench.bench_types` at the mode's sizes.
``section_bench_peers``
    :func:`mlaref.codegen.bench.peers.bench_peers`: the kernels against ik_llama.cpp and upstream ggml 0.25.3 at
    FlashMLA-2's shapes, with the fraction of the FMA peak; only the peers whose builds are cached (a cold ik
    build takes 11 to 20 minutes on 2 cores, more than a report should spend unasked): the others are skipped
    with the command that builds them.
``section_cuda``
    :mod:`mlaref.codegen.cuda.check`: every CUDA kernel compiled with nvcc (skipped, with that reason, without
    nvcc); on a machine with a GPU each one checked bit for bit against the reference (one report check per
    case) and, in the full mode, timed against cudaMemcpy and torch.matmul; without a GPU the runs are skipped
    with the driver's reason.
``section_mla``
    :func:`mlaref.codegen.bench.mla.run_mla` on mlaref's kernels (the NumPy reference at reduced shapes where
    they cannot run) or on upstream ggml.

Each takes the mode's settings (``cfg``, :data:`mlaref.codegen.report.builder.MODES`) and returns its section
dict; a section that raises is reported as skipped by the caller.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import time

from mlaref.codegen import bench, build, catalog, cpu, dispatch
from mlaref.codegen import isa as isa_mod
from mlaref.codegen.bench import mla as bench_mla
from mlaref.codegen.bench import ops as bench_ops
from mlaref.codegen.bench import peak as bench_peak
from mlaref.codegen.bench import peers as bench_peers
from mlaref.codegen.bench import throughput
from mlaref.codegen.cuda import build as cuda_build
from mlaref.codegen.cuda import check as cuda_check
from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import ggml as ggml_peer
from mlaref.codegen.report.progress import Progress
from mlaref.codegen.report.schema import quantity

__all__ = ["MLA_REFERENCE", "section_cpu", "section_build", "section_bench_kernels", "section_bench_ops",
           "section_bench_types", "section_bench_peers", "section_cuda", "section_mla"]

# The MLA benchmark's shapes when the kernels cannot run (the reference back-end).
MLA_REFERENCE = {"n_kv": (256, 512), "T": 32, "kv_chunk": 256}


# ----------------------------------------------------------------------------------------------------------
# cpu
# ----------------------------------------------------------------------------------------------------------
def section_cpu() -> dict:
    """The ``cpu`` section: what this machine is and which ISA tokens it runs."""
    isas = {}
    for info in isa_mod.ISAS.values():
        miss = cpu.missing(info.token)
        isas[info.token] = {"found": not miss, "missing": list(miss), "features": list(info.features),
                            "arch": info.arch}
    try:
        order = dispatch.candidates()
    except Exception as exc:  # a bad MLAREF_ISA must not stop the report
        order = []
        isas["_dispatch_error"] = {"found": False, "missing": [str(exc)], "features": [], "arch": ""}
    return {
        "status": "ok",
        "arch": isa_mod.host_arch(),
        "model": bench.cpu_model(),
        "logical_cpus": os.cpu_count() or 1,
        "compiler": build.compiler_version(),
        "isas": isas,
        "dispatch_order": order,
        "fma_peak": _fma_peak(),
        "overrides": {k: os.environ.get(k) for k in ("MLAREF_ISA", "MLAREF_DISABLE_ISA") if os.environ.get(k)},
    }


def _fma_peak() -> dict:
    """The FMA peak at 1 thread and at every logical CPU (GFLOP/s quantities), or why it was not measured."""
    if bench_peak.peak_isa() is None:
        return {"status": "skipped", "reason": "no x86 FMA ISA on this CPU"}
    out = {"status": "ok"}
    for n in sorted({1, os.cpu_count() or 1}):
        p = bench_peak.fma_peak(n)
        out[f"threads_{n}"] = quantity(p["gflops"], "GFLOP/s", f"{p['isa']}: {p['method']}")
    return out


# ----------------------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------------------
def _isa_skip_reason(token: str) -> str | None:
    """Why kernels of ``token`` cannot be built and run in this process (None when they can)."""
    info = isa_mod.get(token)
    if info.cross:
        qemu = build.cross_tools_missing(info.arch)
        where = ("pytest tests/kernels/test_neon.py checks them under qemu here" if qemu is None
                 else f"their qemu check needs a cross toolchain: {qemu}")
        return f"{info.arch} kernels do not run in this {isa_mod.host_arch()} process ({where})"
    miss = cpu.missing(token)
    if miss:
        return f"this CPU lacks {', '.join(miss)}"
    return None


def _build_one(family: str, isa: str) -> tuple[str, str, float]:
    """Build (or find in the cache) one module; runs in a worker process. Returns (status, reason, seconds)."""
    t0 = time.perf_counter()
    try:
        build.load(family, isa)
        return "ok", "", time.perf_counter() - t0
    except Exception as exc:  # BuildError, or a missing compiler: recorded per module
        return "failed", f"{type(exc).__name__}: {exc}"[:4000], time.perf_counter() - t0


def section_build(show: bool, workers: int | None = None) -> dict:
    """Build every runnable (family, ISA) module, ``workers`` processes at a time (default: one per CPU).

    The compiler runs in worker processes (build.py redirects the process's stdout/stderr around a compile, so
    one process must not compile two modules at once); they leave the modules in the cache, and this process
    then imports them from there (``build.load`` on a cache hit only imports).
    """
    jobs = sorted({(s.family, s.isa) for s in catalog.catalog()})
    modules = {}
    todo = []
    for family, isa in jobs:
        entry = {"family": family, "isa": isa,
                 "kernels": sum(1 for s in catalog.catalog() if (s.family, s.isa) == (family, isa))}
        reason = _isa_skip_reason(isa)
        if reason:
            entry.update(status="skipped", reason=reason)
        else:
            todo.append((family, isa))
        modules[(family, isa)] = entry
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = Progress("build", len(todo), show)
    results = {}
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futs = {pool.submit(_build_one, f, i): (f, i) for f, i in todo}
            for k, fut in enumerate(concurrent.futures.as_completed(futs), 1):
                key = futs[fut]
                try:
                    results[key] = fut.result()
                except Exception as exc:  # a crashed worker: that module is reported failed
                    results[key] = ("failed", f"worker: {type(exc).__name__}: {exc}", 0.0)
                bar(k, f"{key[0]} {key[1]}")
    for k, key in enumerate(todo, 1):
        if key not in results or results[key][0] == "ok":
            t_parent = _build_one(*key)  # import from the cache (or build here, single-worker mode)
            prev = results.get(key, ("ok", "", 0.0))
            results[key] = (t_parent[0], t_parent[1], prev[2] + t_parent[2])
        if workers == 1:
            bar(k, f"{key[0]} {key[1]}")
    bar.close()
    for key, (status, reason, secs) in results.items():
        modules[key]["status"] = status
        if reason:
            modules[key]["reason"] = reason
        modules[key]["seconds"] = quantity(secs, "s", "wall clock of build.load in a worker process plus the "
                                                      "import here (a cache hit only imports the module)")
    out = [modules[k] for k in jobs]
    failed = [m for m in out if m["status"] == "failed"]
    return {"status": "failed" if failed else "ok", "cache_dir": str(build.cache_dir()), "modules": out,
            "workers": workers, "compile_flags": list(build.COMMON_CFLAGS)}


# ----------------------------------------------------------------------------------------------------------
# benchmarks
# ----------------------------------------------------------------------------------------------------------
def section_bench_kernels(cfg: dict, show: bool) -> dict:
    """The ``bench_kernels`` section: quantize / dequantize MB/s of the kernel, the reference and ggml."""
    if show:
        print("bench kernels ...", file=sys.stderr, flush=True)
    r = throughput.bench_kernels(types=cfg["bench_types"], size_mb=cfg["bench_mb"], repeats=cfg["bench_repeats"])
    r["status"] = "ok"
    return r


def section_bench_ops(cfg: dict) -> dict:
    """The ``bench_ops`` section: one MLA layer's ops at small shapes, reference vs kernels vs ggml."""
    r = bench_ops.bench_ops(repeats=cfg["bench_repeats"])
    r["status"] = "ok"
    return r


def section_bench_types(cfg: dict, show: bool) -> dict:
    """The ``bench_types`` section: the reference against gguf-py, MB/s and same bytes."""
    if show:
        print("bench types (reference vs gguf-py) ...", file=sys.stderr, flush=True)
    fmts = list(cfg["bench_types"]) if cfg["bench_types"] else None
    r = bench.bench_types(size_mb=cfg["bench_mb"], repeats=max(5, cfg["bench_repeats"]), formats=fmts)
    r["status"] = "ok"
    return r


def section_bench_peers(cfg: dict, show: bool, n_threads: int | None) -> dict:
    """The ``bench_peers`` section: mlaref's mul_mat and flash attention against each cached peer build."""
    peers = [p for p in bench_peers.PEERS if peer_build.built("native", p)]
    missing = [p for p in bench_peers.PEERS if p not in peers]
    if not peers:
        return {"status": "skipped", "reason": "no peer build cached; build them with "
                + " and ".join(f"`mlaref peer build {p}`" for p in missing)}
    if show:
        print(f"bench peers ({', '.join(peers)}) ...", file=sys.stderr, flush=True)
    threads = tuple(sorted({1, n_threads or os.cpu_count() or 1}))
    r = bench_peers.bench_peers(n_kvs=cfg["peers_n_kv"], threads=threads, peers=tuple(peers),
                                repeats=cfg["bench_repeats"])
    rows = []
    for row in r["rows"]:
        m = "median of interleaved rounds, " + row["case"]
        out = {"case": row["case"], "n_kv": row["n_kv"], "threads": row["threads"],
               "peak": quantity(row["peak_gflops"], "GFLOP/s", "the FMA loop's median rate at this thread count, timed in the row's rounds"),
               "contenders": {}}
        for who in ("mlaref", *(p for p in peers if f"{p}_unsupported" not in row)):
            out["contenders"][who] = {
                "seconds": quantity(row[f"{who}_s"], "s", m),
                "gflops": quantity(row[f"{who}_gflops"], "GFLOP/s", "2 flops per multiply-add of the math"),
                "peak_fraction": quantity(row[f"{who}_peak_frac"], "1", "GFLOP/s over the FMA peak"),
            }
        for p in peers:
            if f"{p}_unsupported" in row:
                out["contenders"][p] = {"unsupported": row[f"{p}_unsupported"]}
                continue
            out["contenders"][p]["mlaref_speed_ratio"] = quantity(
                row[f"{p}_ratio"], "1", "the peer's median seconds over mlaref's (> 1: mlaref faster)")
            out["contenders"][p]["nmse_vs_mlaref"] = quantity(row[f"{p}_nmse"], "1", "NMSE of the outputs")
        rows.append(out)
    return {"status": "ok", "peers": peers, "not_built": missing, "rows": rows, "table": bench_peers.format_table(r),
            "environment": r["environment"]}


def section_mla(backend: str, cfg: dict, show: bool, n_threads: int | None) -> dict:
    """The ``mla`` (``backend="kernels"``) or ``mla_ggml`` (``"ggml"``) section: the seed's speed claim per layer.

    Where mlaref's mul_mat / flash_attn_ext kernels cannot run, ``mla`` runs the NumPy reference at reduced
    shapes (:data:`MLA_REFERENCE`) and says so in its ``note``; without ggml-python ``mla_ggml`` is skipped.
    """
    if backend == "ggml":
        if not ggml_peer.available():
            return {"status": "skipped", "reason": ggml_peer.unavailable_reason()}
        kw = {"n_kv": cfg["mla_n_kv"], "backend": "ggml"}
        why_not = ""
    else:
        why_not = bench_mla.kernels_available()
        if why_not is None:
            kw = {"n_kv": cfg["mla_n_kv"], "backend": "kernels"}
        else:
            # The NumPy reference is far too slow for the real shapes: T 32, 2 heads, two chunks at n_kv 512.
            kw = {"n_kv": MLA_REFERENCE["n_kv"], "T": MLA_REFERENCE["T"], "kv_chunk": MLA_REFERENCE["kv_chunk"],
                  "backend": "reference"}
    bar = Progress(f"bench mla {kw['backend']}", len(kw["n_kv"]), show)
    r = bench_mla.run_mla(repeats=cfg["mla_repeats"], n_threads=n_threads,
                          progress=lambda d, t, label: bar(d, label), **kw)
    bar.close()
    r["status"] = "ok"
    if r["backend"] == "reference":
        r["note"] = (f"the generated mul_mat / flash_attn_ext kernels cannot run here ({why_not}): the seed's "
                     "speed claim was not measured with them; the reference back-end ran at reduced shapes to "
                     "exercise the pipeline")
    return r


# ----------------------------------------------------------------------------------------------------------
# cuda
# ----------------------------------------------------------------------------------------------------------
def section_cuda(cfg: dict, show: bool) -> dict:
    """The ``cuda`` section: the CUDA target built with nvcc; on a GPU, checked bit for bit and (full mode) timed."""
    def log(msg: str) -> None:
        if show:
            print(f"cuda: {msg}", file=sys.stderr, flush=True)

    built = cuda_check.build_step(log, max(1, os.cpu_count() or 1))
    if built["nvcc"] is None:
        return {"status": "skipped", "reason": "nvcc not found (PATH or /usr/local/cuda/bin): the CUDA kernels "
                                               "were not compiled"}
    out = {"status": "ok", "build": built, "gpu": cuda_build.gpu_status()}
    if not built["ok"]:
        out["runs"] = {"status": "skipped", "reason": "a CUDA library failed to build"}
    elif not cuda_build.gpu_present():
        out["runs"] = {"status": "skipped", "reason": out["gpu"] + "; the kernels were compiled, not run"}
    else:
        out["runs"] = {"status": "ok", "correctness": cuda_check.correctness_step(log)}
        if cfg["mla_repeats"] > 1:  # the full and quick modes; tiny (tests) checks bytes only
            out["runs"]["timing"] = cuda_check.timing_step(log, 5, 8192, 128)
    return out
