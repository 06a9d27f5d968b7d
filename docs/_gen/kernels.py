"""The Kernels page's generated parts: ISA and kernel tables, name grammar, dispatch rules, a plan's lane map.

* the grammar is :func:`mlaref.codegen.naming.grammar` and a few names from ``generated/manifest.json`` taken
  apart by :func:`mlaref.codegen.naming.parse`;
* the dispatch text is the docstring of :mod:`mlaref.codegen.dispatch`;
* the lane map is drawn from a :class:`~mlaref.reference.plan.ReductionPlan`'s fields (``lanes``, ``accs``,
  ``fold``): which 32-block goes to which accumulator slot, then the fixed fold. During the build the same order
  is replayed in NumPy (:func:`replay_q8_0`) and compared byte for byte with
  :func:`mlaref.reference.ops.vec_dot.vec_dot` under that plan, so the figure cannot drift from the reference.
"""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

import numpy as np

PLAN = "mlaref_l8a2"
N_BLOCKS = 6


def grammar_block(width: int = 96) -> str:
    """``naming.grammar()`` in a code block, long alternative lists wrapped at ``|`` for the page width."""
    from mlaref.codegen import naming

    lines = []
    for line in naming.grammar().splitlines():
        head, sep, alts = line.partition("= ")
        if not sep or len(line) <= width:
            lines.append(line)
            continue
        cur = head + sep
        for k, alt in enumerate(alts.split(" | ")):
            piece = alt if k == 0 else " | " + alt
            if len(cur) + len(piece) > width:
                lines.append(cur)
                cur = " " * (len(head) + len(sep) - 2) + "| " + alt
            else:
                cur += piece
        lines.append(cur)
    return "```text\n" + "\n".join(lines) + "\n```"


def parsed_examples(k: int = 8) -> str:
    """A table of manifest kernel names, the first of each op, taken apart by ``naming.parse``."""
    import mlaref.generated
    from mlaref.codegen import naming

    path = Path(mlaref.generated.__file__).resolve().parent / "manifest.json"
    if not path.is_file():
        return "*(no `generated/manifest.json`)*"
    names = sorted(json.loads(path.read_text(encoding="utf-8"))["kernels"])
    seen, picked = set(), []
    for n in names:
        p = naming.parse(n)
        if p.op not in seen:
            seen.add(p.op)
            picked.append((n, p))
    rows = ["| kernel name | op | type_x | type_y | isa | plan |", "|---|---|---|---|---|---|"]
    rows += [f"| `{n}` | {p.op} | {p.type_x} | {p.type_y or ''} | {p.isa} | {p.plan} |" for n, p in picked[:k]]
    return "\n".join(rows)


def dispatch_doc() -> str:
    from mlaref.codegen import dispatch

    doc = inspect.cleandoc(dispatch.__doc__ or "")
    head, _, rest = doc.partition("\n\n")
    return rest or doc


def plan_fields(name: str = PLAN) -> str:
    from mlaref.reference import plan as plans

    p = plans.get_plan(name)
    keys = ("lanes", "accs", "fold", "fma", "int_to_float", "acc_type", "tail")
    rows = ["| field | value |", "|---|---|"] + [f"| `{k}` | `{getattr(p, k)!r}` |" for k in keys]
    rows.append(f"| fingerprint (kernel-name token) | `{p.fingerprint}` |")
    return "\n".join(rows)


def _fold_levels(accs: int, lanes: int, fold: str) -> list[list[tuple[int, ...]]]:
    """The fold as index sets: level 0 = the A·L slots (acc·L + lane); each later level adds pairs, as in
    ``ops/vec_dot._fold``: accumulators by halves, then lanes by halves (``hadd`` stops at 4 lanes and adds
    (t0+t1)+(t2+t3))."""
    acc = [[(a * lanes + j,) for j in range(lanes)] for a in range(accs)]
    levels = [[s for row in acc for s in row]]
    while len(acc) > 1:
        h = len(acc) // 2
        acc = [[acc[a][j] + acc[a + h][j] for j in range(lanes)] for a in range(h)]
        levels.append([s for row in acc for s in row])
    v = acc[0]
    while len(v) > (4 if fold == "hadd" else 1):
        h = len(v) // 2
        v = [v[i] + v[i + h] for i in range(h)]
        levels.append(list(v))
    if fold == "hadd" and len(v) == 4:
        v = [v[0] + v[1], v[2] + v[3]]
        levels.append(list(v))
        v = [v[0] + v[1]]
        levels.append(list(v))
    return levels


def replay_q8_0(n_rows: int = 64, n_blocks: int = 18, name: str = PLAN, seed: int = 253) -> tuple[int, int]:
    """Replay the drawn order on random q8_0 rows and compare with the reference ``vec_dot``.

    Returns ``(rows compared, rows equal)``. The replay: int32 lane sums of 4 products (exact), converted to
    f32 (exact below 2**24), ``acc[b % slots] = fmaf(dx_b·dy_b, lane_sums_b, acc[b % slots])``, then the fold.
    """
    from mlaref import reference
    from mlaref.reference import fp
    from mlaref.reference import plan as plans
    from mlaref.reference.ops.vec_dot import vec_dot

    p = plans.get_plan(name)
    rng = np.random.default_rng(seed)
    n = 32 * n_blocks
    xs = reference.quantize(rng.standard_normal((n_rows, n)).astype(np.float32), "q8_0")
    ys = reference.quantize(rng.standard_normal((1, n)).astype(np.float32), "q8_0")
    want = vec_dot(xs, "q8_0", ys, "q8_0", n, plan=name)[:, 0]
    fmt = reference.get_type("q8_0")
    bx = xs.reshape(-1).view(fmt.dtype).reshape(n_rows, n_blocks)
    by = ys.reshape(-1).view(fmt.dtype).reshape(1, n_blocks)
    dx = bx["d"].view(np.float16).astype(np.float32)
    dy = by["d"].view(np.float16).astype(np.float32)
    qx = bx["qs"].astype(np.int32)
    qy = by["qs"].astype(np.int32)
    lanesum = (qx * qy).reshape(n_rows, n_blocks, 8, 4).sum(axis=-1).astype(np.float32)  # integers: exact
    slots = p.lanes * p.accs // 8
    acc = np.zeros((n_rows, slots * 8), np.float32)
    for b in range(n_blocks):
        k = b % slots
        d = (dx[:, b] * dy[:, b]).astype(np.float32)[:, None]
        acc[:, 8 * k:8 * k + 8] = fp.fmaf(d, lanesum[:, b], acc[:, 8 * k:8 * k + 8])
    levels = _fold_levels(slots, 8, p.fold)
    val = {s: acc[:, s[0]] for s in levels[0]}
    for lev in levels[1:]:
        # each entry of a level is the sum of exactly two entries of the level before: one rounded f32 add
        val = {s: np.add(*[val[t] for t in val if set(t) <= set(s)], dtype=np.float32) for s in lev}
    got = next(iter(val.values()))
    same = int(np.sum(got.view(np.uint32) == want.view(np.uint32)))
    return n_rows, same


def lane_map_png(name: str = PLAN, n_blocks: int = N_BLOCKS) -> bytes:
    """Blocks -> accumulator slots -> fold, for plan ``name`` over ``n_blocks`` 32-blocks of a q8_0 row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mlaref.reference import plan as plans

    p = plans.get_plan(name)
    L = 8  # a 32-block always gives 8 lane sums of 4 products (int_to_float "lane4")
    slots = p.lanes * p.accs // 8
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8.5, 0.5 * n_blocks + 4.2))
    cw, ch = 0.5, 0.42

    def reg(x, y, labels, colors, title=None):
        for j, (lab, c) in enumerate(zip(labels, colors)):
            ax.add_patch(Rectangle((x + j * cw, y), cw, ch, facecolor=c, edgecolor="#333", lw=0.7))
            ax.text(x + j * cw + cw / 2, y + ch / 2, lab, ha="center", va="center", fontsize=7.5)
        if title:
            ax.text(x - 0.15, y + ch / 2, title, ha="right", va="center", fontsize=8.5)

    top = 0.0
    ax.text(0.0, top + 0.65, "lane j: Σj = sum of the 4 int8 products 4j..4j+3 of the block (exact int32, "
            "exact as f32)", fontsize=8.5)
    for b in range(n_blocks):
        y = top - b * 0.55
        k = b % slots
        reg(0.0, y, [f"Σ{j}" for j in range(L)], [cmap(k)] * L,
            f"block {b} (elements {32 * b}..{32 * b + 31})")
        tx = L * cw + 0.3
        ax.text(tx, y + ch / 2, f"step {b // slots}: acc{k} = fma(d_x·d_y, float(Σ), acc{k})", va="center",
                fontsize=8.5, color=cmap(k))
    # accumulators
    ybase = top - n_blocks * 0.55 - 0.5
    accx = 0.0
    for k in range(slots):
        reg(accx, ybase - k * 0.55, [f"a{k}.{j}" for j in range(L)], [cmap(k)] * L, f"acc{k}")
    # fold levels
    levels = _fold_levels(slots, L, p.fold)
    y = ybase - slots * 0.55 - 0.35
    prev_pos = {s: (accx + (s[0] % L) * cw + cw / 2, ybase - (s[0] // L) * 0.55) for s in levels[0]}
    for li, lev in enumerate(levels[1:], start=1):
        y -= 0.75
        pos = {}
        for j, s in enumerate(lev):
            x = accx + j * cw
            ax.add_patch(Rectangle((x, y), cw, ch, facecolor="#eeeeee", edgecolor="#333", lw=0.7))
            pos[s] = (x + cw / 2, y)
            for t, (px, py) in prev_pos.items():
                if set(t) <= set(s):
                    ax.plot([px, x + cw / 2], [py, y + ch], color="#777", lw=0.6, zorder=0.5)
        across = li <= slots.bit_length() - 1  # the first log2(slots) levels fold accumulators
        ax.text(accx + len(lev) * cw + 0.2, y + ch / 2,
                "acc[a][i] + acc[a + A/2][i] (accumulators by halves)" if across
                else f"v[i] + v[i + {len(lev)}] (lanes by halves)", va="center", fontsize=8.5)
        prev_pos = pos
    ax.text(accx, y - 0.45, "the dot product (one f32)", fontsize=8.5)
    ax.set_xlim(-3.2, 9.5)
    ax.set_ylim(y - 0.7, top + 1.0)
    ax.axis("off")
    ax.set_title(f"plan {p.name} ({p.fingerprint}): lanes={p.lanes}, accs={p.accs}, fold={p.fold!r}, fma={p.fma} — "
                 f"a q8_0·q8_0 row of {n_blocks} blocks", fontsize=9.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def isa_table() -> str:
    try:
        from mlaref.codegen import isa  # noqa: PLC0415
    except ImportError as exc:
        return f"*The ISA table (`codegen/isa.py`) is not available in this build ({exc}).*"
    rows = ["| token | arch | CPU features | gcc flags | vector bits | priority | NumPy | Highway | ggml macros |",
            "|---|---|---|---|---:|---:|---|---|---|"]
    for t in sorted(isa.ISAS.values(), key=lambda t: (t.arch, t.priority)):
        rows.append(
            f"| `{t.token}` | {t.arch} | {' '.join(t.features) or '(none)'} | "
            f"{' '.join(f'`{c}`' for c in t.cflags) or '(none)'} | "
            f"{t.vector_bits} | {t.priority} | {t.numpy} | {t.highway} | {t.ggml} |"
        )
    return "\n".join(rows)


def kernel_tables() -> str:
    import mlaref.generated  # noqa: PLC0415

    path = Path(mlaref.generated.__file__).resolve().parent / "manifest.json"
    if not path.is_file():
        return "*No kernels generated yet (`generated/manifest.json` is missing; run `mlaref generate`).*"
    kernels = json.loads(path.read_text(encoding="utf-8"))["kernels"]
    families: dict[str, list[tuple[str, dict]]] = {}
    for name, k in sorted(kernels.items()):
        families.setdefault(k["family"], []).append((name, k))
    out = [f"{len(kernels)} kernels in {len(families)} families, read from `generated/manifest.json`.", "",
           "| family | template | kernels | ISAs | plans |", "|---|---|---:|---|---|"]
    for fam, ks in families.items():
        isas = sorted({k["isa"] for _, k in ks})
        plans = sorted({k["plan"] for _, k in ks})
        out.append(f"| {fam} | `{ks[0][1]['template']}` | {len(ks)} | {', '.join(isas)} | {', '.join(plans)} |")
    for fam, ks in families.items():
        out += ["", f"### {fam}", "", "| kernel | type x | type y | ISA | plan |", "|---|---|---|---|---|"]
        out += [f"| `{n}` | {k.get('type_x', '')} | {k.get('type_y', '')} | {k['isa']} | {k['plan']} |" for n, k in ks]
    return "\n".join(out)
