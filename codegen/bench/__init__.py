"""Benchmarks: the timing method and every benchmark of mlaref, each in its module; this package re-exports the method.

:mod:`.method` (how every benchmark times), :mod:`.types` (the reference against gguf-py), :mod:`.kernels` (each
kernel against the reference, ggml and memcpy), :mod:`.throughput` (the report's kernel throughput table),
:mod:`.ops` (one MLA layer's ops at small shapes), :mod:`.mm` (mul_mat / flash_attn_ext at the FlashMLA-2 shapes),
:mod:`.mla` and :mod:`.mla_layers` (one MLA layer, f32 vs direct vs chunked); `mlaref bench` is
:mod:`mlaref.codegen.cli.bench`.
"""

from mlaref.codegen.bench.method import MB, Timing, cpu_model, environment, measure, measure_interleaved, round_orders
from mlaref.codegen.bench.types import bench_types, format_table

__all__ = ["MB", "Timing", "cpu_model", "environment", "measure", "measure_interleaved", "round_orders",
           "bench_types", "format_table"]
