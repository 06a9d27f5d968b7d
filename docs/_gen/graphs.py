"""Diagrams of one layer's K/V build and attention, drawn from the real graph builders at site-build time.

The graph is :func:`mlaref.reference.graphs.deepseek2.build_graph` for DeepSeek-V2-Lite (worst-case reserve,
``n_ctx = n_kv = 8192``, ``T = 512``, f16 cache). The subgraph is every ancestor of layer 1's attention result
(``kqv-1``), cut at the query (``q_concat-1``, whose own path is the same in all variants) and at the shared f16
mask (``KQ_mask (copy)``, built once in layer 0). Nodes carry the op, the type and ``ne`` read from the IR; edges
go from each ``src`` to its node (``ggml_cast``'s self edge is left out). The layout is a small layered
(Sugiyama-style) one: a node's layer is its longest distance from a source, long edges get dummy points, and the
order inside a layer is improved by a few barycentre sweeps. Only matplotlib is needed (no graphviz).
"""

from __future__ import annotations

import functools
import io

N_CTX = 8192
LAYER = 1
CUT = ("q_concat-{il}", "KQ_mask (copy)")
VARIANTS = ("f32", "direct", "chunked")

_COLORS = {"f32": "#f4a261", "cache": "#8ecae6", "external": "#d9d9d9", "other": "#e9edc9"}


@functools.lru_cache(maxsize=None)
def subgraph(variant: str, n_ctx: int = N_CTX, il: int = LAYER):
    """(nodes, edges) of layer ``il``'s K/V build + attention: nodes in graph order, edges as (src, dst) indices."""
    from mlaref.reference.graphs import deepseek2
    from mlaref.reference.hparams import preset

    g = deepseek2.build_graph(preset("deepseek-v2-lite"), n_ctx, variant=variant).graph
    root = g.find(f"kqv-{il}")
    cut = {c.format(il=il) for c in CUT}
    keep: dict[int, object] = {}
    weights: dict[str, object] = {}  # the chunked builder makes one weight object per chunk: draw it once
    stack = [root]
    while stack:
        t = stack.pop()
        if t.op == "NONE" and t.external:
            t = weights.setdefault(t.name, t)
        if id(t) in keep:
            continue
        keep[id(t)] = t
        if t.name in cut:
            continue
        stack.extend(s for s in t.src if s is not None and s is not t)
    order = {id(t): i for i, t in enumerate(g.leafs + g.nodes)}
    nodes = sorted(keep.values(), key=lambda t: (t.op != "NONE", order.get(id(t), 0)))
    index = {id(t): i for i, t in enumerate(nodes)}
    edges = []
    for t in nodes:
        if t.name in cut:
            continue
        for s in t.src:
            if s is not None and s.op == "NONE" and s.external:
                s = weights[s.name]
            if s is not None and s is not t and id(s) in index:
                edges.append((index[id(s)], index[id(t)]))
    return nodes, sorted(set(edges)), g


def _shape(t) -> str:
    ne = list(t.ne)
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    return "[" + ", ".join(map(str, ne)) + "]"


def _label(t, cut) -> tuple[str, str]:
    size = ""
    if t.view_src is None and not t.external:  # it takes room in the compute buffer
        size = f", {t.nbytes / 2**20:g} MiB"
    op = "leaf" if t.op == "NONE" else t.op.lower()
    if t.name in cut:
        op += " (from elsewhere)"
    return t.name, f"{op}\n{t.type} {_shape(t)}{size}"


def _layout(n: int, edges):
    """Layers (longest path), dummy points on long edges, barycentre ordering; returns positions and polylines."""
    preds = [[] for _ in range(n)]
    for a, b in edges:
        preds[b].append(a)
    layer = [0] * n
    for _ in range(n):  # longest path by relaxation (the graph is a DAG, n is small)
        changed = False
        for a, b in edges:
            if layer[b] < layer[a] + 1:
                layer[b] = layer[a] + 1
                changed = True
        if not changed:
            break
    # Then pull every node down to just above its first consumer (weights, views and the mask sit next to
    # where they are used), last layers first so that a chain moves as a whole.
    succ = [[] for _ in range(n)]
    for a, b in edges:
        succ[a].append(b)
    for v in sorted(range(n), key=lambda v: -layer[v]):
        if succ[v]:
            layer[v] = min(layer[s] for s in succ[v]) - 1
    items = list(range(n))  # real nodes, then dummies
    ilayer = list(layer)
    chains = []
    for a, b in edges:
        chain = [a]
        for lv in range(layer[a] + 1, layer[b]):
            items.append(len(items))
            ilayer.append(lv)
            chain.append(len(items) - 1)
        chain.append(b)
        chains.append(chain)
    n_layers = max(ilayer) + 1
    rows = [[v for v in items if ilayer[v] == lv] for lv in range(n_layers)]
    up = {v: [] for v in items}
    down = {v: [] for v in items}
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            down[a].append(b)
            up[b].append(a)
    pos = {v: float(i) for row in rows for i, v in enumerate(row)}
    for sweep in range(8):
        rng = range(1, n_layers) if sweep % 2 == 0 else range(n_layers - 2, -1, -1)
        for lv in rng:
            nb = up if sweep % 2 == 0 else down
            row = rows[lv]
            key = {v: (sum(pos[u] for u in nb[v]) / len(nb[v]) if nb[v] else pos[v]) for v in row}
            row.sort(key=lambda v: key[v])
            for i, v in enumerate(row):
                pos[v] = float(i)
    width = max(len(r) for r in rows)
    xy = {}
    for lv, row in enumerate(rows):
        off = (width - len(row)) / 2.0
        for i, v in enumerate(row):
            xy[v] = (off + i, -lv)
    return xy, chains, width, n_layers


def figure_png(variant: str, n_ctx: int = N_CTX, il: int = LAYER) -> bytes:
    """The diagram of ``variant`` as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch

    nodes, edges, _ = subgraph(variant, n_ctx, il)
    cut = {c.format(il=il) for c in CUT}
    xy, chains, width, n_layers = _layout(len(nodes), edges)
    sx, sy = 3.05, 1.25  # data units per column / layer
    bw, bh = 2.8, 0.95
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * width + 0.4), 0.8 * n_layers + 1.0))
    for chain in chains:
        pts = [(xy[v][0] * sx, xy[v][1] * sy) for v in chain]
        (x0, y0), (x1, y1) = pts[0], pts[-1]
        pts[0] = (x0, y0 - bh / 2)
        pts[-1] = (x1, y1 + bh / 2)
        xs, ys = zip(*pts)
        ax.plot(xs[:-1], ys[:-1], color="#555555", lw=0.8, zorder=1)
        ax.annotate("", xy=pts[-1], xytext=pts[-2],
                    arrowprops=dict(arrowstyle="-|>", color="#555555", lw=0.8, shrinkA=0, shrinkB=0), zorder=1)
    for i, t in enumerate(nodes):
        x, y = xy[i][0] * sx, xy[i][1] * sy
        if t.external or t.view_src is not None and t.view_src.external:
            color = _COLORS["external"]
        elif t.type == "f32":
            color = _COLORS["f32"]
        elif t.type in ("f16", "bf16", "q8_0"):
            color = _COLORS["cache"]
        else:
            color = _COLORS["other"]
        view = t.view_src is not None
        ax.add_patch(FancyBboxPatch((x - bw / 2, y - bh / 2), bw, bh, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=color, edgecolor="#222222", lw=0.9,
                                    linestyle=(0, (3, 2)) if view else "-", zorder=2))
        name, rest = _label(t, cut)
        size = min(7.8, 7.8 * 22 / max(len(name), 1))  # long names shrink to stay inside the box
        ax.text(x, y + 0.22, name, ha="center", va="center", fontsize=size, fontweight="bold", zorder=3)
        ax.text(x, y - 0.14, rest, ha="center", va="center", fontsize=7.2, zorder=3, linespacing=1.15)
    ax.set_xlim(-bw / 2 - 0.2, (width - 1) * sx + bw / 2 + 0.2)
    ax.set_ylim(-(n_layers - 1) * sy - bh / 2 - 0.2, bh / 2 + 0.2)
    ax.axis("off")
    ax.legend(handles=[Patch(facecolor=_COLORS["f32"], edgecolor="#222", label="f32 (compute buffer)"),
                       Patch(facecolor=_COLORS["cache"], edgecolor="#222", label="cache type f16 (compute buffer)"),
                       Patch(facecolor=_COLORS["external"], edgecolor="#222", label="weights / KV cache (own buffers)"),
                       Patch(facecolor="white", edgecolor="#222", linestyle="--", label="dashed: a view (no memory)")],
              loc="lower left", fontsize=6.5, frameon=False, bbox_to_anchor=(0.0, -0.02))
    ax.set_title(f"variant {variant}: layer {il} K/V build and attention, DeepSeek-V2-Lite, n_kv = {n_ctx}, T = 512",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def node_table(variant: str, n_ctx: int = N_CTX, il: int = LAYER) -> str:
    """The same subgraph as a Markdown table, in graph (execution) order, with each node's sources."""
    nodes, edges, _ = subgraph(variant, n_ctx, il)
    srcs = {i: [] for i in range(len(nodes))}
    for a, b in edges:
        srcs[b].append(nodes[a].name)
    rows = ["| # | tensor | op | type | ne | bytes | view of | sources |", "|---:|---|---|---|---|---:|---|---|"]
    k = 0
    for i, t in enumerate(nodes):
        if t.op == "NONE":
            continue
        k += 1
        nbytes = "(view)" if t.view_src is not None else f"{t.nbytes:,}"
        base = f"`{t.view_src.name}`" if t.view_src is not None else ""
        rows.append(f"| {k} | `{t.name}` | {t.op} | {t.type} | {_shape(t)} | {nbytes} | {base} | "
                    + ", ".join(f"`{s}`" for s in srcs[i]) + " |")
    return "\n".join(rows)
