"""``mlaref plan``: the KV cache and CPU compute buffer per context, from the allocator model, as a table or a plot.

The numbers come from :func:`mlaref.reference.graphs.alloc.plan_rows`, one compute-buffer column per graph variant
of :mod:`mlaref.reference.graphs.deepseek2` (default: every variant the cache type allows; q8_KV only ``f32``);
for ``deepseek-v2-lite`` with an f16 cache and ubatch 512 the seed's columns and what ik_llama.cpp prints are shown
beside ``f32`` and ``direct``. ``--amb`` sets ``mla3-amb``'s attention max batch, ``--ubatch`` the micro-batch
of the worst-case graph. ``--json`` writes the rows, ``--plot`` a PNG (matplotlib, imported only then).
"""

from __future__ import annotations

import argparse
import json
import sys

from mlaref.reference.graphs.alloc import PRINTED_TABLE, SEED_TABLE, VARIANT_COLUMN, mib, plan_rows
from mlaref.reference.graphs.deepseek2 import CACHE_TYPES, DEFAULT_AMB_MIB, VARIANTS
from mlaref.reference.hparams import CHECKPOINTS, preset

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="deepseek-v2-lite", choices=sorted(CHECKPOINTS),
                        help="hyper-parameter preset (default deepseek-v2-lite)")
    parser.add_argument("--ctx", type=int, nargs="+", default=sorted(SEED_TABLE),
                        help="context sizes (multiples of 256; default: the seed's 2048..131072)")
    parser.add_argument("--variant", choices=VARIANTS, action="append",
                        help="graph variant(s) (default: every variant the cache type allows)")
    parser.add_argument("--cache-type", default="f16", choices=CACHE_TYPES,
                        help="KV cache type (q8_KV: the f32 variant only)")
    parser.add_argument("--kv-chunk", type=int, default=None, help="chunk length (cells) of the chunked variant")
    parser.add_argument("--amb", type=int, default=None, metavar="MIB",
                        help=f"attention max batch of mla3-amb in MiB (default {DEFAULT_AMB_MIB})")
    parser.add_argument("--ubatch", type=int, default=None, metavar="N", help="micro-batch size (default 512)")
    parser.add_argument("--plot", metavar="FILE.png", help="write compute buffer vs context for the variants")
    parser.add_argument("--json", metavar="FILE", help="write the table as JSON")


def run(args) -> int:
    hp = preset(args.model)
    amb = getattr(args, "amb", None)
    ubatch = getattr(args, "ubatch", None)
    variants = args.variant or (["f32"] if args.cache_type == "q8_KV" else list(VARIANTS))
    try:
        rows = plan_rows(hp, args.ctx, variants, args.cache_type, args.kv_chunk, amb_mib=amb, n_ubatch=ubatch)
    except ValueError as exc:
        print(f"mlaref plan: {exc}", file=sys.stderr)
        return 2
    seed = hp.name == "deepseek-v2-lite" and args.cache_type == "f16" and ubatch in (None, 512)
    head = f"{'n_ctx':>7} {'KV MiB':>9}"
    if seed:
        head += f" {'(seed)':>9}"
    for v in variants:
        head += f" {v + ' MiB':>{max(12, len(v) + 5)}}"
        if seed and VARIANT_COLUMN[v]:
            head += f" {'(seed ' + VARIANT_COLUMN[v] + ')':>12} {'(ik prints)':>11}"
    extra = f", amb {DEFAULT_AMB_MIB if amb is None else amb} MiB (mla3-amb)" if "mla3-amb" in variants else ""
    print(f"{hp.name}, cache {args.cache_type}, ubatch {ubatch or 512}{extra}, worst-case reserve (CPU compute buffer)")
    print(head)
    for row in rows:
        n = row["n_ctx"]
        line = f"{n:>7} {mib(row['kv_bytes']):>9}"
        if seed:
            line += f" {SEED_TABLE.get(n, ('-',))[0]:>9}"
        for v in variants:
            line += f" {mib(row['buffer_bytes'][v]):>{max(12, len(v) + 5)}}"
            if seed and VARIANT_COLUMN[v]:
                col = 1 if VARIANT_COLUMN[v] == "PR" else 2
                s = SEED_TABLE.get(n)
                p = PRINTED_TABLE.get(n)
                line += f" {s[col] if s else '-':>12} {p[col - 1] if p else '-':>11}"
        print(line)
    if seed:
        print("seed .02 cells (main 32768/65536/131072, PR 131072): ik_llama.cpp itself prints .01 "
              "(upstream facts §6.6)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": hp.name, "cache_type": args.cache_type, "ubatch": ubatch or 512,
                       "amb_mib": DEFAULT_AMB_MIB if amb is None else amb, "rows": rows}, f, indent=1)
    if args.plot:
        _plot(hp, rows, variants, args.plot, ubatch or 512)
    return 0


def _plot(hp, rows, variants, path, ubatch=512) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(f"mlaref plan --plot needs matplotlib ({exc}); pip install matplotlib") from exc
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["n_ctx"] for r in rows]
    for v in variants:
        ax.plot(xs, [r["buffer_bytes"][v] / 2**20 for r in rows], marker="o", label=f"compute buffer, {v}")
    ax.plot(xs, [r["kv_bytes"] / 2**20 for r in rows], linestyle="--", color="grey", label="KV cache")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("MiB")
    ax.set_title(f"{hp.name}: CPU buffers vs context (ubatch {ubatch})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
