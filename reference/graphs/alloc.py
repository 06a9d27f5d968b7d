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
Versions (:data:`ALLOCATORS`, upstream facts §6.7)
    ``ik-676f0e71b`` (the default) is the above. ik_llama.cpp's April-2026 snapshot (``ik-2026-04``) adds
    ADD_ID to the in-place ops; ggml 0.25.3 (``ggml-0.25.3``) adds more in-place ops and its CPU buffer adds
    nothing to ``max_size``. Their chunked buffers, tail choice and freeing of a larger parent's rest change
    nothing on the CPU back-end (one chunk; a parent taken in place has the node's size).

KV cache (``llama_kv_cache_init``, upstream facts §2): ``n_layer · n_ctx · row_size(type, kv_lora_rank + n_rot)``.

:func:`plan_rows` is the table ``mlaref plan`` prints (:mod:`mlaref.codegen.cli.plan`); :func:`kv_cache_plan`
the KV cache of an opened GGUF file that ``mlaref inspect`` prints (:mod:`mlaref.codegen.cli.inspect`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from mlaref.reference.graphs import deepseek2, ir
from mlaref.reference.hparams import pad_ctx

__all__ = [
    "CPU_ALIGNMENT", "CPU_BUFFER_EXTRA", "MAX_FREE_BLOCKS", "DynAllocator", "AllocResult", "LiveTensor",
    "Allocator", "ALLOCATORS", "DEFAULT_ALLOCATOR",
    "allocate_graph", "kv_cache_bytes", "compute_buffer", "plan_rows", "kv_cache_plan", "SEED_TABLE", "PRINTED_TABLE",
    "VARIANT_COLUMN", "mib",
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
VARIANT_COLUMN = {"direct": "PR", "f32": "main", "chunked": None, "mla3": None, "mla3-amb": None, "mainline": None}


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


@dataclass(frozen=True)
class Allocator:
    """One version of ggml-alloc with the CPU buffer type: what of it changes a compute buffer (upstream facts §6.7).

    ``in_place_ops``: ``ggml_op_can_inplace``; ``buffer_extra``: what ``ggml_backend_cpu_buffer_type_alloc_buffer``
    adds to ``max_size``; ``source``: where it is read."""

    name: str
    source: str
    in_place_ops: frozenset
    buffer_extra: int


ALLOCATORS = {a.name: a for a in (
    Allocator("ik-676f0e71b", "ggml-alloc.c@676f0e71b, ggml-backend.c@676f0e71b", ir.IN_PLACE_OPS, CPU_BUFFER_EXTRA),
    Allocator("ik-2026-04", "ggml/src/ggml-alloc.c, ggml/src/ggml-backend.cpp of ik-llama-cpp-python 0.1.5",
              ir.IN_PLACE_OPS | {"ADD_ID"}, CPU_BUFFER_EXTRA),
    Allocator("ggml-0.25.3", "ggml/src/ggml-alloc.c, ggml/src/ggml-backend.cpp of llama-cpp-python 0.3.36",
              ir.IN_PLACE_OPS | {"FILL", "ADD_ID", "ROPE_BACK", "SILU_BACK", "RMS_NORM_BACK", "CLAMP",
                                 "SOFT_MAX_BACK"}, 0),
)}
DEFAULT_ALLOCATOR = "ik-676f0e71b"


def allocate_graph(graph: ir.Graph, alignment: int = CPU_ALIGNMENT, allocator: str = DEFAULT_ALLOCATOR) -> AllocResult:
    """Run ``ggml_gallocr_reserve``'s allocation pass over ``graph`` (single CPU buffer) as ``allocator`` (a name
    in :data:`ALLOCATORS`) does."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {', '.join(ALLOCATORS)}; got {allocator!r}")
    spec = ALLOCATORS[allocator]
    dyn = DynAllocator(alignment)
    n_children: dict = {}
    n_views: dict = {}
    offset: dict = {}
    owned: set = set()  # hash_node.allocated
    events: list = []
    peak = [-1, 0]  # event index, max_size then
    in_place = spec.in_place_ops
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

    return AllocResult(max_size=dyn.max_size, offsets=offset, events=events, peak_event=peak[0],
                       buffer_extra=spec.buffer_extra)


# -- the DeepSeek-V2 memory plan -------------------------------------------------------------------------
def kv_cache_bytes(hp, n_ctx: int, cache_type: str = "f16") -> int:
    """MLA KV cache bytes for mla = 2 with FA: ``n_layer · n_ctx · row_size(cache_type, 576)`` (upstream facts §2).

    The same for every variant of :mod:`~mlaref.reference.graphs.deepseek2`: mla = 3, the RoPE-first row and
    ``-amb`` keep one 576-wide row per cell, and mainline llama.cpp caches the same row with no V cache (upstream
    facts §9.4). q8_KV rows carry 8 bytes of metadata (584 B for 576 values)."""
    if cache_type not in deepseek2.CACHE_TYPES:
        raise ValueError(f"cache_type must be one of {', '.join(deepseek2.CACHE_TYPES)}, got {cache_type!r}")
    if not isinstance(n_ctx, int) or n_ctx <= 0:
        raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
    return hp.n_layer * n_ctx * ir.row_size(cache_type, hp.kv_row_elems)


def compute_buffer(hp, n_ctx: int, *, variant: str = "direct", cache_type: str = "f16", **build_kw) -> AllocResult:
    """Worst-case reserve: build the prompt graph for ``n_ctx`` and run the allocator over it."""
    g = deepseek2.build_graph(hp, n_ctx, variant=variant, cache_type=cache_type, **build_kw)
    return allocate_graph(g.graph)


def plan_rows(hp, ctxs, variants, cache_type: str = "f16", kv_chunk: int | None = None,
              amb_mib: int | None = None, n_ubatch: int | None = None) -> list[dict]:
    """Per context: ``{"n_ctx", "kv_bytes", "buffer_bytes": {variant: compute buffer bytes}}`` (``mlaref plan``).

    ``kv_chunk`` goes to the ``chunked`` variant only (None: its default chunk), ``amb_mib`` to ``mla3-amb`` only
    (None: 256 MiB), ``n_ubatch`` (None: 512) to every variant. Each variant's worst-case graph is built with its
    own defaults otherwise (see :func:`mlaref.reference.graphs.deepseek2.build_graph`).
    """
    rows = []
    for n_ctx in ctxs:
        row = {"n_ctx": n_ctx, "kv_bytes": kv_cache_bytes(hp, n_ctx, cache_type), "buffer_bytes": {}}
        for v in variants:
            kw = {"kv_chunk": kv_chunk} if (v == "chunked" and kv_chunk) else {}
            if v == "mla3-amb" and amb_mib is not None:
                kw["amb_mib"] = amb_mib
            if n_ubatch is not None:
                kw["n_ubatch"] = n_ubatch
            row["buffer_bytes"][v] = compute_buffer(hp, n_ctx, variant=v, cache_type=cache_type, **kw).buffer_size
        rows.append(row)
    return rows


def kv_cache_plan(hp: dict, n_ctx: int, cache_type: str = "f16") -> dict:
    """The MLA KV cache of ``-mla 2 -fa`` (upstream facts §2): a ``[kv_lora_rank + n_rot, kv_size]`` tensor per layer.

    ``hp`` is the dict :func:`mlaref.reference.gguf.read_hparams` returns. kv_size = n_ctx rounded up to 256
    (flash attention, :func:`mlaref.reference.hparams.pad_ctx`); the bytes come from :func:`kv_cache_bytes`
    (``n_layer * kv_size * row_size(cache_type, 576)``).
    """
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx <= 0:
        raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
    kv_size = pad_ctx(n_ctx, flash_attn=True)
    one_layer = SimpleNamespace(n_layer=1, kv_row_elems=hp["kv_row"])
    per_layer = kv_cache_bytes(one_layer, kv_size, cache_type)
    return {"n_ctx": n_ctx, "kv_size": kv_size, "type": cache_type, "ne": (hp["kv_row"], kv_size),
            "row_bytes": ir.row_size(cache_type, hp["kv_row"]), "bytes_per_layer": per_layer,
            "n_layer": hp["n_layer"], "bytes": per_layer * hp["n_layer"]}
