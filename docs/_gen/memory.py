"""The Memory page's generated parts: the buffer-vs-context plot, the peak tables and the timeline figure.

Everything comes from the allocator model :mod:`mlaref.reference.graphs.alloc` run during the site build:

* the plot is what ``mlaref plan --plot`` draws (the command is run in-process through
  :func:`mlaref.codegen.cli.plan.run`);
* the peak tables list, in address order, every tensor alive and every hole below ``max_size`` right after the
  allocation that set the buffer size (``AllocResult.peak_live`` / ``peak_gaps``);
* the slope (bytes per context token) is ``(buffer(2n) - buffer(n)) / n`` from the same plan rows;
* the timeline plots ``AllocResult.usage`` (live bytes after every event) against the node index;
* the design table (``design_table``) puts each variant's buffer beside its multiply-adds per cached cell and its
  passes over the cache, from the hyper-parameters and the graph builder (head groups of ``mla3-amb``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile

MODEL = "deepseek-v2-lite"
CONTEXTS = (2048, 4096, 8192, 16384, 32768, 65536, 131072)


def _hp():
    from mlaref.reference.hparams import preset

    return preset(MODEL)


def plan_plot_png() -> tuple[bytes, list[dict]]:
    """Run ``mlaref plan --plot FILE --json FILE`` in-process; return the PNG bytes and the JSON rows."""
    from mlaref.codegen.cli import plan

    with tempfile.TemporaryDirectory() as d:
        png, js = os.path.join(d, "plan.png"), os.path.join(d, "plan.json")
        args = argparse.Namespace(model=MODEL, ctx=list(CONTEXTS), variant=None, cache_type="f16", kv_chunk=None,
                                  plot=png, json=js)
        with contextlib.redirect_stdout(io.StringIO()):
            rc = plan.run(args)
        if rc != 0:
            raise RuntimeError(f"mlaref plan returned {rc}")
        with open(png, "rb") as f:
            data = f.read()
        with open(js, encoding="utf-8") as f:
            rows = json.load(f)["rows"]
    return data, rows


def variants_table(rows: list[dict]) -> str:
    """All three variants per context (MiB), from the rows ``mlaref plan --json`` wrote."""
    from mlaref.reference.graphs import alloc

    variants = list(rows[0]["buffer_bytes"])
    out = ["| context | KV cache | " + " | ".join(f"buffer, `{v}`" for v in variants) + " |",
           "|---:|---:|" + "---:|" * len(variants)]
    for r in rows:
        out.append(f"| {r['n_ctx']} | {alloc.mib(r['kv_bytes'])} | "
                   + " | ".join(alloc.mib(r["buffer_bytes"][v]) for v in variants) + " |")
    return "\n".join(out)


def slope(rows: list[dict], variant: str, n_ctx: int = 16384) -> int:
    """Bytes of compute buffer per token of context between ``n_ctx`` and ``2·n_ctx``, from the plan rows
    (an exact integer here; ValueError if not)."""
    by_ctx = {r["n_ctx"]: r["buffer_bytes"][variant] for r in rows}
    grow = by_ctx[2 * n_ctx] - by_ctx[n_ctx]
    if grow % n_ctx:
        raise ValueError(f"{variant}: buffer growth {grow} B is not a whole number of bytes per token")
    return grow // n_ctx


def _shape(ne) -> str:
    ne = list(ne)
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    return "[" + ", ".join(map(str, ne)) + "]"


def peak_table(variant: str, n_ctx: int = 16384) -> str:
    """Address-ordered regions (live tensors and holes) below ``max_size`` at the peak, as Markdown.

    A live tensor's "bytes per context token" is shown when the same tensor is twice as large in the graph for
    ``2·n_ctx`` (so it grows with context); holes are the free ranges between live tensors.
    """
    from mlaref.reference.graphs import alloc
    from mlaref.reference.graphs import deepseek2

    hp = _hp()
    g = deepseek2.build_graph(hp, n_ctx, variant=variant).graph
    r = alloc.allocate_graph(g)
    twice = {lt.name: lt.size for lt in alloc.compute_buffer(hp, 2 * n_ctx, variant=variant).peak_live()}
    by_name = {t.name: t for t in g.leafs + g.nodes}
    regions = []
    for lt in r.peak_live():
        t = by_name.get(lt.name)
        what = f"{t.type} {_shape(t.ne)}" if t is not None else ""
        per = f"{lt.size // n_ctx}" if twice.get(lt.name) == 2 * lt.size and lt.size % n_ctx == 0 else ""
        regions.append((lt.offset, lt.size, f"`{lt.name}`", lt.op.lower() if lt.op != "NONE" else "input",
                        what, per))
    regions += [(off, size, "*(hole)*", "", "", "") for off, size in r.peak_gaps()]
    regions.sort()
    out = [f"`{variant}` at {n_ctx} tokens: the allocation of `{r.peak_tensor.name}` set `max_size` = "
           f"{r.max_size:,} B, so the buffer is max_size + 32 B = **{r.buffer_mib} MiB**.", "",
           "| offset (MiB) | size (MiB) | tensor | op | type and ne | bytes per context token |",
           "|---:|---:|---|---|---|---:|"]
    for off, size, name, op, what, per in regions:
        out.append(f"| {off / 2**20:.3f} | {size / 2**20:.3f} | {name} | {op} | {what} | {per} |")
    end = max(off + size for off, size, *_ in regions)
    out.append(f"| {end / 2**20:.3f} | | (end = max_size) | | | |")
    return "\n".join(out)


def timeline_png(n_ctx: int = 16384, layers: int = 3) -> bytes:
    """Live bytes after every allocator event for ``f32`` and ``direct``, first ``layers`` layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlaref.reference.graphs import alloc
    from mlaref.reference.graphs import deepseek2

    hp = _hp()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for variant, color in (("f32", "#e76f51"), ("direct", "#2a9d8f")):
        g = deepseek2.build_graph(hp, n_ctx, variant=variant).graph
        res = alloc.allocate_graph(g)
        # The variants have different node counts per layer: put node i of layer il at il + (its share of
        # that layer's nodes), so layer boundaries line up.
        ends = [-1] + [g.index(f"l_out-{il}") for il in range(layers)]

        def x_of(i, ends=ends):
            for il in range(layers):
                if i <= ends[il + 1]:
                    return il + max(0, i - ends[il]) / (ends[il + 1] - ends[il])
            return None

        pts = [(x_of(i), b) for i, b in res.usage() if x_of(i) is not None]
        ax.step([x for x, _ in pts], [b / 2**20 for _, b in pts], where="post", color=color, lw=1.2,
                label=f"{variant}: live bytes")
        peak_i = res.events[res.peak_event][1]
        ax.axhline(res.max_size / 2**20, color=color, ls=":", lw=1,
                   label=f"{variant}: max_size {res.max_size / 2**20:.2f} MiB, set by {res.peak_tensor.name} "
                         f"(node {peak_i})")
    for il in range(1, layers):
        ax.axvline(il, color="#999999", lw=0.6)
    ax.set_xlabel("layer (the nodes of a layer spread evenly, in graph order)")
    ax.set_xticks([il + 0.5 for il in range(layers)], [f"layer {il}" for il in range(layers)])
    ax.set_xlim(0, layers)
    ax.set_ylabel("MiB")
    ax.set_title(f"{MODEL}, n_ctx = {n_ctx}: allocator timeline (first {layers} layers)", fontsize=10)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.35)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def design_table(n_ctx: int = 131072, n_tokens: int = 512) -> str:
    """What each variant trades, per layer, for one micro-batch of ``n_tokens`` prompt tokens at ``n_ctx`` cached
    cells (DeepSeek-V2-Lite): the compute buffer (allocator model), the multiply-adds per cached cell (decompression
    ``wkv_b × c`` where the graph does it, plus the attention dot products of every query token and head), and how
    many times the prompt path reads the latent cache to build K/V (one per head group)."""
    from mlaref.reference.graphs import alloc, deepseek2

    hp = _hp()
    H, nope, dv, rope, rank = hp.n_head, hp.n_embd_head_qk_nope, hp.n_embd_head_v, hp.n_rot, hp.n_lora_kv
    decomp = H * (nope + dv) * rank  # wkv_b × one latent row
    mha = n_tokens * H * (nope + rope + dv)  # q·k (192) and p·v (128) per query and head
    mqa = n_tokens * H * (rank + rope + rank)  # q·k over 576, p·v over 512
    rows = alloc.plan_rows(hp, [n_ctx], deepseek2.VARIANTS)[0]["buffer_bytes"]
    what = {
        "f32": ("decompress (f32 K), MHA 192/128", decomp + mha, "1 (cast to f32)"),
        "direct": ("decompress, MHA 192/128", decomp + mha, "1"),
        "chunked": ("decompress per chunk, MHA, merge", decomp + mha, f"1 (in {n_ctx // deepseek2.DEFAULT_KV_CHUNK} chunks)"),
        "mla3": ("as direct (#260 order)", decomp + mha, "1"),
        "mla3-amb": ("as direct, per head group", decomp + mha, None),
        "mainline": ("absorbed, MQA 576/512", mqa, "0 (attends to the cache itself)"),
    }
    g = deepseek2.build_graph(hp, n_ctx, variant="mla3-amb")
    out = [f"Per layer, one micro-batch of {n_tokens} prompt tokens at {n_ctx} cells of context (DeepSeek-V2-Lite, "
           "f16 cache). Multiply-adds per cached cell = decompression (`wkv_b × c`, "
           f"{H}·({nope}+{dv})·{rank}) where the graph has it + {n_tokens} tokens × {H} heads × the dot-product "
           f"lengths. mla = 3's token path costs what `mainline` costs, per query token.", "",
           "| variant | attention | compute buffer (MiB) | multiply-adds per cached cell | passes over the cache to build K/V |",
           "|---|---|---:|---:|---|"]
    for v in deepseek2.VARIANTS:
        label, macs, passes = what[v]
        if passes is None:
            passes = f"{g.head_groups} (amb {g.amb_mib} MiB: {g.head_groups} groups of {H // g.head_groups} heads)"
        out.append(f"| `{v}` | {label} | {alloc.mib(rows[v])} | {macs / 1e6:.2f} M | {passes} |")
    return "\n".join(out)
