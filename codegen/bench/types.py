"""`mlaref bench types`: the NumPy reference's quantize / dequantize against gguf-py, per block format.

It measures, for every block format registered in :mod:`mlaref.reference` and both
directions, mlaref's NumPy reference (``quantize(x, name)`` with the ``ref`` variant, ``dequantize``) and
gguf-py (``gguf.quants.quantize`` / ``dequantize`` with ``GGMLQuantizationType[name.upper()]``) where gguf-py
implements that format and direction; elsewhere the cell says n/a and why. It also says whether the two
produced the same bytes (quantize) or the same float32 bits (dequantize). Timing: :mod:`.method`.
"""


from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mlaref import reference
from mlaref.codegen.bench.method import MB, Timing, environment, measure_interleaved


# ----------------------------------------------------------------------------------------------------------
# bench types
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One contender on one (format, direction): a Timing, or n/a with the reason."""

    impl: str
    timing: Timing | None = None
    reason: str = ""
    result: np.ndarray | None = field(default=None, repr=False)
    fn: Callable[[], object] | None = field(default=None, repr=False)


def _row_length(block_size: int, target: int = 4096) -> int:
    return block_size * max(1, math.ceil(target / block_size))


def _gguf_qtype(name: str):
    try:
        import gguf  # noqa: PLC0415
    except ImportError as exc:
        return None, f"gguf-py not importable ({exc})"
    try:
        return gguf.GGMLQuantizationType[name.upper()], ""
    except KeyError:
        return None, f"gguf-py has no type {name.upper()}"


def _bench_format(fmt, size_mb: float, repeats: int, rng: np.random.Generator) -> list[dict]:
    from gguf import quants as gq  # noqa: PLC0415

    n = _row_length(fmt.block_size)
    n_rows = max(1, round(size_mb * MB / 4 / n))
    x = rng.standard_normal((n_rows, n)).astype(np.float32)
    nbytes = x.nbytes
    qtype, why = _gguf_qtype(fmt.name)
    rows = []

    # quantize: the ggml reference routine where the format has one (what gguf-py reproduces), else the
    # format's first variant
    variant = "ref" if "ref" in fmt.variants else next(iter(fmt.variants), None)
    if variant is None:
        ours = Cell("mlaref", reason="no quantize variant")
    else:
        ours = _try("mlaref", lambda: reference.quantize(x, fmt.name, variant=variant))
    theirs = _try_gguf(lambda: gq.quantize(x, qtype), qtype, why, "quantize")
    _time(ours, theirs, repeats=repeats)
    rows.append(_row(fmt.name, "quantize", nbytes, ours, theirs))
    rows[-1]["mlaref_variant"] = variant

    # dequantize: the same bytes for both (ours if we can quantize, else valid random blocks)
    if ours.result is not None:
        data = np.ascontiguousarray(ours.result)
    else:
        data = fmt.random_blocks(rng, n_rows * n // fmt.block_size).view(np.uint8).reshape(n_rows, -1)
    ours = _try("mlaref", lambda: reference.dequantize(data, fmt.name))
    theirs = _try_gguf(lambda: gq.dequantize(data, qtype), qtype, why, "dequantize")
    _time(ours, theirs, repeats=repeats)
    rows.append(_row(fmt.name, "dequantize", nbytes, ours, theirs))
    return rows


def _try(impl: str, fn) -> Cell:
    """The warm-up call: keeps the result (for the same-result check) and the function if it worked."""
    try:
        result = fn()
    except NotImplementedError as exc:
        return Cell(impl, reason=f"not implemented ({exc})")
    except Exception as exc:  # one broken cell must not hide the others; the reason names the failure
        return Cell(impl, reason=f"error: {type(exc).__name__}: {exc}")
    return Cell(impl, result=np.asarray(result), fn=fn)


def _try_gguf(fn, qtype, why: str, direction: str) -> Cell:
    if qtype is None:
        return Cell("gguf-py", reason=why)
    if qtype.name == "F32":
        # gguf.quants passes F32 through (astype(copy=False) / view): no work, so no rate to compare.
        return Cell("gguf-py", reason="gguf-py returns F32 data as is (a view, no conversion to time)")
    cell = _try("gguf-py", fn)
    if cell.fn is None and cell.reason.startswith("not implemented"):
        cell.reason = f"gguf-py does not {direction} {qtype.name}"
    return cell


def _time(*cells: Cell, repeats: int) -> None:
    """Timed runs of the cells that worked, interleaved; their warm-up was the ``_try`` call."""
    live = {c.impl: c for c in cells if c.fn is not None}
    timings = measure_interleaved({k: c.fn for k, c in live.items()}, repeats=repeats, warmup=0)
    for k, c in live.items():
        c.timing = Timing(timings[k].seconds, 1)


def _same(a: Cell, b: Cell) -> bool | None:
    if a.result is None or b.result is None:
        return None
    # Compare bytes: gguf-py's F16 "quantize" returns float16 values where mlaref returns their bytes.
    x, y = (np.ascontiguousarray(r) for r in (a.result, b.result))
    if x.shape[:-1] != y.shape[:-1] or x.nbytes != y.nbytes:
        return False
    return bool(np.array_equal(x.view(np.uint8).reshape(-1), y.view(np.uint8).reshape(-1)))


def _row(name: str, direction: str, nbytes: int, ours: Cell, theirs: Cell) -> dict:
    def cell(c: Cell) -> dict:
        if c.timing is None:
            return {"status": "n/a", "reason": c.reason}
        return {"status": "ok", "throughput": c.timing.throughput(nbytes), "seconds": c.timing.to_json()}

    row = {"format": name, "direction": direction, "float32_bytes": nbytes,
           "mlaref": cell(ours), "gguf-py": cell(theirs)}
    if ours.timing is not None and theirs.timing is not None:
        row["ratio_ours_over_gguf"] = {
            "value": theirs.timing.median / ours.timing.median,
            "unit": "1",
            "method": "median MB/s of mlaref / median MB/s of gguf-py (> 1: mlaref faster)",
        }
    row["same_result"] = {
        "value": _same(ours, theirs),
        "method": "quantize: equal bytes; dequantize: equal float32 bits; null when one side is n/a",
    }
    return row


def bench_types(*, size_mb: float = 4.0, repeats: int = 5, formats: list[str] | None = None, seed: int = 0) -> dict:
    """Run the types benchmark and return the machine-readable result (see ``--json``)."""

    registered = reference.registry()
    names = sorted(registered) if not formats else formats
    unknown = [f for f in names if f not in registered]
    if unknown:
        raise ValueError(
            f"bench types: unknown format(s) {', '.join(unknown)}; registered: {', '.join(sorted(registered))}"
        )
    if repeats < 5:
        raise ValueError(f"bench types: --repeats must be >= 5 (the median of fewer is not stable), got {repeats}")
    if not size_mb > 0:
        raise ValueError(f"bench types: --size-mb must be > 0, got {size_mb}")
    rng = np.random.default_rng(seed)
    rows = []
    for name in names:
        rows.extend(_bench_format(registered[name], size_mb, repeats, rng))
    return {
        "benchmark": "mlaref bench types",
        "method": {
            "timer": "time.perf_counter, wall clock, one call per run; mlaref and gguf-py runs alternate "
                     "(order shuffled each round, seeded; see round_orders)",
            "warmup": 1,
            "repeats": repeats,
            "statistic": "median (min and max of the repeats also given)",
            "throughput_unit": "MB/s of float32 data (quantize: input; dequantize: output); MB = 10^6 bytes",
            "data": f"standard normal float32 from numpy default_rng({seed}), about {size_mb} MB per format, rows of "
                    "4096 values (rounded up to a whole number of blocks); dequantize reads the bytes mlaref's "
                    "quantize wrote (or valid random blocks for a format without a quantizer)",
            "mlaref": "mlaref.reference.quantize(x, name, variant='ref') (or the format's only variant, named in "
                      "each result's mlaref_variant) / dequantize(data, name)",
            "gguf-py": "gguf.quants.quantize(x, qtype) / dequantize(data, qtype), "
                       "qtype = GGMLQuantizationType[name.upper()]",
        },
        "environment": environment(),
        "results": rows,
    }


def format_table(result: dict) -> str:
    """The result as a fixed-width text table."""

    def rate(c: dict) -> str:
        if c["status"] != "ok":
            return "n/a"
        t = c["throughput"]
        return f"{t['median']:8.1f} [{t['min']:.1f}-{t['max']:.1f}]"

    head = ("format", "direction", "mlaref MB/s med [min-max]", "gguf-py MB/s med [min-max]", "ours/gguf", "same")
    lines = []
    for r in result["results"]:
        ratio = r.get("ratio_ours_over_gguf")
        same = r["same_result"]["value"]
        lines.append((
            r["format"], r["direction"], rate(r["mlaref"]), rate(r["gguf-py"]),
            f"{ratio['value']:.2f}" if ratio else "n/a",
            {True: "yes", False: "NO", None: "-"}[same],
        ))
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in lines]
    m = result["method"]
    out.append("")
    out.append(f"{m['throughput_unit']}; {m['statistic']} of {m['repeats']} runs after {m['warmup']} warm-up.")
    for impl in ("mlaref", "gguf-py"):
        reasons = sorted({f"{r['format']} {r['direction']}: {r[impl]['reason']}"
                          for r in result["results"] if r[impl]["status"] != "ok"})
        out += [f"n/a  {impl}, {s}" for s in reasons]
    return "\n".join(out)


