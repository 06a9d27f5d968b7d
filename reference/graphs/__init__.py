"""Graph IR and DeepSeek-V2 MLA builders.

* :mod:`.ir`: tensors, views and op constructors with ggml's shape/stride/byte rules, and the forward-graph DFS.
* :mod:`.deepseek2`: the DeepSeek-V2 graph (``build_deepseek2``) in the ``f32`` / ``direct`` / ``chunked``
  FlashMLA-2 variants and the TG path.
* :mod:`.alloc`: the model of ggml's graph allocator that consumes these graphs (compute-buffer size, offsets,
  the live set at the peak) and the KV-cache size.
* :mod:`.executor`: ``run_graph(g, *, weights, kv_cache, inputs, keep=(), impl=None, options=None, stats=None)``
  runs a built graph node by node on the reference ops (views are byte views of their base, so the cache
  store writes the KV cache in place; buffers are dropped after their last reader) and returns the kept
  tensors as :class:`~mlaref.reference.tensor.Tensor`. ``impl={op: fn}`` swaps in another implementation per
  op (e.g. a generated kernel); ``options`` passes per-op keywords (plans, variants).
* :mod:`.synthetic`: small deterministic DeepSeek-V2-shaped models to run through it.
* :mod:`.from_gguf`: the same for the weights of an opened GGUF file (:mod:`mlaref.reference.gguf`).

``FLASH_ATTN_EXT_PARTIAL`` and ``FA_MERGE`` follow the semantics in :mod:`.ir`'s docstring; the chunk length
is part of the reduction plan (a ``kv_chunks`` parameter), merged left to right.
"""
