"""Graph IR and DeepSeek-V2 MLA builders.

* :mod:`.ir`: tensors, views and op constructors with ggml's shape/stride/byte rules, and the forward-graph DFS.
* :mod:`.deepseek2`: the DeepSeek-V2 graph (``build_deepseek2``) in the ``f32`` / ``direct`` / ``chunked``
  FlashMLA-2 variants and the TG path.
* The allocator model that consumes these graphs is :mod:`mlaref.reference.alloc`.

The executor (to come, once the ops in :mod:`mlaref.reference.ops` land) is expected to look like::

    run_graph(g: MLAGraph, *, weights: dict[str, np.ndarray], kv_cache: list[np.ndarray],
              inputs: dict[str, np.ndarray], plan=None, keep=()) -> dict[str, np.ndarray]

walking ``g.graph.nodes`` in order, and for each node calling the op of its ``op`` string
(``reference/ops/<op>.py``, e.g. ``forward(node, *srcs, plan=...)``) on the source arrays, where a view
(VIEW / RESHAPE / PERMUTE / TRANSPOSE, and CPY's result which aliases its destination) is a byte view
``(base buffer, view_offs, ne, nb)`` of its ``view_src`` and every other tensor owns a byte buffer of
``ggml_nbytes``. Weights are given as raw bytes of their types (``g.weights`` names them), the KV cache as
one ``(n_ctx, row_bytes)`` uint8 array per layer (``g.kv_cache``), inputs by name (``g.inputs``: inp_tokens,
inp_pos, KQ_mask (f32, or f16 for the chunked variant), inp_out_ids). ``keep`` lists node names whose
values are returned besides ``result_output``; everything else may be dropped when the allocator model
says it is dead, so the executor can run the whole model in the compute-buffer size :mod:`..alloc` predicts.
``FLASH_ATTN_EXT_PARTIAL`` and ``FA_MERGE`` follow the semantics in :mod:`.ir`'s docstring; the chunk length
is part of the reduction plan (a ``kv_chunks`` parameter), merged left to right.
"""
