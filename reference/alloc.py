"""The old import path of the allocator model, kept for users: :mod:`mlaref.reference.graphs.alloc`, re-exported.

The model moved beside the graphs it allocates; ``mlaref plan`` is :mod:`mlaref.codegen.cli.plan`. The names
below are the same objects as ``mlaref.reference.graphs.alloc``'s.
"""

from __future__ import annotations

from mlaref.reference.graphs.alloc import (
    CPU_ALIGNMENT,
    CPU_BUFFER_EXTRA,
    MAX_FREE_BLOCKS,
    PRINTED_TABLE,
    SEED_TABLE,
    VARIANT_COLUMN,
    AllocResult,
    DynAllocator,
    LiveTensor,
    allocate_graph,
    compute_buffer,
    kv_cache_bytes,
    kv_cache_plan,
    mib,
    plan_rows,
)

__all__ = [
    "CPU_ALIGNMENT", "CPU_BUFFER_EXTRA", "MAX_FREE_BLOCKS", "DynAllocator", "AllocResult", "LiveTensor",
    "allocate_graph", "kv_cache_bytes", "compute_buffer", "plan_rows", "kv_cache_plan", "SEED_TABLE", "PRINTED_TABLE",
    "VARIANT_COLUMN", "mib",
]
