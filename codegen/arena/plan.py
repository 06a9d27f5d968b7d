"""Where every tensor of a graph lives: the allocator model's offsets in one compute buffer, and the plan's check.

ggml-alloc gives every tensor that is neither a view nor external one offset in a single compute buffer
(``ggml_gallocr_reserve`` / ``ggml_gallocr_alloc_graph``, ggml-alloc.c@676f0e71b; docs/facts/allocator.md);
:func:`mlaref.reference.graphs.alloc.allocate_graph` models it and records the timeline of allocations and frees.
:func:`placement` reads that record into a :class:`Placement`:

* ``offset[id(t)]`` for every allocated tensor (inputs included: ggml allocates them first, in the leaf pass);
* ``frees[i]``: the tensors whose memory the allocator releases while processing node ``i`` (their last reader),
  which the checking run of :mod:`mlaref.codegen.arena.executor` poisons right after node ``i``;
* ``size``: the compute buffer's bytes (``max_size`` + ggml's 32 extra).

Views take their base's offset plus ``view_offs``; weights and the KV cache (``external``) live in their own
buffers, as llama.cpp keeps the model and the cache outside the compute buffer.

:func:`check_placement` is the static half of the allocator check: it replays the timeline and raises
:class:`PlanError` when two tensors that are alive at the same time share bytes, or a tensor runs past the buffer.
The executor's checking run is the dynamic half (a node must not change a live tensor's bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlaref.reference.graphs import alloc as _alloc
from mlaref.reference.graphs import ir

__all__ = ["Placement", "PlanError", "placement", "check_placement", "aligned"]


class PlanError(ValueError):
    """A placement in which a tensor would overwrite another one that is still alive (or leave the buffer)."""


def aligned(n: int, alignment: int = _alloc.CPU_ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass
class Placement:
    """Offsets of the allocated tensors of ``graph`` in one compute buffer of ``size`` bytes (see the module doc)."""

    graph: ir.Graph
    offset: dict  # id(tensor) -> byte offset in the compute buffer
    tensors: dict  # id(tensor) -> the IR tensor
    frees: dict = field(default_factory=dict)  # node index -> [tensors freed there]
    size: int = 0
    in_place: frozenset = frozenset()  # {(id(parent), id(node))}: a node that took its parent's block

    def where(self, t: ir.Tensor):
        """``("compute", offset)`` for an allocated tensor or a view of one, ``("external", base)`` for a weight,
        the KV cache or a view of them (the base tensor, placed by its owner)."""
        base = t.view_src if t.view_src is not None else t
        extra = t.view_offs if t.view_src is not None else 0
        if base.external:
            return "external", base
        if id(base) not in self.offset:
            raise PlanError(f"tensor {t.name!r}: its base {base.name!r} has no offset in the plan")
        return "compute", self.offset[id(base)] + extra

    def moved(self, name: str, offset: int) -> "Placement":
        """A copy with tensor ``name`` (the first allocated one of that name) at ``offset``: a deliberately wrong
        plan for the allocator check's negative tests."""
        hits = [k for k, t in self.tensors.items() if t.name == name]
        if not hits:
            raise KeyError(f"no allocated tensor named {name!r}")
        off = dict(self.offset)
        off[hits[0]] = offset
        size = max(self.size, offset + aligned(self.tensors[hits[0]].nbytes) + _alloc.CPU_BUFFER_EXTRA)
        return Placement(self.graph, off, self.tensors, self.frees, size, self.in_place)


def placement(graph: ir.Graph, result: _alloc.AllocResult | None = None) -> Placement:
    """The allocator model's placement of ``graph`` (``allocate_graph`` unless its ``result`` is given)."""
    res = result if result is not None else _alloc.allocate_graph(graph)
    offset, tensors, frees, in_place = {}, {}, {}, set()
    for kind, node_index, t, off, parent in res.events:
        if kind in ("alloc", "reuse"):
            offset[id(t)] = off
            tensors[id(t)] = t
        if kind == "reuse":  # in place: the parent's block passes to the node, the parent is gone
            frees.setdefault(node_index, []).append(parent)
            in_place.add((id(parent), id(t)))
        elif kind == "free":
            frees.setdefault(node_index, []).append(t)
    return Placement(graph, offset, tensors, frees, res.buffer_size, frozenset(in_place))


def _lifetimes(p: Placement) -> dict[int, tuple[int, int]]:
    """id -> (first node index alive, last node index alive) of every placed tensor; -1 = before the first node,
    len(nodes) = still alive at the end."""
    nodes = p.graph.nodes
    born = {id(t): -1 for t in p.graph.leafs if id(t) in p.offset}
    for i, n in enumerate(nodes):
        if id(n) in p.offset and id(n) not in born:
            born[id(n)] = i
    died = {k: len(nodes) for k in born}
    for i, gone in p.frees.items():
        for t in gone:
            died[id(t)] = i
    return {k: (born[k], died[k]) for k in born}


def check_placement(p: Placement) -> None:
    """Raise :class:`PlanError` if two placed tensors alive at one node overlap, or one leaves the buffer.

    A tensor is alive from the node that writes it (inputs: from the start) through the node where the allocator
    frees it (its last reader: the node's own result is allocated before its sources are freed, so a result never
    shares bytes with a source it reads)."""
    life = _lifetimes(p)
    spans = []
    for k, (b, d) in life.items():
        t = p.tensors[k]
        lo, hi = p.offset[k], p.offset[k] + t.nbytes
        if hi > p.size:
            raise PlanError(f"tensor {t.name!r} needs bytes [{lo}, {hi}) of a {p.size}-byte buffer")
        spans.append((lo, hi, b, d, t))
    spans.sort(key=lambda s: s[0])
    for i, (lo, hi, b, d, t) in enumerate(spans):
        for lo2, hi2, b2, d2, t2 in spans[i + 1:]:
            if lo2 >= hi:
                break
            pair = {(id(t), id(t2)), (id(t2), id(t))}
            if b <= d2 and b2 <= d and t.nbytes and t2.nbytes and not pair & p.in_place:
                raise PlanError(f"tensors {t.name!r} [{lo}, {hi}) and {t2.name!r} [{lo2}, {hi2}) overlap while both "
                                f"are alive (nodes {max(b, b2)}..{min(d, d2)})")
