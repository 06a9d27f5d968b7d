"""This CPU's measured FMA peak: the yardstick of "fraction of peak" in the benchmarks and ``mlaref info``.

:func:`fma_peak` runs ``codegen/bench/fma_peak.c`` (12 independent FMA chains in the widest vector registers of
an ISA this CPU has; nothing else in the loop) on ``n_threads`` threads at once and returns the best rate of
``rounds`` tries in GFLOP/s, counting 2 flops per lane per FMA, the way the benchmarks count a multiply-add of the
math. One try lasts about ``seconds``; the best (not the median) is the peak, because every disturbance only
slows a try down. The threads are Python threads calling into C with the GIL released (cffi does), started
together at a barrier; the rate is their total work over the wall time of the slowest.

What it is not: a spec sheet number. A VM's clock, turbo and a neighbour's load all show in it, which is what a
fraction of peak measured on the same machine in the same minute should divide by. A kernel's GFLOP/s over this
number is its fraction of what this core's FMA units can do at all.
"""

from __future__ import annotations

import functools
import pathlib
import threading
import time

from mlaref.codegen import build, cpu
from mlaref.codegen import isa as _isa

__all__ = ["LANES", "peak_isa", "fma_peak", "fma_seconds", "fma_yardstick", "describe"]

SOURCE = pathlib.Path(__file__).resolve().parent / "fma_peak.c"
_CDEF = "float mla_fma_peak_avx2(int64_t iters);\nfloat mla_fma_peak_avx512(int64_t iters);\n"
ACC = 12  # independent chains per round (fma_peak.c)
LANES = {"avx2": 8, "avx512": 16}  # f32 lanes of one FMA


@functools.cache
def _module():
    return build.load_runtime("fma_peak", SOURCE, _CDEF)


def peak_isa() -> str | None:
    """The widest FMA ISA this CPU runs (``avx512``, ``avx2``), or None (no x86 FMA: no peak is measured)."""
    if _isa.host_arch() != "x86_64":
        return None
    for token in ("avx512", "avx2"):
        if not cpu.missing(token):
            return token
    return None


def _run(fn, iters: int, n_threads: int) -> float:
    """Wall seconds of ``n_threads`` concurrent calls ``fn(iters)``."""
    if n_threads == 1:
        t0 = time.perf_counter()
        fn(iters)
        return time.perf_counter() - t0
    barrier = threading.Barrier(n_threads + 1)
    ends = [0.0] * n_threads

    def work(k):
        barrier.wait()
        fn(iters)
        ends[k] = time.perf_counter()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return max(ends) - t0


def fma_seconds(iters: int, n_threads: int = 1) -> float | None:
    """Wall seconds of ``iters`` rounds of the FMA loop on each of ``n_threads`` threads at once (None: no FMA ISA
    here): a fixed amount of pure core work, the noise yardstick ``mlaref bench mla --backend arena`` times in
    its rounds."""
    token = peak_isa()
    if token is None:
        return None
    return _run(getattr(_module().lib, f"mla_fma_peak_{token}"), iters, n_threads)


def _calibrate(fn, seconds: float) -> int:
    """FMA-loop rounds that take about ``seconds`` on one thread."""
    iters = 1 << 16
    while _run(fn, iters, 1) < seconds / 4 and iters < 1 << 34:
        iters <<= 1
    return max(1, int(iters * seconds / max(_run(fn, iters, 1), 1e-9)))


def _loop(n_threads: int, seconds: float):
    """(token, the loop's rounds per thread, run) for the widest FMA ISA here, or None."""
    if not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive int, got {n_threads!r}")
    token = peak_isa()
    if token is None:
        return None
    fn = getattr(_module().lib, f"mla_fma_peak_{token}")
    iters = _calibrate(fn, seconds)
    return token, iters, (lambda: _run(fn, iters, n_threads))


def _gflops(token: str, iters: int, n_threads: int, s: float) -> float:
    return 2 * LANES[token] * ACC * iters * n_threads / s * 1e-9


def fma_yardstick(n_threads: int = 1, *, seconds: float = 0.05):
    """The FMA loop as a contender of an interleaved benchmark: ``(run, gflops)`` where ``run()`` runs a fixed
    amount of it on ``n_threads`` threads and returns the wall seconds, and ``gflops(s)`` turns seconds of such a
    run into GFLOP/s. The median of its runs in the rounds is the FMA rate this CPU gave in the same minutes as the
    other contenders, measured as they are (the median, not the best); None where no FMA ISA runs."""
    loop = _loop(n_threads, seconds)
    if loop is None:
        return None
    token, iters, run = loop
    return run, (lambda s: _gflops(token, iters, n_threads, s))


def fma_peak(n_threads: int = 1, *, seconds: float = 0.05, rounds: int = 5) -> dict | None:
    """``{"isa", "lanes", "threads", "gflops", "gflops_per_thread", "method"}`` or None where no FMA ISA runs."""
    loop = _loop(n_threads, seconds)
    if loop is None:
        return None
    token, iters, run = loop
    gflops = _gflops(token, iters, n_threads, min(run() for _ in range(rounds)))
    return {"isa": token, "lanes": LANES[token], "threads": n_threads, "gflops": gflops,
            "gflops_per_thread": gflops / n_threads,
            "method": f"best of {rounds} tries of {ACC} independent {LANES[token]}-lane FMA chains, "
                      f"{iters} rounds per thread, 2 flops per lane per FMA"}


def describe(n_threads=(1, 2)) -> str:
    """One line for ``mlaref info``: the peak per thread count, or why none was measured."""
    token = peak_isa()
    if token is None:
        return "FMA peak    not measured (no x86 FMA ISA on this CPU)"
    try:
        parts = [f"{p['gflops']:.1f} GFLOP/s at {p['threads']} thread{'s' if p['threads'] > 1 else ''}"
                 for p in (fma_peak(n) for n in n_threads)]
    except build.BuildError as exc:
        return f"FMA peak    not measured ({str(exc).splitlines()[0][:120]})"
    return f"FMA peak    {', '.join(parts)} ({token}, {LANES[token]} f32 lanes, measured now)"
