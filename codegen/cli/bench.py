"""`mlaref bench`: the command line of the benchmarks (types, kernels, ops, mla), each in its module."""


from __future__ import annotations

import argparse
import importlib
import json
import sys

from mlaref.codegen.bench import kernels as bk
from mlaref.codegen.bench import mm as bench_mm
from mlaref.codegen.bench.method import print_and_save
from mlaref.codegen.bench.types import bench_types, format_table

# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
_PENDING: dict[str, str] = {}

# The other benchmarks live in their own modules: name -> (module, configure, run, help). Each module's
# ``configure(parser)`` adds the options and ``run(args) -> int`` prints the table (and writes --json).
_EXTERNAL = {
    "kernels": ("mlaref.codegen.cli.bench", "_configure_kernels", "_run_kernels",
                "generated C kernels by name, and each family against the reference and ggml (bench/kernels.py)"),
    "ops": ("mlaref.codegen.bench.ops", "configure", "run",
            "one MLA layer's ops at small shapes: reference vs kernels vs ggml"),
    "mla": ("mlaref.codegen.bench.mla", "configure", "run",
            "the FlashMLA-2 prompt-processing layer (K/V build + attention), f32 vs direct (PR #253) vs chunked"),
    "peers": ("mlaref.codegen.bench.peers", "configure", "run",
              "FlashMLA-2's K/V-build mul_mat and attention: the kernels vs ik_llama.cpp and ggml 0.25.3 (harness)"),
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
                   help="instead: FlashMLA-2's kv_f32 mul_mat and flash_attn_ext (bench/mm.py) against ggml")
    p.add_argument("--n-kv", type=int, nargs="+", default=[1024, 4096, 16384], metavar="N",
                   help="with --mm: KV lengths (default 1024 4096 16384)")


def _run_mm(args) -> int:
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
    print_and_save(format_table(result), result, args.json)
    return 0
