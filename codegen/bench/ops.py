"""`mlaref bench ops`: seconds per call of one MLA layer's ops at small shapes: reference vs kernels vs ggml.

The ops (cast f32 -> f16, repeat of the rope part over the heads, the K concat, a ``wkv_b`` slice mul_mat,
flash_attn_ext with f16 K/V) run on the same inputs in three contenders: the NumPy reference
(:mod:`mlaref.reference.ops`), mlaref's kernels where the op has a kernel path (:mod:`mlaref.codegen.kernels`) and
upstream ggml through ggml-python (:mod:`mlaref.codegen.peers.ggml_ops`: one fresh context and graph per call, so
that overhead is part of ggml's time). One thread; timed interleaved
(:func:`mlaref.codegen.bench.method.measure_interleaved`). Also the ``bench_ops`` section of ``mlaref report``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mlaref.codegen import kernels as K
from mlaref.codegen.bench.method import environment, measure_interleaved, print_and_save, runnable
from mlaref.codegen.kernels import mm as KM
from mlaref.codegen.peers import ggml as ggml_peer
from mlaref.codegen.peers import ggml_ops
from mlaref.reference.ops.concat import concat
from mlaref.reference.ops.cpy import cast
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.ops.mul_mat import mul_mat
from mlaref.reference.ops.repeat import repeat
from mlaref.reference.tensor import Tensor

__all__ = ["bench_ops", "format_table", "configure", "run"]


def _cases(rng) -> list[tuple]:
    """(name, shapes, {contender: callable}) for the ops of one MLA layer at small shapes."""

    def t(shape, type="f32", scale=1.0):
        return Tensor.from_numpy((scale * rng.standard_normal(shape)).astype(np.float32), type)

    peer = ggml_peer.available()
    cases = []
    x = t((64, 4096))
    cases.append(("cast f32 -> f16", "[4096, 64]",
                  {"reference": lambda: cast(x, "f16"), "kernel": lambda: K.cpy(x, "f16"),
                   **({"ggml": lambda: ggml_ops.cast(x, "f16")} if peer else {})}))
    rope = t((1, 256, 64), "f16")
    ne = (64, 256, 16, 1)
    cases.append(("repeat f16 (k_rope over 16 heads)", "[64, 256, 1] -> [64, 256, 16]",
                  {"reference": lambda: repeat(rope, ne), "kernel": lambda: K.repeat(rope, ne),
                   **({"ggml": lambda: ggml_ops.repeat(rope, ne)} if peer else {})}))
    a, b = t((16, 256, 128), "f16"), t((16, 256, 64), "f16")
    cases.append(("concat f16 dim 0 (K = nope | rope)", "[128 | 64, 256, 16]",
                  {"reference": lambda: concat(a, b, 0), "kernel": lambda: K.concat(a, b, 0),
                   **({"ggml": lambda: ggml_ops.concat(a, b, 0)} if peer else {})}))
    w, c = t((256, 512), "f16", 0.05), t((64, 512))
    cases.append(("mul_mat f16 x f32 (wkv_b slice)", "[512, 256] x [512, 64]",
                  {"reference": lambda: mul_mat(w, c, plan="mlaref_l16a1"), "kernel": lambda: KM.mul_mat(w, c),
                   **({"ggml": lambda: ggml_ops.mul_mat(w, c)} if peer else {})}))
    q = t((2, 16, 192)).permute(0, 2, 1, 3)
    k, v = t((2, 256, 192), "f16"), t((2, 256, 128), "f16")
    mask = Tensor.from_numpy(np.zeros((16, 256), dtype=np.float32), "f16")
    cases.append(("flash_attn_ext f16 K/V", "q [192, 16, 2], K [192, 256, 2], V [128, 256, 2]",
                  {"reference": lambda: flash_attn_ext(q, k, v, mask, 0.07),
                   "kernel": lambda: KM.flash_attn_ext(q, k, v, mask, 0.07),
                   **({"ggml": lambda: ggml_ops.flash_attn_ext(q, k, v, mask, 0.07)} if peer else {})}))
    return cases


def bench_ops(*, repeats: int = 5, seed: int = 0) -> dict:
    """Seconds per call of the ops of one MLA layer at small shapes: the NumPy reference, mlaref's kernels (where
    the op has a kernel path) and upstream ggml through ggml-python (one fresh context per call)."""
    rows = []
    for name, shapes, fns in _cases(np.random.default_rng(seed)):
        live, reasons = runnable(fns)
        if not ggml_peer.available():
            reasons["ggml"] = ggml_peer.unavailable_reason()
        timings = measure_interleaved(live, repeats=repeats, warmup=0) if live else {}
        row = {"op": name, "shapes": shapes}
        for k in ("reference", "kernel", "ggml"):
            if k in timings:
                row[k] = {"status": "ok", "seconds": timings[k].to_json()}
            else:
                row[k] = {"status": "n/a", "reason": reasons.get(k, "no kernel path for this op")}
        for k in ("kernel", "ggml"):
            if k in timings and "reference" in timings:
                row[f"speedup_{k}_over_reference"] = {
                    "value": timings["reference"].median / timings[k].median, "unit": "1",
                    "method": f"median time of the reference / median time of {k}"}
        rows.append(row)
    return {
        "benchmark": "mlaref bench ops",
        "method": {"timer": "time.perf_counter, one call per run; contenders interleaved, order shuffled each round", "warmup": 1,
                   "repeats": repeats, "statistic": "median (min and max also given)", "threads": 1,
                   "ggml": "ggml_ops.run: a fresh ggml context and graph per call, inputs copied in and the "
                           "result copied out (that overhead is part of its time)"},
        "environment": environment(),
        "results": rows,
    }


def format_table(result: dict) -> str:
    """The result of :func:`bench_ops` as a fixed-width text table (milliseconds, medians)."""
    def sec(c):
        return f"{1e3 * c['seconds']['median']:.2f}" if c["status"] == "ok" else "n/a"

    head = ("op", "shapes", "reference ms", "kernel ms", "ggml ms", "kernel/ref", "ggml/ref")
    lines = [(r["op"], r["shapes"], sec(r["reference"]), sec(r["kernel"]), sec(r["ggml"]),
              f"{r['speedup_kernel_over_reference']['value']:.1f}" if "speedup_kernel_over_reference" in r else "n/a",
              f"{r['speedup_ggml_over_reference']['value']:.1f}" if "speedup_ggml_over_reference" in r else "n/a")
             for r in result["results"]]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*x) for x in lines)]
    out.append(f"\nmedian of {result['method']['repeats']} calls, 1 thread; speed-ups: reference time / time")
    return "\n".join(out)


# -- `mlaref bench ops` (codegen/bench/method.py adds the sub-command with these) ------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="timed runs per cell (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the machine-readable result to FILE")


def run(args) -> int:
    if args.repeats < 1:
        print(f"mlaref bench ops: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    result = bench_ops(repeats=args.repeats)
    print_and_save(format_table(result), result, args.json)
    return 0
