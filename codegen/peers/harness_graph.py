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
chunked FlashMLA-2 ops, the MoE fusions) raise ``NotImplementedError``.
"""

from __future__ import annotations

from mlaref.codegen.peers import harness
from mlaref.reference.graphs import executor, ir
from mlaref.reference.tensor import Tensor

__all__ = ["run_graph", "OPS"]

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
    res = gr.run(outs, n_threads=n_threads, mem_bytes=_mem(graph))
    return dict(zip(names, res))


def _packed(t: ir.Tensor) -> bool:
    return t.is_contiguous()


def _mem(graph) -> int:
    """Context bytes: every leaf and node once (views too, generously), twice, plus 256 MiB for work buffers."""
    total = sum(t.nbytes for t in graph.leafs) + sum(t.nbytes for t in graph.nodes)
    return 2 * total + (256 << 20)
