"""Run an mlaref IR graph (``mlaref.reference.graphs``) on a real ggml through the harness loaded in this process.

:func:`run_graph` takes the same arguments as :func:`mlaref.reference.graphs.executor.run_graph` and builds the
graph's nodes with the peer's own API calls, in the IR's graph order (:mod:`.harness` expands every node in the
order given, so the cache store runs before the reads of the cache, as in llama.cpp's graph):

* leaves (weights, the KV cache, inputs) are bound as the executor binds them (``bind_leaf``) and passed as
  inputs; the harness computes on its own copies, so the caller's cache is not written;
* views (VIEW / RESHAPE / PERMUTE / TRANSPOSE, and the cache view a CPY writes) become ``ggml_view_4d`` of the
  IR's ``view_src`` with the IR's ``ne``, all four ``nb`` and ``view_offs``: the tensor ``ggml_permute`` and
  friends would have made;
* ``ggml_cast`` (a CPY whose ``src[1]`` is itself) becomes ``ggml_cpy`` into a new tensor of the target type;
* every other op is the ggml call of the same name with the IR's ``op_params``.

The tensors named in ``keep`` and the graph output come back as contiguous mlaref Tensors (a view is copied out
with ``ggml_cont``, which copies bytes for the element and block types here). IR ops ggml lacks (mlaref's
chunked FlashMLA-2 ops, the MoE fusions) raise ``NotImplementedError``. :func:`prepare_graph` builds the same
graph once and leaves it to be computed many times (:class:`PreparedGraph`; a benchmark times its computes).

:func:`reserve` builds any IR graph (an MLAGraph or an ``ir.Graph``) as llama.cpp builds its graph before the
worst-case reserve and measures it with the peer's own ggml-alloc (``mh_graph_reserve``): nothing is computed, no
data is passed. The differences from :func:`run_graph`'s build are what the allocator sees:

* leaves with data (weights, the KV cache: ``external`` in the IR) are tensors of a CPU buffer of their own,
  allocated before any view of them is made (a view takes its data when it is made); the other leaves (the
  inputs) are tensors without data, flagged with ``ggml_set_input`` where the IR flags them; FLAG_OUTPUT is
  passed on as ``ggml_set_output``;
* a view is ``ggml_view_4d`` of the IR's ``src[0]`` (the tensor it was made of, not its base), so the allocator
  counts the same children;
* ``ggml_cast`` is ``ggml_cast`` (its ``src[1]`` is itself, as the allocator counts it), ``ggml_repeat`` takes a
  shape tensor that is no part of the graph; MUL_MAT_ID, ARGSORT, SET_ROWS and ik_llama.cpp's FUSED_MUL_UNARY,
  MULTI_ADD and MOE_FUSED_UP_GATE are built too (a peer without one says so).

:func:`first_difference` compares the result with :func:`mlaref.reference.graphs.alloc.allocate_graph`'s, tensor
by tensor in the model's allocation order; :data:`PEER_ALLOCATOR` names the allocator version each peer has.
:func:`lower_fused_rms_norm` rewrites ik_llama.cpp's FUSED_RMS_NORM as the RMS_NORM and MUL that
``llm_build_norm`` builds where ggml has no fused op (upstream ggml).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlaref.codegen.peers import harness
from mlaref.reference.graphs import executor, ir
from mlaref.reference.tensor import Tensor

__all__ = ["OPS", "PEER_ALLOCATOR", "GraphReserve", "PreparedGraph", "first_difference", "lower_fused_rms_norm",
           "prepare_graph", "reserve", "run_graph"]

# The allocator version (mlaref.reference.graphs.alloc.ALLOCATORS) of each peer's ggml-alloc.c
PEER_ALLOCATOR = {"ik-llama-cpp-python": "ik-2026-04", "llama-cpp-python": "ggml-0.25.3"}

_VIEWS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})
# IR op -> (harness op, ints from op_params, floats from op_params)
OPS = {
    "MUL_MAT": ("mul_mat", (), ()),
    "CONCAT": ("concat", ("dim",), ()),
    "GET_ROWS": ("get_rows", (), ()),
    "ADD": ("add", (), ()),
    "MUL": ("mul", (), ()),
    "SCALE": ("scale", (), ("scale",)),
    "RMS_NORM": ("rms_norm", (), ("eps",)),
    "FUSED_RMS_NORM": ("fused_rms_norm", (), ("eps",)),
    "CONT": ("cont", (), ()),
    "SOFT_MAX": ("soft_max_ext", (), ("scale", "max_bias")),
    "ROPE": ("rope_ext", ("n_dims", "mode", "n_ctx_orig"),
             ("freq_base", "freq_scale", "ext_factor", "attn_factor", "beta_fast", "beta_slow")),
    "FLASH_ATTN_EXT": ("flash_attn_ext", (), ("scale", "max_bias", "softcap")),
}


def run_graph(g, *, weights: dict, kv_cache: list, inputs: dict, keep=(), n_threads: int = 1) -> dict[str, Tensor]:
    """Compute ``g`` (an MLAGraph) on the loaded peer; the tensors named in ``keep`` and the output, by name."""
    prepared = prepare_graph(g, weights=weights, kv_cache=kv_cache, inputs=inputs, keep=keep)
    try:
        prepared.compute(n_threads)
        return prepared.outputs()
    finally:
        prepared.free()


class PreparedGraph:
    """An IR graph built once on the loaded peer (:func:`prepare_graph`): ``compute(n_threads)`` runs
    ``ggml_graph_compute_with_ctx`` over it (the same data each time; the inputs are not rewritten), ``outputs()``
    copies the tensors named in ``names`` out as contiguous mlaref Tensors, by name; ``free()`` releases it."""

    def __init__(self, prepared: harness.Prepared, names: list[str], ir_of: dict | None = None):
        self.prepared, self.names, self.ir_of = prepared, names, ir_of or {}

    def compute(self, n_threads: int = 1) -> None:
        self.prepared.compute(n_threads)

    def profile(self, n_threads: int = 1) -> list[tuple[str, str, float]]:
        """Each node of the peer's graph computed alone (:meth:`mlaref.codegen.peers.harness.Prepared.profile`):
        ``[(IR node name, IR op, seconds), ...]`` in the peer's graph order; a node with no IR node of its own
        (the ``cont`` of a kept view) is ``("(harness)", "CONT", s)``."""
        out = []
        for i, sec in self.prepared.profile(n_threads):
            name, op = self.ir_of.get(i, ("(harness)", "CONT"))
            out.append((name, op, sec))
        return out

    def outputs(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.prepared.outputs()))

    def free(self) -> None:
        self.prepared.free()


def prepare_graph(g, *, weights: dict, kv_cache: list, inputs: dict, keep=(), mem_bytes: int | None = None
                  ) -> PreparedGraph:
    """Build ``g`` (an MLAGraph) on the loaded peer as :func:`run_graph` does, without computing it: a
    :class:`PreparedGraph` to compute as often as wanted. Each compute makes its ``ggml_cgraph`` and work buffer
    in the graph's context, so ``mem_bytes`` (default: :func:`_mem`'s) bounds how many computes fit."""
    h = harness.loaded()
    graph = g.graph
    values = executor.leaf_values(g, weights, kv_cache, inputs)
    gr = h.graph()
    node_of: dict[int, int] = executor.bind_leaves(graph, values, gr.input)

    def src(t):
        return node_of[id(t)]

    for node in graph.nodes:
        if node.op in _VIEWS or (node.view_src is not None and node.op != "CPY"):
            node_of[id(node)] = gr.view(src(node.view_src), node.ne, node.nb, node.view_offs)
        elif node.op == "CPY":
            if node.src[1] is node:  # ggml_cast
                dst = gr.new(node.type, node.ne)
            else:
                dst = src(node.src[1])
            node_of[id(node)] = gr.op("cpy", src(node.src[0]), dst)
        elif node.op == "REPEAT":
            node_of[id(node)] = gr.op("repeat", src(node.src[0]), gr.new(node.type, node.ne))
        elif node.op in OPS:
            name, ints, floats = OPS[node.op]
            srcs = [None if s is None else src(s) for s in node.src]
            p = node.op_params
            node_of[id(node)] = gr.op(name, *srcs, ip=[p[k] for k in ints], fp=[p[k] for k in floats])
        else:
            raise NotImplementedError(f"node {node.name!r}: op {node.op} has no ggml counterpart in the harness")
        if node.op == "FLASH_ATTN_EXT" and node.op_params.get("prec") == "f32":
            gr.nodes[node_of[id(node)]].ip[0] = 1
    names = list(dict.fromkeys([*keep, *([g.output.name] if g.output is not None else [])]))
    outs = []
    for name in names:
        try:
            t = graph.find(name)
        except KeyError:
            raise ValueError(f"keep: no tensor named {name!r} in the graph") from None
        n = node_of[id(t)]
        outs.append(gr.op("cont", n) if t.view_src is not None or not _packed(t) else n)
    ir_of = {h: (node.name, node.op) for node in graph.nodes for h in [node_of.get(id(node))] if h is not None}
    return PreparedGraph(gr.prepare(outs, mem_bytes if mem_bytes is not None else _mem(graph)), names, ir_of)


def _packed(t: ir.Tensor) -> bool:
    return t.is_contiguous()


def _mem(graph) -> int:
    """Context bytes: every leaf and node once (views too, generously), twice, plus 256 MiB for work buffers."""
    total = sum(t.nbytes for t in graph.leafs) + sum(t.nbytes for t in graph.nodes)
    return 2 * total + (256 << 20)


# -- the worst-case reserve --------------------------------------------------------------------------------------

# reserve: IR ops built with their own harness op beyond OPS: (harness op, the IR src order the ggml call takes,
# ints from op_params)
_RESERVE_OPS = {
    "MUL_MAT_ID": ("mul_mat_id", (0, 1, 2), ()),
    "ARGSORT": ("argsort", (0,), ("order",)),
    "FUSED_MUL_UNARY": ("fused_mul_unary", (0, 1), ("unary",)),
    "MULTI_ADD": ("multi_add", (0,), ("n_experts",)),
    "MOE_FUSED_UP_GATE": ("moe_up_gate", (0, 1, 2, 3), ("unary",)),
    "SET_ROWS": ("set_rows", (2, 0, 1), ()),  # ggml_set_rows(a, b, c) makes src = {b, c, a}
}
_PARAM_CODES = {"order": {"asc": 0, "desc": 1}, "unary": harness.UNARY}


@dataclass(frozen=True)
class GraphReserve:
    """What the peer's ggml-alloc measured for an IR graph: ``buffer_size`` (``ggml_gallocr_get_buffer_size``),
    ``n_nodes`` of the ggml graph, ``node_order[i]`` = the index of IR node ``i`` among the ggml graph's nodes,
    ``leaf_offsets`` / ``node_offsets``: the byte offset of each IR leaf / node in the compute buffer, -1 where
    ggml-alloc placed nothing (weights, views); None if offsets were not asked for."""

    buffer_size: int
    n_nodes: int
    node_order: tuple
    leaf_offsets: tuple | None
    node_offsets: tuple | None


def reserve(g, offsets: bool = True) -> GraphReserve:
    """Build ``g`` (an MLAGraph or an ``ir.Graph``) on the loaded peer without data and measure it with the peer's
    ggml-alloc, as llama.cpp's worst-case reserve does (see the module docstring)."""
    graph = getattr(g, "graph", g)
    if not isinstance(graph, ir.Graph):
        raise TypeError(f"reserve takes an MLAGraph or an ir.Graph, got {type(g).__name__}")
    gr = harness.loaded().graph()
    node_of: dict[int, int] = {}

    def src(t):
        return node_of[id(t)]

    leaf_ids = []
    for t in graph.leafs:
        if t.view_src is not None:
            raise NotImplementedError(f"leaf {t.name!r} is a view without an op; reserve builds views as nodes")
        if t.external:
            if t.nb != ir.new_tensor(t.type, t.ne).nb:
                raise NotImplementedError(f"weight {t.name!r} is not contiguous; reserve makes contiguous weights")
            node_of[id(t)] = gr.weight(t.type, t.ne)
        else:
            node_of[id(t)] = gr.new(t.type, t.ne, flags=_flags(t))
        leaf_ids.append(node_of[id(t)])
    for node in graph.nodes:
        node_of[id(node)] = _reserve_node(gr, node, src)
        gr.nodes[node_of[id(node)]].flags = _flags(node)  # ggml_set_input / ggml_set_output when built
    res = gr.reserve(offsets=offsets)
    node_ids = [node_of[id(t)] for t in graph.nodes]
    offs = res.offsets
    return GraphReserve(res.buffer_size, res.n_nodes, tuple(res.order[i] for i in node_ids),
                        None if offs is None else tuple(offs[i] for i in leaf_ids),
                        None if offs is None else tuple(offs[i] for i in node_ids))


def _flags(t) -> int:
    """The IR tensor's FLAG_INPUT / FLAG_OUTPUT as the harness's flags."""
    return harness.FLAG_INPUT * bool(t.flags & ir.FLAG_INPUT) | harness.FLAG_OUTPUT * bool(t.flags & ir.FLAG_OUTPUT)


def _reserve_node(gr, node, src) -> int:
    op = node.op
    if op == "CPY" and node.src[1] is node:  # ggml_cast
        return gr.cast(src(node.src[0]), node.type)
    if op == "CPY":
        return gr.op("cpy", src(node.src[0]), src(node.src[1]))
    if op in _RESERVE_OPS:
        name, order, ints = _RESERVE_OPS[op]
        p = node.op_params
        ip = [_PARAM_CODES[k][p[k]] if k in _PARAM_CODES else p[k] for k in ints]
        return gr.op(name, *[src(node.src[k]) for k in order], ip=ip)
    if node.view_src is not None:  # VIEW / RESHAPE / PERMUTE / TRANSPOSE: a view of src[0], as ggml makes it
        a = node.src[0]
        base_offs = a.view_offs if a.view_src is not None else 0
        return gr.view(src(a), node.ne, node.nb, node.view_offs - base_offs)
    if op == "REPEAT":
        return gr.op("repeat", src(node.src[0]), gr.new(node.type, node.ne))
    if op in OPS:
        name, ints, floats = OPS[op]
        p = node.op_params
        r = gr.op(name, *[None if s is None else src(s) for s in node.src], ip=[p[k] for k in ints],
                  fp=[p[k] for k in floats])
        if op == "FLASH_ATTN_EXT" and p.get("prec") == "f32":
            gr.nodes[r].ip[0] = 1
        return r
    raise NotImplementedError(f"node {node.name!r}: op {op} has no ggml counterpart in the harness")


def first_difference(graph, model, real: GraphReserve) -> str | None:
    """The first disagreement between the model's allocation (``alloc.allocate_graph``'s AllocResult) and the
    peer's (:func:`reserve`), or None: the ggml graph's node order, then each tensor's offset in the model's
    allocation order (the leaves' and nodes' offsets; tensors the model never placed must be unplaced there too),
    then the buffer size."""
    graph = getattr(graph, "graph", graph)
    if real.n_nodes != len(graph.nodes) or list(real.node_order) != list(range(len(graph.nodes))):
        bad = next((i for i, k in enumerate(real.node_order) if k != i), len(graph.nodes))
        name = graph.nodes[bad].name if bad < len(graph.nodes) else "(the end)"
        return (f"the ggml graph has {real.n_nodes} nodes in another order (the IR has {len(graph.nodes)}); the "
                f"first out of place is IR node {bad} {name!r}")
    if real.node_offsets is not None:
        placed = {}
        for t, off in zip(graph.leafs, real.leaf_offsets):
            placed[id(t)] = off
        for t, off in zip(graph.nodes, real.node_offsets):
            placed[id(t)] = off
        everyone = [*graph.leafs, *graph.nodes]
        rank: dict[int, int] = {}
        for kind, _, t, _off, _ in model.events:
            if kind != "free":
                rank.setdefault(id(t), len(rank))
        for t in sorted(everyone, key=lambda t: rank.get(id(t), len(rank))):
            want = model.offsets.get(t, -1)
            if placed[id(t)] != want:
                return (f"{t.op} {t.name!r} ({t.nbytes} B): the model places it at {want}, the peer's ggml-alloc at "
                        f"{placed[id(t)]} (-1: not placed)")
    if model.buffer_size != real.buffer_size:
        return f"the buffer: the model says {model.buffer_size} B, the peer's ggml-alloc {real.buffer_size} B"
    return None


def lower_fused_rms_norm(g) -> ir.Graph:
    """A copy of ``g``'s graph where every FUSED_RMS_NORM(a, w) is RMS_NORM(a) followed by MUL(·, w), what
    ``llm_build_norm`` builds where ggml has no ``ggml_fused_rms_norm`` (upstream ggml). The copy's order is
    ggml's: every node expanded in the original order (the MUL takes the fused node's place and name)."""
    graph = getattr(g, "graph", g)
    new: dict[int, ir.Tensor] = {}

    def m(t):
        return None if t is None else new[id(t)]

    for t in graph.leafs:
        c = ir.Tensor(t.type, t.ne, t.nb, op=t.op, view_src=m(t.view_src), view_offs=t.view_offs,
                      op_params=t.op_params, name=t.name, external=t.external)
        c.flags = t.flags
        new[id(t)] = c
    out = ir.Graph()
    for t in graph.nodes:
        if t.op == "FUSED_RMS_NORM":
            c = ir.mul(ir.rms_norm(m(t.src[0]), t.op_params["eps"]), m(t.src[1]))
            c.name = t.name
        else:
            c = ir.Tensor(t.type, t.ne, t.nb, op=t.op, view_src=m(t.view_src), view_offs=t.view_offs,
                          op_params=t.op_params, name=t.name, external=t.external)
            c.src = [c if s is t else m(s) for s in t.src]
        c.flags = t.flags
        new[id(t)] = c
        out.expand(c)
    return out
