"""The ``seed_tables`` section: the seed's KV cache and compute-buffer table from the allocator model, cell by cell.

Per context: the KV cache (``alloc.kv_cache_bytes``) and the compute buffer of the three graphs (f32 = main,
direct = PR #253, chunked = mlaref; ``alloc.compute_buffer``), in bytes and in MiB as llama.cpp prints them,
with the seed's printed string and ik_llama.cpp's own print beside each modelled cell
(:mod:`mlaref.reference.alloc`). Each equality is a check of the report.
"""

from __future__ import annotations

from mlaref.codegen.report.schema import quantity
from mlaref.reference import alloc
from mlaref.reference.hparams import preset

__all__ = ["seed_tables"]


def seed_tables(contexts=None) -> dict:
    """KV cache and compute buffer (f32 = main, direct = PR, chunked = mlaref) per context from the allocator
    model, with the seed's and ik_llama.cpp's printed strings beside each modelled cell."""
    hp = preset("deepseek-v2-lite")
    ctxs = sorted(contexts or alloc.SEED_TABLE)
    rows = []
    mib_method = "llama.cpp's %.2f of bytes / 1024 / 1024"
    for n in ctxs:
        kv = alloc.kv_cache_bytes(hp, n, "f16")
        row = {"n_ctx": n, "kv_cache": {"bytes": quantity(kv, "B", "n_layer * n_ctx * row_size(f16, 576) "
                                                                   "(alloc.kv_cache_bytes)"),
                                        "mib": quantity(alloc.mib(kv), "MiB", mib_method)}}
        seed = alloc.SEED_TABLE.get(n)
        printed = alloc.PRINTED_TABLE.get(n)
        row["kv_cache"]["seed"] = seed[0] if seed else None
        for v in ("f32", "direct", "chunked"):
            b = alloc.compute_buffer(hp, n, variant=v).buffer_size
            cell = {"bytes": quantity(b, "B", f"ggml-alloc model over the {v} worst-case reserve graph (ubatch "
                                              "512), max_size + 32 (alloc.compute_buffer)"),
                    "mib": quantity(alloc.mib(b), "MiB", mib_method)}
            col = alloc.VARIANT_COLUMN[v]
            if col and seed:
                i = 1 if col == "PR" else 2
                cell["seed"] = seed[i]
                cell["ik_prints"] = printed[i - 1] if printed else None
            row[v] = cell
        rows.append(row)
    checks = []
    for r in rows:
        if r["kv_cache"]["seed"] is not None:
            checks.append({"name": f"seed kv_cache {r['n_ctx']}", "passed": r["kv_cache"]["mib"]["value"]
                           == r["kv_cache"]["seed"]})
        for v in ("f32", "direct"):
            c = r[v]
            if c.get("ik_prints") is not None:
                checks.append({"name": f"seed compute buffer {v} {r['n_ctx']} = ik_llama.cpp's print",
                               "passed": c["mib"]["value"] == c["ik_prints"]})
    return {
        "status": "ok" if all(c["passed"] for c in checks) else "failed",
        "model": hp.name, "cache_type": "f16", "ubatch": 512,
        "note": "the seed's four .02 cells (main 32768/65536/131072, PR 131072) read .01 in ik_llama.cpp's own "
                "output for the same graph (upstream facts §6.6); the model reproduces ik_llama.cpp's print",
        "rows": rows,
        "checks": checks,
    }
