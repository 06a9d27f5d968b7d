"""`mlaref report`: the main job; :mod:`.builder` runs the sections and writes report.json, report.md and plots.

The package's parts: :mod:`.builder` (make_report and the command line), :mod:`.sections` (cpu, build and the
benchmark sections), :mod:`.check` (every kernel against the reference), :mod:`.seed` (the seed's tables),
:mod:`.plots` (matplotlib), :mod:`.markdown` (report.md), :mod:`.schema` (report.json's conventions),
:mod:`.progress` (progress bars). The benchmarks it runs live in :mod:`mlaref.codegen.bench`.
"""

from mlaref.codegen.bench.throughput import bench_kernels
from mlaref.codegen.report.builder import configure, make_report, run
from mlaref.codegen.report.check import check_kernel
from mlaref.codegen.report.markdown import render_markdown
from mlaref.codegen.report.plots import PLOT_SIZE
from mlaref.codegen.report.schema import SCHEMA_PATH
from mlaref.codegen.report.seed import seed_tables

__all__ = ["configure", "run", "make_report", "check_kernel", "bench_kernels", "seed_tables", "render_markdown",
           "PLOT_SIZE", "SCHEMA_PATH"]
