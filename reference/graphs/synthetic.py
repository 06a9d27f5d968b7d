"""A tiny synthetic DeepSeek-V2: random weights of small dimensions with the real structure, deterministic from a seed.

:func:`tiny_hparams` (the ``synthetic-tiny`` preset of :data:`mlaref.reference.hparams.PRESETS`) keeps every
structural feature of DeepSeek-V2 (MLA with a low-rank q, a latent KV cache row ``[c_kv (n_lora_kv) | k_rope
(n_rot)]``, per-head ``wkv_b`` decompression into nope and v halves, a dense lead layer, then MoE layers with
shared experts) at sizes that are multiples of 32, so every tensor can be stored in a 32-block format (q8_0,
iq4_nl, ...)::

    n_embd 64, n_head 2, head_k 64 = nope 32 + rope 32, head_v 32, n_lora_q 64, n_lora_kv 64,
    n_ff 64, n_ff_exp 32, 8 experts (3 used, 1 shared), vocab 64, cache row 96 values

:class:`SyntheticModel` makes, for a graph built by :func:`mlaref.reference.graphs.deepseek2.build_graph`:

* ``weights(g)``: every weight the graph names, values drawn from a generator seeded by ``(seed, name)`` so a
  weight is the same in every variant's graph; matrices ~ N(0, 1/ne0), norm weights 1 + 0.1·N(0, 1), stored as
  the graph's weight type through the reference quantizer (``variant="ref"``, what ``ggml_quantize_chunk``
  writes for the 32-block formats); ``attn_k_b`` / ``attn_v_b`` are the halves of ``attn_kv_b`` (see
  :meth:`SyntheticModel.weight_values`), so the TG and PP paths agree;
* ``kv_cache(g)``: the cells before ``kv_head`` as earlier micro-batches would have left them (a normalised
  ``c_kv`` and a ``k_rope`` of unit scale, written through ``cpy`` f32 -> cache type, i.e. ggml's x86
  ``from_float``); the cells from ``kv_head`` on are zero (the graph's CPY node writes them);
* ``inputs(g)``: random tokens, positions ``kv_head + t``, the causal mask (cell i visible to token t iff
  ``i <= kv_head + t``; padded rows all -inf) in f32, or f16 for the chunked variant, and ``inp_out_ids``
  ``0..T-1``.
"""

from __future__ import annotations

import zlib

import numpy as np

from mlaref.reference.graphs import deepseek2
from mlaref.reference.hparams import HParams, preset
from mlaref.reference.ops.cpy import cpy
from mlaref.reference.tensor import Tensor

__all__ = ["tiny_hparams", "SyntheticModel"]


def tiny_hparams(n_layer: int = 2, **changes) -> HParams:
    """The ``synthetic-tiny`` preset of :data:`mlaref.reference.hparams.PRESETS` (see the module docstring) with
    ``n_layer`` layers, the first dense; ``changes`` override fields."""
    return preset("synthetic-tiny").replace(**{"n_layer": n_layer, "n_layer_dense_lead": min(1, n_layer), **changes})


class SyntheticModel:
    """Weights, KV cache and inputs for graphs of ``hp`` (see the module docstring)."""

    def __init__(self, hp: HParams | None = None, seed: int = 0):
        if hp is not None and not isinstance(hp, HParams):
            raise TypeError(f"hp must be an HParams, got {type(hp).__name__}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.hp = hp or tiny_hparams()
        self.seed = seed

    def _rng(self, *key) -> np.random.Generator:
        words = [self.seed] + [zlib.crc32(str(k).encode()) for k in key]
        return np.random.default_rng(words)

    def build(self, n_ctx: int = 512, **kw) -> deepseek2.MLAGraph:
        """``build_graph(self.hp, n_ctx, **kw)`` (the variant, cache and weight types go in ``kw``)."""
        return deepseek2.build_graph(self.hp, n_ctx, **kw)

    # -- weights ---------------------------------------------------------------------------------------
    def weight_values(self, name: str, ne) -> np.ndarray:
        """float32 values of weight ``name`` (NumPy shape ``ne`` reversed); independent of the storage type.

        ``attn_k_b`` / ``attn_v_b`` are not drawn: they are ``attn_kv_b``'s per-head halves, laid out as the GGUF
        converter splits them, so the TG path (absorbed weights) computes the same attention as the PP path::

            kv_b (H·(nope+v), rank) -> per head h: K_h (nope, rank), V_h (v, rank)
            k_b  (H·rank, nope):  rows h·rank .. = K_hᵀ        v_b (H·v, rank): rows h·v .. = V_h
        """
        shape = tuple(reversed([n for n in ne]))
        if name.endswith((".attn_k_b.weight", ".attn_v_b.weight")):
            hp = self.hp
            kv_name = name.rsplit(".", 2)[0] + ".attn_kv_b.weight"
            kv = self.weight_values(kv_name, (hp.n_lora_kv, hp.n_head * (hp.n_embd_head_qk_nope + hp.n_embd_head_v)))
            kv = kv.reshape(hp.n_head, hp.n_embd_head_qk_nope + hp.n_embd_head_v, hp.n_lora_kv)
            if name.endswith(".attn_k_b.weight"):
                out = np.ascontiguousarray(kv[:, :hp.n_embd_head_qk_nope, :].transpose(0, 2, 1))
            else:
                out = np.ascontiguousarray(kv[:, hp.n_embd_head_qk_nope:, :])
            return out.reshape(shape)
        rng = self._rng("weight", name)
        if "norm" in name:
            return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (rng.standard_normal(shape) / np.sqrt(ne[0])).astype(np.float32)

    def weights(self, g: deepseek2.MLAGraph) -> dict[str, Tensor]:
        out = {}
        for name, t in g.weights.items():
            vals = self.weight_values(name, t.ne)
            out[name] = Tensor.from_numpy(vals, t.type, name=name)
        return out

    # -- KV cache --------------------------------------------------------------------------------------
    def cache_rows(self, il: int, n_cells: int) -> np.ndarray:
        """float32 ``(n_cells, n_lora_kv + n_rot)`` rows of earlier micro-batches for layer ``il``."""
        hp = self.hp
        rng = self._rng("cache", il)
        c = rng.standard_normal((n_cells, hp.n_lora_kv)).astype(np.float32)
        c /= np.sqrt(np.mean(c.astype(np.float64) ** 2, axis=1, keepdims=True)).astype(np.float32)
        r = rng.standard_normal((n_cells, hp.n_rot)).astype(np.float32)
        return np.concatenate([c, r], axis=1).astype(np.float32)

    def kv_cache(self, g: deepseek2.MLAGraph, rows: list | None = None) -> list[Tensor]:
        """One cache tensor per layer: cells ``< kv_head`` from ``rows[il]`` (default :meth:`cache_rows`)
        converted by ``cpy`` (ggml's f32 -> cache-type row conversion), the rest zero bytes."""
        out = []
        for il, t in enumerate(g.kv_cache):
            cache = Tensor.zeros(t.type, t.ne, name=t.name)
            if g.kv_head:
                vals = rows[il] if rows is not None else self.cache_rows(il, g.kv_head)
                vals = np.asarray(vals, np.float32)
                if vals.shape != (g.kv_head, t.ne[0]):
                    raise ValueError(f"rows[{il}] must have shape ({g.kv_head}, {t.ne[0]}), got {vals.shape}")
                dst = cache.view((t.ne[0], g.kv_head), (cache.nb[1],), 0)
                cpy(Tensor.from_numpy(vals), dst)
            out.append(cache)
        return out

    # -- inputs ----------------------------------------------------------------------------------------
    def inputs(self, g: deepseek2.MLAGraph) -> dict[str, np.ndarray]:
        T, n_kv, kv_head = g.n_tokens, g.n_kv, g.kv_head
        rng = self._rng("tokens", T, kv_head)
        mask_t = g.inputs["KQ_mask"]
        pad = mask_t.ne[1]
        cell = np.arange(n_kv)[None, :]
        tok = np.arange(pad)[:, None]
        mask = np.where((cell <= kv_head + tok) & (tok < T), np.float32(0), np.float32(-np.inf)).astype(np.float32)
        out = {
            "inp_tokens": rng.integers(0, self.hp.n_vocab, T).astype(np.int32),
            "inp_pos": (kv_head + np.arange(T)).astype(np.int32),
            "KQ_mask": mask,  # bound as the leaf's type: f32, or f16 (0 and -inf are exact) for chunked
        }
        if "inp_out_ids" in g.inputs:
            out["inp_out_ids"] = np.arange(g.n_outputs, dtype=np.int32)
        return out
