"""Quantize / dequantize throughput per block format: the dispatched C kernel vs the NumPy reference vs upstream ggml.

The ``bench_kernels`` section of ``mlaref report``. For each format and direction, MB/s of float32 data (quantize:
its input; dequantize: its output; MB = 10^6 B) of three contenders on the same rows:

``kernel``
    the dispatched mlaref kernel through :mod:`mlaref.codegen.kernels` (``quantize`` with the ``ref`` variant,
    ``dequantize``);
``reference``
    the NumPy reference, :mod:`mlaref.reference` (same variant, same bytes);
``ggml``
    upstream ggml through ggml-python (:mod:`mlaref.codegen.peers.ggml`: ``quantize_row_<type>_ref`` and
    ``to_float``), each called once on the whole buffer (the rows are whole blocks).

One thread each, timed interleaved (:func:`mlaref.codegen.bench.method.measure_interleaved`). A contender that
cannot run here is ``n/a`` with the reason. :mod:`mlaref.codegen.bench.kernels` (``mlaref bench kernels``) is the
per-kernel, per-thread-count comparison.
"""

from __future__ import annotations

import numpy as np

from mlaref import reference
from mlaref.codegen import catalog
from mlaref.codegen import kernels as K
from mlaref.codegen.bench.method import environment, measure_interleaved, runnable
from mlaref.codegen.peers import ggml as ggml_peer

__all__ = ["bench_kernels", "format_table"]

CONTENDERS = ("kernel", "reference", "ggml")


def _speedup(num: float, den: float, method: str) -> dict:
    return {"value": num / den, "unit": "1", "method": method}


def bench_kernels(*, types=None, size_mb: float = 4.0, repeats: int = 5, seed: int = 0) -> dict:
    """MB/s of float32 data: the dispatched C kernel vs the NumPy reference vs upstream ggml, per format/direction.

    Quantize uses the ``ref`` variant for all three (ggml: ``quantize_row_<type>_ref``); dequantize reads the same
    bytes in all three (ggml: ``to_float``); ggml's row functions are called once on the whole buffer (the rows
    are whole blocks). One thread each. (codegen/bench/kernels.py's ``compare_kernels`` is the per-kernel,
    per-thread-count comparison of ``mlaref bench kernels``.)
    """
    dq = [t for t in catalog.DEQUANT_TYPES if t in reference.registry()]
    names = list(types) if types else dq
    rng = np.random.default_rng(seed)
    rows = []
    for t in names:
        fmt = reference.get_type(t)
        n = fmt.block_size * max(1, 4096 // fmt.block_size)
        n_rows = max(1, round(size_mb * 1e6 / 4 / n))
        x = rng.standard_normal((n_rows, n)).astype(np.float32)
        nbytes = x.nbytes
        q_variant = "ref" if "ref" in fmt.variants else next(iter(fmt.variants))
        data = reference.quantize(x, t, variant=q_variant)
        for direction in ("quantize", "dequantize"):
            rows.append(_row(t, fmt, direction, x, data, n_rows * n, nbytes, repeats))
    return {
        "benchmark": "mlaref bench kernels",
        "method": {"timer": "time.perf_counter, one call per run; contenders interleaved, order shuffled each round", "warmup": 1,
                   "repeats": repeats, "statistic": "median (min and max also given)",
                   "throughput_unit": "MB/s of float32 data (quantize: input; dequantize: output); MB = 10^6 B",
                   "threads": 1,
                   "data": f"standard normal float32 rows of ~4096 values, about {size_mb} MB per format"},
        "environment": environment(),
        "results": rows,
    }


def _row(t: str, fmt, direction: str, x: np.ndarray, data: np.ndarray, n_values: int, nbytes: int,
         repeats: int) -> dict:
    """One (format, direction) row: each contender timed, or n/a with the reason."""
    fns, reasons = {}, {}
    if direction == "quantize":
        if "ref" not in catalog.QUANT_VARIANTS.get(t, {}):
            reasons["kernel"] = f"no quantize_row kernel with the ref variant for {t}"
        else:
            fns["kernel"] = lambda: K.quantize(x, t, variant="ref")
        if "ref" in fmt.variants:
            fns["reference"] = lambda: reference.quantize(x, t, variant="ref")
        else:
            reasons["reference"] = f"the reference {t} has no ref variant"
        # one C call over the whole buffer (rows are whole blocks), not one ctypes call per row
        peer = (lambda: ggml_peer.from_float_ref(t, x.reshape(1, -1)))
    else:
        fns["kernel"] = lambda: K.dequantize(data, t)
        fns["reference"] = lambda: reference.dequantize(data, t)
        peer = (lambda: ggml_peer.to_float(t, data.reshape(1, -1), n_values))
    if not ggml_peer.available():
        reasons["ggml"] = ggml_peer.unavailable_reason()
    else:
        fns["ggml"] = peer
    live, why = runnable(fns)
    reasons.update(why)
    timings = measure_interleaved(live, repeats=repeats, warmup=0) if live else {}
    row = {"format": t, "direction": direction, "float32_bytes": nbytes}
    for k in CONTENDERS:
        if k in timings:
            row[k] = {"status": "ok", "throughput": timings[k].throughput(nbytes), "seconds": timings[k].to_json()}
        else:
            row[k] = {"status": "n/a", "reason": reasons.get(k, "not run")}
    if "kernel" in timings:
        fam = "quantize_row" if direction == "quantize" else "dequantize_row"
        try:
            row["kernel_name"] = K.resolve(fam, t, None, "ref")[0].name
        except Exception:  # the name is informative only
            pass
        for other in ("reference", "ggml"):
            if other in timings:
                row[f"speedup_kernel_over_{other}"] = _speedup(
                    timings[other].median, timings["kernel"].median,
                    f"median time of {other} / median time of the kernel (> 1: kernel faster)")
    return row


def format_table(result: dict) -> str:
    """The result of :func:`bench_kernels` as a fixed-width text table (medians)."""
    def rate(c):
        if c["status"] != "ok":
            return "n/a"
        return f"{c['throughput']['median']:.0f}"

    head = ("format", "direction", "kernel MB/s", "reference MB/s", "ggml MB/s", "kernel/ref", "kernel/ggml")
    lines = []
    for r in result["results"]:
        lines.append((r["format"], r["direction"], rate(r["kernel"]), rate(r["reference"]), rate(r["ggml"]),
                      f"{r['speedup_kernel_over_reference']['value']:.1f}" if "speedup_kernel_over_reference" in r
                      else "n/a",
                      f"{r['speedup_kernel_over_ggml']['value']:.2f}" if "speedup_kernel_over_ggml" in r else "n/a"))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*x) for x in lines)]
    out.append(f"\n{result['method']['throughput_unit']}; median of {result['method']['repeats']}; 1 thread")
    return "\n".join(out)
