"""`mlaref info`: what this machine runs (Python, NumPy, compiler, CPU features found or not) and which kernel
dispatch chooses per op.

The report follows NumPy's ``np.show_runtime()``: baseline, found and not found, then the environment overrides
in effect. The FMA peak line is measured when the command runs (:mod:`mlaref.codegen.bench.peak`, about a second):
the yardstick the benchmarks' "fraction of peak" divides by; ``--no-kernels`` skips it with the kernel table.
"""

from __future__ import annotations

import os
import platform
import sys

import numpy

from mlaref.codegen import build, catalog, cpu, dispatch
from mlaref.codegen.cuda import build as cuda_build
from mlaref.codegen import isa as _isa
from mlaref.codegen.bench import peak

__all__ = ["report", "configure", "run"]


def report() -> str:
    """The text of ``mlaref info``."""
    lines = [
        f"Python      {sys.version.split()[0]} ({sys.implementation.cache_tag}, {platform.machine()})",
        f"NumPy       {numpy.__version__}",
        f"compiler    {build.compiler_version()}",
        f"cache       {os.environ.get('MLAREF_CACHE_DIR') or '(user cache dir)'}",
        f"LLC         {cpu.llc_bytes() >> 10} KiB (row copies of more than a quarter of it use streaming stores)",
        "baseline    scalar",
    ]
    for info in _isa.ISAS.values():
        if info.token == "scalar":
            continue
        miss = cpu.missing(info.token)
        state = "found" if not miss else "not found (missing: " + ", ".join(miss) + ")"
        lines.append(f"{info.token:<11} {state}   [{' '.join(info.features)}]")
    lines.append(f"sm90 (CUDA) {len(catalog.cuda_catalog())} kernels; nvcc: {cuda_build.nvcc_version()}; "
                 f"GPU: {cuda_build.gpu_status()} (never dispatched on the CPU; `mlaref cuda-check`)")
    if os.environ.get("MLAREF_INFO_NO_BUILD"):
        lines.append("FMA peak    not measured (--no-kernels)")
    else:
        lines.append(peak.describe(tuple(sorted({1, os.cpu_count() or 1}))))
    lines.append(f"MLAREF_ISA          = {os.environ.get('MLAREF_ISA', '(unset)')}")
    lines.append(f"MLAREF_DISABLE_ISA  = {os.environ.get('MLAREF_DISABLE_ISA', '(unset)')}")
    lines.append(f"MLAREF_SANITIZE     = {os.environ.get('MLAREF_SANITIZE', '(unset)')}")
    try:
        order = dispatch.candidates()
        lines.append("dispatch order: " + " > ".join(order))
        lines.append("kernel chosen per op:")
        table = dispatch.table()
        width = max((len(key) for key, _ in table), default=0)
        for key, name in table:
            lines.append(f"  {key:<{width}} {name}")
    except Exception as exc:  # a report must print even when dispatch cannot (bad MLAREF_ISA, no compiler)
        lines.append(f"dispatch unavailable: {exc}")
    return "\n".join(lines)


def configure(parser) -> None:
    parser.add_argument("--no-kernels", action="store_true", help="skip the per-op table (no compiler needed)")


def run(args) -> int:
    if getattr(args, "no_kernels", False):
        os.environ.setdefault("MLAREF_INFO_NO_BUILD", "1")
    print(report())
    return 0
