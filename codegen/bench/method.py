"""`mlaref bench`: timing helpers and the benchmarks: types here; kernels, ops and mla in their modules.

Method, shared by every benchmark (the perf mode of ggml's ``test-backend-ops`` is the model): run the call
once or more to warm up (imports, caches, page faults), then ``repeats`` timed runs with
``time.perf_counter``; report the median and the min and max of the repeats. Throughput is bytes of float32
data per second, in MB/s with MB = 10^6 bytes, so a quantize and a dequantize of the same tensor are
comparable. The contenders run in the same process on the same data, and their timed runs alternate
(``measure_interleaved``) so that a busy spell of the machine does not land on one of them only. The order
within each round is shuffled (``round_orders``): a run finds the caches as the run before it left them, and
a fixed order would always hand one contender the leftovers of the same other one.

``mlaref bench types`` measures, for every block format registered in :mod:`mlaref.reference` and both
directions, mlaref's NumPy reference (``quantize(x, name)`` with the ``ref`` variant, ``dequantize``) and
gguf-py (``gguf.quants.quantize`` / ``dequantize`` with ``GGMLQuantizationType[name.upper()]``) where gguf-py
implements that format and direction; elsewhere the cell says n/a and why. It also says whether the two
produced the same bytes (quantize) or the same float32 bits (dequantize).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

MB = 1_000_000  # bytes; throughput is reported in MB/s with this MB


# ----------------------------------------------------------------------------------------------------------
# The reusable timing helper
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of ``repeats`` timed calls made after ``warmup`` untimed ones."""

    seconds: tuple[float, ...]
    warmup: int

    @property
    def repeats(self) -> int:
        return len(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    @property
    def method(self) -> str:
        return f"median of {self.repeats} timed runs (time.perf_counter) after {self.warmup} warm-up run(s)"

    def throughput(self, nbytes: int) -> dict:
        """MB/s for ``nbytes`` processed per call: median, and min/max (from the slowest/fastest run)."""
        return {
            "median": nbytes / self.median / MB,
            "min": nbytes / self.max / MB,
            "max": nbytes / self.min / MB,
            "unit": "MB/s",
            "method": self.method + f"; {nbytes} bytes of float32 per run; MB = 10^6 bytes",
        }

    def to_json(self) -> dict:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "all": list(self.seconds),
            "unit": "s",
            "method": self.method,
        }


def measure(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (each timed alone)."""
    if repeats < 1:
        raise ValueError(f"measure: repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"measure: warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return Timing(tuple(seconds), warmup)


def round_orders(names, repeats: int, seed: int = 0) -> list[list]:
    """The order of the contenders ``names`` in each of ``repeats`` rounds of an interleaved benchmark.

    Each round is a permutation, shuffled with a fixed seed (so a run is reproducible), and a round never
    starts with the contender that ended the round before: no contender runs twice in a row. A run finds the
    caches as the previous run left them (measured here: putting ggml's dequantize right after the NumPy
    reference instead of after the kernel moved the kernel/ggml ratio by 6-11 %), so with a fixed order one
    contender would always inherit the same other one's leftovers.
    """
    names = list(names)
    rng = random.Random(seed)
    orders: list[list] = []
    for _ in range(repeats):
        order = names[:]
        rng.shuffle(order)
        if orders and len(order) > 1 and order[0] == orders[-1][-1]:
            order = order[1:] + order[:1]
        orders.append(order)
    return orders


def measure_interleaved(
    fns: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, Timing]:
    """Time several contenders fairly: warm each up, then ``repeats`` rounds in which each runs once.

    On a shared or throttling machine, alternating spreads slow periods over every contender instead of
    letting one contender's block of runs absorb them; the order within a round comes from ``round_orders``.
    """
    if repeats < 1:
        raise ValueError(f"measure_interleaved: repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"measure_interleaved: warmup must be >= 0, got {warmup}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for order in round_orders(fns, repeats):
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            seconds[name].append(time.perf_counter() - t0)
    return {name: Timing(tuple(v), warmup) for name, v in seconds.items()}


def environment() -> dict:
    """Versions and machine, recorded with every benchmark result."""
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_model(),
    }
    try:
        from importlib.metadata import version  # noqa: PLC0415

        env["gguf"] = version("gguf")
        env["mlaref"] = version("mlaref")
    except Exception:  # metadata absent in an uninstalled tree
        pass
    return env


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
    from mlaref import reference  # noqa: PLC0415
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
    from mlaref import reference  # noqa: PLC0415

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


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
_PENDING: dict[str, str] = {}

# The other benchmarks live in their own modules: name -> (module, configure, run, help). Each module's
# ``configure(parser)`` adds the options and ``run(args) -> int`` prints the table (and writes --json).
_EXTERNAL = {
    "kernels": ("mlaref.codegen.bench.method", "_configure_kernels", "_run_kernels",
                "generated C kernels by name, and each family against the reference and ggml (bench_kernels.py)"),
    "ops": ("mlaref.codegen.report.builder", "configure_bench_ops", "run_bench_ops",
            "one MLA layer's ops at small shapes: reference vs kernels vs ggml"),
    "mla": ("mlaref.codegen.bench.mla", "configure", "run",
            "the FlashMLA-2 prompt-processing layer (K/V build + attention), f32 vs direct (PR #253) vs chunked"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    p = sub.add_parser(
        "types",
        help="quantize/dequantize MB/s per block format: mlaref reference vs gguf-py",
        description="For every registered block format and both directions, MB/s of float32 data for mlaref's "
                    "NumPy reference and for gguf-py (where it implements the format), median [min-max] of the "
                    "timed runs after a warm-up, their ratio, and whether both gave the same bytes.",
    )
    p.add_argument("--json", metavar="FILE", help="also write the machine-readable result to FILE")
    p.add_argument("--repeats", type=int, default=5, metavar="N", help="timed runs per cell (>= 5; default 5)")
    p.add_argument("--size-mb", type=float, default=4.0, metavar="X",
                   help="MB (10^6 bytes) of float32 data per format (default 4)")
    p.add_argument("--formats", nargs="+", metavar="NAME", help="only these formats (default: all registered)")
    for name, what in _PENDING.items():
        sub.add_parser(name, help=f"{what} (not yet implemented)")
    for name, (module, conf, _run, what) in _EXTERNAL.items():
        p = sub.add_parser(name, help=what, description=what)
        try:
            getattr(importlib.import_module(module), conf)(p)
        except (ImportError, AttributeError) as exc:
            p.set_defaults(_bench_missing=f"mlaref bench {name}: not available in this build ({exc})")
    parser.set_defaults(_bench_parser=parser)


def _configure_kernels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--families", nargs="+", metavar="FAMILY", help="only these kernel families")
    p.add_argument("--isas", nargs="+", metavar="ISA", help="only these ISA tokens")
    p.add_argument("--types", nargs="+", metavar="TYPE", help="only kernels of these types")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                   help="thread counts of the comparison with ggml (default 1 2)")
    p.add_argument("--repeats", type=int, default=5, metavar="N", help="timed runs per kernel (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the machine-readable result to FILE")
    p.add_argument("--mm", action="store_true",
                   help="instead: FlashMLA-2's kv_f32 mul_mat and flash_attn_ext (bench_mm.py) against ggml")
    p.add_argument("--n-kv", type=int, nargs="+", default=[1024, 4096, 16384], metavar="N",
                   help="with --mm: KV lengths (default 1024 4096 16384)")


def _run_mm(args) -> int:
    from mlaref.codegen.bench import mm as bench_mm  # noqa: PLC0415

    results = {
        "mul_mat": bench_mm.bench_mul_mat(n_kvs=tuple(args.n_kv), threads=tuple(args.threads), repeats=args.repeats),
        "flash_attn_ext": bench_mm.bench_flash_attn(n_kvs=tuple(args.n_kv), threads=tuple(args.threads),
                                                    repeats=args.repeats),
    }
    for result in results.values():
        print(bench_mm.format_table(result))
        print()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


def _run_kernels(args) -> int:
    from mlaref.codegen.bench import kernels as bk  # noqa: PLC0415

    if args.repeats < 1 or any(t < 1 for t in args.threads):
        print("mlaref bench kernels: --repeats and --threads must be >= 1", file=sys.stderr)
        return 2
    if args.mm:
        return _run_mm(args)
    try:
        result = bk.bench_kernels(families=args.families, isas=args.isas, types=args.types, repeat=args.repeats,
                                  threads=tuple(args.threads))
    except ValueError as exc:
        print(f"mlaref bench kernels: {exc}", file=sys.stderr)
        return 2
    print(bk.format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, default=str)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


def run(args) -> int:
    if args.bench_command is None:
        args._bench_parser.print_help()
        return 2
    if args.bench_command in _PENDING:
        print(f"mlaref bench {args.bench_command}: not yet implemented", file=sys.stderr)
        return 2
    if args.bench_command in _EXTERNAL:
        if getattr(args, "_bench_missing", None):
            print(args._bench_missing, file=sys.stderr)
            return 2
        module, _conf, run_name, _what = _EXTERNAL[args.bench_command]
        return int(getattr(importlib.import_module(module), run_name)(args) or 0)
    try:
        result = bench_types(size_mb=args.size_mb, repeats=args.repeats, formats=args.formats)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0
