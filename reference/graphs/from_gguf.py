"""A GGUF model bound to the DeepSeek-V2 graphs: its weights, a KV cache and the inputs of a prompt, then run.

:class:`GGUFModel` plays, for an opened GGUF file (:func:`mlaref.reference.gguf.open_gguf`), the part
:class:`mlaref.reference.graphs.synthetic.SyntheticModel` plays for generated weights:

* ``build(n_ctx, ...)``: the graph of :func:`mlaref.reference.graphs.deepseek2.build_graph`, except that every
  weight leaf has **the file's type** (a GGUF file mixes types per tensor: ``attn_kv_b`` q8_0, ``attn_output``
  iq4_nl, norms f32, ...). The type must be known while building, because views of weights take their strides
  from it (``wv_b`` is viewed per head with ``row_size(type, rank)``), so the builder asks the file for each
  weight it creates instead of re-typing leaves afterwards.
* ``weights(g)``: the file's memory-mapped tensors by name, unchanged (no copy, no conversion). The graph names
  weights as llama.cpp's ``LLM_TENSOR_NAMES`` does (``blk.%d.attn_kv_b.weight``, ``token_embd.weight``,
  ``output.weight`` ...), and GGUF files store them under the same names (gguf-py's ``TENSOR_NAMES``), so the map
  from graph leaf to file tensor is the identity; each name is checked for presence, type and shape. The file's
  attention layout (``GGUFModel.layout``: ``ik`` wkv_b, ``both`` wkv_b and its 2-D halves, ``mainline`` 3-D
  ``attn_k_b`` / ``attn_v_b`` only; :mod:`mlaref.reference.gguf.loader`) decides which attention weights a builder
  can ask for: a graph that needs ``attn_kv_b`` cannot run on a mainline file, and the error says so.
* ``kv_cache(g)``: one zeroed ``[kv_lora_rank + n_rot, n_ctx]`` tensor per layer of the cache type (or copies of a
  caller's cache); the graph's CPY node writes the current micro-batch's cells in place.
* ``inputs(g, tokens)``: the tokens, positions ``kv_head + t``, the causal mask (cell ``i`` visible to token ``t``
  iff ``i <= kv_head + t``: cells ``< kv_head`` hold the earlier tokens of the same sequence; padded rows
  ``t >= T`` all ``-inf``) and ``inp_out_ids = 0..T-1`` (every token outputs logits).

:func:`run_gguf` does all of it for one micro-batch. Its default ``n_kv`` is llama.cpp's (``llama_decode_internal``,
src/llama.cpp@676f0e71b: ``kv_self.n = min(size, max(256, GGML_PAD(cell_max, 256)))`` with
``cell_max = kv_head + T`` once the batch's cells are taken), so a short prompt attends over 256 cells; pass
``n_kv`` to attend over more (cells past ``kv_head + T`` are masked, their contents never matter).
"""

from __future__ import annotations

import os

import numpy as np

from mlaref.reference import gguf
from mlaref.reference.graphs import deepseek2
from mlaref.reference.graphs.executor import run_graph
from mlaref.reference.hparams import FA_CTX_PAD
from mlaref.reference.tensor import Tensor

__all__ = ["GGUFModel", "run_gguf", "default_n_kv"]


def default_n_kv(n_ctx: int, kv_head: int, n_tokens: int) -> int:
    """llama.cpp's ``kv_self.n`` for a micro-batch in cells ``kv_head .. kv_head + n_tokens - 1`` of ``n_ctx``."""
    cell_max = kv_head + n_tokens
    return min(n_ctx, max(FA_CTX_PAD, -(-cell_max // FA_CTX_PAD) * FA_CTX_PAD))


class _FileTypedBuilder(deepseek2.Builder):
    """``build_deepseek2`` with each weight's type taken from the file (see the module docstring)."""

    def __init__(self, file_types: dict, layout: str | None, *args):
        super().__init__(*args)
        self.file_types = file_types
        self.layout = layout

    def w(self, name, ne, type_name=None):
        if name not in self.file_types:
            raise ValueError(f"the graph needs weight {name!r}, which the GGUF file does not hold (or holds in a "
                             f"type mlaref does not implement); the file's attention layout is {self.layout!r}")
        return super().w(name, ne, self.file_types[name])


class GGUFModel:
    """Weights, KV cache and inputs of a GGUF file for DeepSeek-V2 graphs (see the module docstring)."""

    def __init__(self, model):
        if isinstance(model, (str, os.PathLike)):
            model = gguf.open_gguf(model)
        if not isinstance(model, gguf.Model):
            raise TypeError(f"model must be a GGUF path or an open_gguf Model, got {type(model).__name__}")
        if model.arch != gguf.ARCH:
            raise ValueError(f"{model.path}: architecture {model.arch!r}; the graphs are built for {gguf.ARCH!r}")
        if model.hp is None:
            raise ValueError(f"{model.path}: the hyper-parameters are not usable: {model.hp_error}")
        self.model = model
        self.hp = model.hp
        self.types = {name: t.type for name, t in model.tensors.items()}
        self.layout = model.attn_layout  # "ik", "both" or "mainline"

    def build(self, n_ctx: int, *, variant: str = "direct", cache_type: str = "f16", n_tokens: int,
              n_kv: int | None = None, kv_head: int = 0, kv_chunk: int = deepseek2.DEFAULT_KV_CHUNK,
              n_ubatch: int = 512) -> deepseek2.MLAGraph:
        """The graph of one micro-batch of ``n_tokens`` tokens in cells ``kv_head ..``, weights typed as in the
        file; ``n_kv`` defaults to :func:`default_n_kv`."""
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int):
            raise TypeError(f"n_tokens must be an int, got {n_tokens!r}")
        if isinstance(kv_head, bool) or not isinstance(kv_head, int):
            raise TypeError(f"kv_head must be an int, got {kv_head!r}")
        if n_kv is None and isinstance(n_ctx, int) and n_ctx > 0:
            n_kv = default_n_kv(n_ctx, kv_head, n_tokens)
        deepseek2.check_hparams(self.hp, n_ctx, variant, cache_type, n_tokens, n_kv, kv_head, kv_chunk, n_ubatch)
        if n_kv < kv_head + n_tokens:
            raise ValueError(f"n_kv ({n_kv}) must cover the micro-batch's cells: kv_head ({kv_head}) + n_tokens "
                             f"({n_tokens}) = {kv_head + n_tokens}")
        b = _FileTypedBuilder(self.types, self.layout, self.hp, n_ctx, variant, cache_type, n_tokens, n_kv, kv_head,
                              "f32", kv_chunk, False)
        return b.build()

    def weights(self, g: deepseek2.MLAGraph) -> dict[str, Tensor]:
        """The file's tensors for every weight leaf of ``g``, checked for type and shape (zero-copy)."""
        out = {}
        for name, t in g.weights.items():
            have = self.model.tensors.get(name)
            if have is None:
                raise ValueError(f"{self.model.path}: no tensor {name!r} for the graph's weight of that name")
            if have.type != t.type or have.ne != t.ne:
                raise ValueError(f"{self.model.path}: tensor {name!r} is {have.type} ne {list(have.ne)}; the graph "
                                 f"expects {t.type} ne {list(t.ne)}")
            out[name] = have
        return out

    def empty_cache(self, n_ctx: int, cache_type: str = "f16") -> list[Tensor]:
        """A zeroed KV cache of ``n_ctx`` cells per layer (``[kv_lora_rank + n_rot, n_ctx]`` of ``cache_type``)."""
        if cache_type not in deepseek2.CACHE_TYPES:
            raise ValueError(f"cache_type must be one of {', '.join(deepseek2.CACHE_TYPES)}; got {cache_type!r}")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0:
            raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
        return [Tensor.zeros(cache_type, (self.hp.kv_row_elems, n_ctx), name=f"cache_kv_l{il}")
                for il in range(self.hp.n_layer)]

    def kv_cache(self, g: deepseek2.MLAGraph, cache: list | None = None) -> list[Tensor]:
        """One tensor per layer: zeros, or copies of ``cache`` (Tensors of the graph's cache type and shape)."""
        if cache is None:
            return [Tensor.zeros(t.type, t.ne, name=t.name) for t in g.kv_cache]
        if len(cache) != len(g.kv_cache):
            raise ValueError(f"cache: expected {len(g.kv_cache)} layers, got {len(cache)}")
        out = []
        for t, c in zip(g.kv_cache, cache):
            if not isinstance(c, Tensor) or c.type != t.type or c.ne != t.ne:
                raise ValueError(f"cache: layer {t.name} must be a {t.type} Tensor of ne {list(t.ne)}")
            out.append(Tensor.from_bytes(c.raw(), c.type, c.ne))
        return out

    def inputs(self, g: deepseek2.MLAGraph, tokens) -> dict[str, np.ndarray]:
        """Tokens, positions, the causal KQ mask and the output ids of one micro-batch (module docstring)."""
        tok = _tokens(tokens, self.hp.n_vocab)
        if tok.size != g.n_tokens:
            raise ValueError(f"tokens: the graph is built for {g.n_tokens} tokens, got {tok.size}")
        T, n_kv, kv_head = g.n_tokens, g.n_kv, g.kv_head
        pad = g.inputs["KQ_mask"].ne[1]
        cell = np.arange(n_kv)[None, :]
        row = np.arange(pad)[:, None]
        visible = (cell <= kv_head + row) & (row < T)
        out = {
            "inp_tokens": tok,
            "inp_pos": (kv_head + np.arange(T)).astype(np.int32),
            "KQ_mask": np.where(visible, np.float32(0), np.float32(-np.inf)).astype(np.float32),
        }
        if "inp_out_ids" in g.inputs:
            out["inp_out_ids"] = np.arange(g.n_outputs, dtype=np.int32)
        return out


def _tokens(tokens, n_vocab: int) -> np.ndarray:
    a = np.asarray(tokens)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"tokens must be a non-empty 1-D sequence of token ids, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"tokens must be integers, got {a.dtype}")
    if a.min() < 0 or a.max() >= n_vocab:
        raise ValueError(f"tokens must lie in [0, n_vocab = {n_vocab}), got values {int(a.min())} .. {int(a.max())}")
    return a.astype(np.int32)


def run_gguf(path_or_model, tokens, *, variant: str, n_ctx: int, cache_type: str = "f16", n_kv: int | None = None,
             kv_head: int = 0, kv_cache: list | None = None, kv_chunk: int = deepseek2.DEFAULT_KV_CHUNK,
             impl: dict | None = None, options: dict | None = None, keep=(), stats: dict | None = None) -> dict:
    """Run one micro-batch of ``tokens`` through a GGUF model's graph; return ``run_graph``'s tensors by name.

    ``path_or_model``: a GGUF path, an :func:`~mlaref.reference.gguf.open_gguf` Model or a :class:`GGUFModel`.
    The tokens occupy cells ``kv_head .. kv_head + T - 1``. ``kv_cache`` (one Tensor per layer, of
    ``cache_type`` and ne ``[kv_lora_rank + n_rot, n_ctx]``) holds the cells of earlier micro-batches and is
    written in place; it is required when ``kv_head > 0`` and a zeroed cache is used otherwise. ``impl``,
    ``options``, ``keep`` and ``stats`` go to :func:`~mlaref.reference.graphs.executor.run_graph`; the logits are
    ``out["result_output"]`` (f32 ``[n_vocab, T]``).
    """
    m = path_or_model if isinstance(path_or_model, GGUFModel) else GGUFModel(path_or_model)
    tok = _tokens(tokens, m.hp.n_vocab)
    g = m.build(n_ctx, variant=variant, cache_type=cache_type, n_tokens=int(tok.size), n_kv=n_kv, kv_head=kv_head,
                kv_chunk=kv_chunk)
    if kv_cache is None:
        if kv_head:
            raise ValueError(f"kv_cache: kv_head = {kv_head} attends to earlier cells; pass the cache that holds them")
        kv_cache = m.kv_cache(g)
    return run_graph(g, weights=m.weights(g), kv_cache=kv_cache, inputs=m.inputs(g, tok), keep=keep, impl=impl,
                     options=options, stats=stats)
