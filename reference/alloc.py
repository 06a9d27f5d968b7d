"""An exact model of ggml's graph allocator: compute-buffer size, tensor offsets and the live set at the peak.

Reproduces ``ggml-alloc.c@676f0e71b`` (ik_llama.cpp) as the CPU back-end runs it during llama.cpp's
worst-case reserve (upstream facts §6.1 to §6.3):

Dynamic allocator (``ggml_dyn_tallocr``)
    a free-block list sorted by offset, reset to one "tail" block ``[0, SIZE_MAX/2)``. ``alloc(size)``
    rounds ``size`` up to the alignment (CPU: 32) and takes the best fit among all blocks **except the tail**
    (smallest block ``>= size``; on equal sizes the later block wins, the test is ``<=``), else the tail;
    ``max_size = max(max_size, offset + size)``. ``free`` merges with the block ending at the offset (then with
    the next one), else with the block starting at its end (then with the previous one), else inserts a block
    in offset order (at most 256 blocks).
Graph pass (``ggml_gallocr_alloc_graph_impl``)
    1. leafs in graph order: those without data (the inputs) get memory;
    2. count: each view node bumps ``n_views`` of its base; each src bumps that src's ``n_children`` (ggml_cast's
       self-src included); input-flagged tensors are allocated;
    3. nodes in order: allocate the srcs (a no-op by now) and the node, then decrement each src's
       ``n_children``; a src with no children and no views is freed (a view instead decrements its base's
       ``n_views`` and frees the base when that has neither). Outputs are never freed.
    In place: a node whose op is in :data:`~mlaref.reference.graphs.ir.IN_PLACE_OPS` takes the memory of its
    first src that it owns, that is no output, has the same type/ne/nb and has this node as its only remaining
    child and no views.
Buffer
    ggml-alloc reserves ``max_size``; ``ggml_backend_cpu_buffer_type_alloc_buffer`` adds ``TENSOR_ALIGNMENT``
    (32) and llama.cpp prints ``size / 1024 / 1024`` with ``%8.2f`` ("CPU compute buffer size").

KV cache (``llama_kv_cache_init``, upstream facts §2): ``n_layer · n_ctx · row_size(type, kv_lora_rank + n_rot)``.

The CLI command ``mlaref plan`` lives here (:func:`configure`, :func:`run`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from mlaref.reference.graphs import ir

__all__ = [
    "CPU_ALIGNMENT", "CPU_BUFFER_EXTRA", "MAX_FREE_BLOCKS", "DynAllocator", "AllocResult", "LiveTensor",
    "allocate_graph", "kv_cache_bytes", "compute_buffer", "SEED_TABLE", "PRINTED_TABLE", "mib", "configure", "run",
]

CPU_ALIGNMENT = 32  # ggml_backend_cpu_buffer_type_get_alignment = TENSOR_ALIGNMENT
CPU_BUFFER_EXTRA = 32  # ggml_backend_cpu_buffer_type_alloc_buffer: size += TENSOR_ALIGNMENT
MAX_FREE_BLOCKS = 256
_SIZE_MAX_HALF = (2**64 - 1) // 2

# The seed's table (PR #253's text; DeepSeek-V2-Lite, f16 cache, -mla 2 -fa, ubatch 512): context ->
# (KV cache MiB, compute buffer PR MiB, compute buffer main MiB), as printed strings.
SEED_TABLE = {
    2048: ("60.75", "204.00", "204.00"),
    4096: ("121.50", "204.00", "204.00"),
    8192: ("243.00", "220.01", "358.01"),
    16384: ("486.00", "452.01", "712.01"),
    32768: ("972.00", "884.01", "1404.02"),
    65536: ("1944.00", "1748.01", "2788.02"),
    131072: ("3888.00", "3476.02", "5556.02"),
}

# What ik_llama.cpp itself prints for the same architecture (upstream facts §6.6): the seed's four ".02" cells
# read ".01" there. The model must reproduce these.
PRINTED_TABLE = {
    2048: ("204.00", "204.00"),
    4096: ("204.00", "204.00"),
    8192: ("220.01", "358.01"),
    16384: ("452.01", "712.01"),
    32768: ("884.01", "1404.01"),
    65536: ("1748.01", "2788.01"),
    131072: ("3476.01", "5556.01"),
}

# variant -> the seed column it corresponds to
VARIANT_COLUMN = {"direct": "PR", "f32": "main", "chunked": None}


def mib(n_bytes: int) -> str:
    """llama.cpp's ``%8.2f`` of ``n / 1024 / 1024`` (without the padding)."""
    return f"{n_bytes / 1024.0 / 1024.0:.2f}"


class DynAllocator:
    """``ggml_dyn_tallocr``: best-fit free list with a tail block; measures ``max_size``."""

    def __init__(self, alignment: int = CPU_ALIGNMENT):
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of 2, got {alignment}")
        self.alignment = alignment
        self.reset()

    def reset(self) -> None:
        self.blocks: list[list[int]] = [[0, _SIZE_MAX_HALF]]  # [offset, size], sorted by offset
        self.max_size = 0

    def _align(self, size: int) -> int:
        a = self.alignment
        return (size + a - 1) // a * a

    def alloc(self, size: int) -> int:
        size = self._align(size)
        blocks = self.blocks
        best = -1
        best_size = _SIZE_MAX_HALF * 2 + 1
        for i in range(len(blocks) - 1):
            bsize = blocks[i][1]
            if size <= bsize <= best_size:
                best = i
                best_size = bsize
        if best == -1:
            best = len(blocks) - 1
            if blocks[best][1] < size:
                raise MemoryError(f"dyn allocator: no block of {size} B")
        block = blocks[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del blocks[best]
        if offset + size > self.max_size:
            self.max_size = offset + size
        return offset

    def free(self, offset: int, size: int) -> None:
        size = self._align(size)
        blocks = self.blocks
        n = len(blocks)
        for i in range(n):
            b = blocks[i]
            if b[0] + b[1] == offset:
                b[1] += size
                if i < n - 1 and b[0] + b[1] == blocks[i + 1][0]:
                    b[1] += blocks[i + 1][1]
                    del blocks[i + 1]
                return
            if offset + size == b[0]:
                b[0] = offset
                b[1] += size
                if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == b[0]:
                    blocks[i - 1][1] += b[1]
                    del blocks[i]
                return
        if n >= MAX_FREE_BLOCKS:
            raise RuntimeError("dyn allocator: out of free blocks (ggml asserts MAX_FREE_BLOCKS = 256)")
        pos = 0
        while pos < n and blocks[pos][0] < offset:
            pos += 1
        blocks.insert(pos, [offset, size])


@dataclass(frozen=True)
class LiveTensor:
    """A tensor holding allocator memory at some moment: name, op, offset and ggml_nbytes."""

    name: str
    op: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class AllocResult:
    """The outcome of one allocation pass.

    ``events`` is the timeline: ``(kind, node_index, tensor, offset, size)`` with kind ``alloc``, ``free`` or
    ``reuse`` (in place: the node takes its parent's block); node_index is -1 in the leaf pass.
    ``peak_event`` is the index of the allocation that set the final ``max_size``.
    """

    max_size: int
    offsets: dict = field(repr=False)
    events: list = field(repr=False)
    peak_event: int
    buffer_extra: int = CPU_BUFFER_EXTRA

    @property
    def buffer_size(self) -> int:
        """Bytes of the CPU compute buffer (``max_size + 32``)."""
        return self.max_size + self.buffer_extra

    @property
    def buffer_mib(self) -> str:
        return mib(self.buffer_size)

    def live_after(self, event_index: int) -> list[LiveTensor]:
        """Tensors holding memory right after event ``event_index``, in offset order."""
        live: dict[int, object] = {}
        for kind, _, t, off, _size in self.events[: event_index + 1]:
            if kind == "alloc":
                live[id(t)] = (t, off)
            elif kind == "free":
                live.pop(id(t), None)
            else:  # reuse: the node takes the parent's block
                parent = _size
                live.pop(id(parent), None)
                live[id(t)] = (t, off)
        out = [LiveTensor(t.name, t.op, off, t.nbytes) for t, off in live.values()]
        return sorted(out, key=lambda x: x.offset)

    def peak_live(self) -> list[LiveTensor]:
        """What is alive when the buffer reaches its size (upstream facts §6.5)."""
        return self.live_after(self.peak_event)

    @property
    def peak_tensor(self):
        """The tensor whose allocation set ``max_size``."""
        return self.events[self.peak_event][2]

    def peak_gaps(self, alignment: int = CPU_ALIGNMENT) -> list[tuple[int, int]]:
        """Free ranges ``(offset, size)`` below ``max_size`` at the peak (holes between live tensors)."""
        gaps = []
        pos = 0
        for lt in self.peak_live():
            if lt.offset > pos:
                gaps.append((pos, lt.offset - pos))
            pos = max(pos, lt.offset + (lt.size + alignment - 1) // alignment * alignment)
        return gaps

    def usage(self) -> list[tuple[int, int]]:
        """The timeline as ``(node_index, live bytes)`` after every event (aligned sizes, leaf pass = -1)."""
        a = CPU_ALIGNMENT
        live = 0
        out = []
        for kind, node_index, t, _off, _ in self.events:
            if kind == "alloc":
                live += (t.nbytes + a - 1) // a * a
            elif kind == "free":
                live -= (t.nbytes + a - 1) // a * a
            out.append((node_index, live))
        return out


def allocate_graph(graph: ir.Graph, alignment: int = CPU_ALIGNMENT) -> AllocResult:
    """Run ``ggml_gallocr_reserve``'s allocation pass over ``graph`` (single CPU buffer)."""
    dyn = DynAllocator(alignment)
    n_children: dict = {}
    n_views: dict = {}
    offset: dict = {}
    owned: set = set()  # hash_node.allocated
    events: list = []
    peak = [-1, 0]  # event index, max_size then
    in_place = ir.IN_PLACE_OPS
    node_index = [-1]

    def allocate(node) -> None:
        if node.external or node in owned or node.view_src is not None:
            return
        owned.add(node)
        if node.op in in_place:
            for parent in node.src:
                if parent is None or parent not in owned:
                    continue
                if parent.flags & ir.FLAG_OUTPUT or (parent.view_src is not None
                                                    and parent.view_src.flags & ir.FLAG_OUTPUT):
                    continue
                if not node.same_layout(parent):
                    continue
                if n_children.get(parent, 0) == 1 and n_views.get(parent, 0) == 0:
                    if parent.view_src is not None:
                        vs = parent.view_src
                        same_data = (not parent.external) or parent.view_offs == 0
                        if n_views.get(vs, 0) == 1 and n_children.get(vs, 0) == 0 and same_data:
                            offset[node] = offset[parent]
                            owned.discard(parent)
                            owned.discard(vs)
                            events.append(("reuse", node_index[0], node, offset[node], parent))
                            return
                    else:
                        offset[node] = offset[parent]
                        owned.discard(parent)
                        events.append(("reuse", node_index[0], node, offset[node], parent))
                        return
        before = dyn.max_size
        off = dyn.alloc(node.nbytes)
        offset[node] = off
        events.append(("alloc", node_index[0], node, off, node.nbytes))
        if dyn.max_size > before:
            peak[0] = len(events) - 1
            peak[1] = dyn.max_size

    def free(node) -> None:
        if node.flags & ir.FLAG_OUTPUT:
            return
        dyn.free(offset[node], node.nbytes)
        owned.discard(node)
        events.append(("free", node_index[0], node, offset[node], node.nbytes))

    for leaf in graph.leafs:
        allocate(leaf)

    for node in graph.nodes:
        if node.view_src is not None and node.op != "NONE":
            n_views[node.view_src] = n_views.get(node.view_src, 0) + 1
        if node.flags & ir.FLAG_INPUT:
            allocate(node)
        for s in node.src:
            if s is None:
                continue
            n_children[s] = n_children.get(s, 0) + 1
            if s.flags & ir.FLAG_INPUT:
                allocate(s)

    for i, node in enumerate(graph.nodes):
        node_index[0] = i
        for p in node.src:
            if p is not None:
                allocate(p)
        allocate(node)
        for p in node.src:
            if p is None:
                continue
            c = n_children[p] - 1
            n_children[p] = c
            if c == 0 and n_views.get(p, 0) == 0:
                vs = p.view_src
                if vs is not None:
                    v = n_views[vs] - 1
                    n_views[vs] = v
                    if v == 0 and n_children.get(vs, 0) == 0 and vs in owned:
                        free(vs)
                elif p in owned:
                    free(p)

    return AllocResult(max_size=dyn.max_size, offsets=offset, events=events, peak_event=peak[0])


# -- the DeepSeek-V2 memory plan -------------------------------------------------------------------------
def kv_cache_bytes(hp, n_ctx: int, cache_type: str = "f16") -> int:
    """MLA KV cache bytes for mla = 2 with FA: ``n_layer · n_ctx · row_size(cache_type, 576)`` (upstream facts §2)."""
    if cache_type not in ("f16", "q8_0", "bf16"):
        raise ValueError(f"cache_type must be f16, q8_0 or bf16, got {cache_type!r}")
    if not isinstance(n_ctx, int) or n_ctx <= 0:
        raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
    return hp.n_layer * n_ctx * ir.row_size(cache_type, hp.kv_row_elems)


def compute_buffer(hp, n_ctx: int, *, variant: str = "direct", cache_type: str = "f16", **build_kw) -> AllocResult:
    """Worst-case reserve: build the prompt graph for ``n_ctx`` and run the allocator over it."""
    from mlaref.reference.graphs import deepseek2

    g = deepseek2.build_graph(hp, n_ctx, variant=variant, cache_type=cache_type, **build_kw)
    return allocate_graph(g.graph)


# -- CLI: mlaref plan -------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    from mlaref.reference.hparams import PRESETS

    parser.add_argument("--model", default="deepseek-v2-lite", choices=sorted(PRESETS),
                        help="hyper-parameter preset (default deepseek-v2-lite)")
    parser.add_argument("--ctx", type=int, nargs="+", default=sorted(SEED_TABLE),
                        help="context sizes (multiples of 256; default: the seed's 2048..131072)")
    parser.add_argument("--variant", choices=("f32", "direct", "chunked"), action="append",
                        help="FlashMLA-2 graph variant(s) (default: all three)")
    parser.add_argument("--cache-type", default="f16", choices=("f16", "q8_0", "bf16"), help="KV cache type")
    parser.add_argument("--kv-chunk", type=int, default=None, help="chunk length (cells) of the chunked variant")
    parser.add_argument("--plot", metavar="FILE.png", help="write compute buffer vs context for the variants")
    parser.add_argument("--json", metavar="FILE", help="write the table as JSON")


def _plan_rows(hp, ctxs, variants, cache_type, kv_chunk):
    rows = []
    for n_ctx in ctxs:
        row = {"n_ctx": n_ctx, "kv_bytes": kv_cache_bytes(hp, n_ctx, cache_type), "buffer_bytes": {}}
        for v in variants:
            kw = {"kv_chunk": kv_chunk} if (v == "chunked" and kv_chunk) else {}
            row["buffer_bytes"][v] = compute_buffer(hp, n_ctx, variant=v, cache_type=cache_type, **kw).buffer_size
        rows.append(row)
    return rows


def run(args) -> int:
    from mlaref.reference.hparams import preset

    hp = preset(args.model)
    variants = args.variant or ["f32", "direct", "chunked"]
    try:
        rows = _plan_rows(hp, args.ctx, variants, args.cache_type, args.kv_chunk)
    except ValueError as exc:
        print(f"mlaref plan: {exc}", file=sys.stderr)
        return 2
    seed = hp.name == "deepseek-v2-lite" and args.cache_type == "f16"
    head = f"{'n_ctx':>7} {'KV MiB':>9}"
    if seed:
        head += f" {'(seed)':>9}"
    for v in variants:
        head += f" {v + ' MiB':>12}"
        if seed and VARIANT_COLUMN[v]:
            head += f" {'(seed ' + VARIANT_COLUMN[v] + ')':>12} {'(ik prints)':>11}"
    print(f"{hp.name}, cache {args.cache_type}, ubatch 512, worst-case reserve (CPU compute buffer)")
    print(head)
    for row in rows:
        n = row["n_ctx"]
        line = f"{n:>7} {mib(row['kv_bytes']):>9}"
        if seed:
            line += f" {SEED_TABLE.get(n, ('-',))[0]:>9}"
        for v in variants:
            line += f" {mib(row['buffer_bytes'][v]):>12}"
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
            json.dump({"model": hp.name, "cache_type": args.cache_type, "rows": rows}, f, indent=1)
    if args.plot:
        _plot(hp, rows, variants, args.plot)
    return 0


def _plot(hp, rows, variants, path) -> None:
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
    ax.set_title(f"{hp.name}: CPU buffers vs context (ubatch 512)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
