"""Write small synthetic deepseek2 GGUF files: the real architecture, keys and tensor names, seeded values.

:func:`write_synthetic` emits the real architecture name, keys and tensor names
(``gguf.constants.MODEL_TENSORS[MODEL_ARCH.DEEPSEEK2]``), values drawn from a seeded generator per tensor,
encoded with :func:`mlaref.reference.quantize` (block types) or :mod:`mlaref.reference.fp` (f16/bf16).
Shapes and weight types come from a preset (:mod:`mlaref.reference.gguf.presets`).

The attention weights are written in one of the layouts of :data:`mlaref.reference.gguf.loader.ATTN_LAYOUTS`, all
from the same float wkv_b (``[kv_lora_rank, n_head·(nope + v)]``; per head h its rows are K_h (nope) then V_h (v)):

* ``both`` (the default): ``attn_kv_b`` and the 2-D halves ``attn_k_b`` = the K_hᵀ stacked ``[nope, n_head·rank]``
  and ``attn_v_b`` = the V_h stacked ``[rank, n_head·v]``, as ``convert_hf_to_gguf.py@676f0e71b`` splits them;
* ``ik``: ``attn_kv_b`` alone;
* ``mainline``: no ``attn_kv_b``; ``attn_k_b`` ``[nope, rank, n_head]`` and ``attn_v_b`` ``[rank, v, n_head]`` (the
  same bytes as the 2-D halves, one more dimension), and mainline's MQA keys (``head_count_kv`` 1,
  ``key_length`` rank + n_rot, ``value_length`` rank, ``key_length_mla``, ``value_length_mla``), as mainline
  llama.cpp's converter writes them (see :mod:`mlaref.reference.gguf.loader`).
"""

from __future__ import annotations

import os
import zlib

import numpy as np
from gguf import GGUFWriter
from gguf.constants import Keys

from mlaref.reference import fp, quantize
from mlaref.reference.gguf.loader import ARCH, ATTN_LAYOUTS, arch_key, expected_tensors
from mlaref.reference.gguf.presets import synthetic_hparams, synthetic_types
from mlaref.reference.gguf.typemap import gguf_type
from mlaref.reference.tensor import type_geometry

__all__ = ["FALLBACK", "write_synthetic"]

# llama-quantize's fallback when ne0 is not a multiple of QK_K = 256 (llama_tensor_get_type, 676f0e71b)
FALLBACK = {"q2_K": "iq4_nl", "q3_K": "iq4_nl", "iq4_xs": "iq4_nl", "q4_K": "q5_0", "q6_K": "q8_0"}


def _to_loader_dict(p: dict) -> dict:
    """The writer's parameters as the dict :func:`read_hparams` returns (for :func:`expected_tensors`)."""
    L = p["n_layer"]
    return dict(n_embd=p["n_embd"], n_vocab=p["n_vocab"], n_rot=p["n_rot"], n_layer=L,
                n_embd_head_k=p["n_embd_head_k"], n_embd_head_qk_nope=p["n_embd_head_k"] - p["n_rot"],
                n_embd_head_v=p["n_embd_head_v"], n_lora_kv=p["n_lora_kv"], n_lora_q=p["n_lora_q"],
                n_ff_exp=p["n_ff_exp"], n_expert=p["n_expert"], n_expert_shared=p["n_expert_shared"],
                n_head_arr=[p["n_head"]] * L, n_ff_arr=[p["n_ff"]] * L, n_layer_dense_lead=p["n_layer_dense_lead"])


def _values(name: str, ne: tuple, cls: str, seed: int) -> np.ndarray:
    """Deterministic float32 values for one tensor, NumPy shape (ne3, ne2, ne1, ne0) squeezed of leading 1s.

    Each tensor has its own stream (seed, crc32(name)), so values do not depend on which tensors are written.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = tuple(reversed(ne))
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    x = rng.standard_normal(shape, dtype=np.float32)
    if cls == "norm":
        return (np.float32(1) + np.float32(0.1) * x).astype(np.float32)
    return (x * np.float32(1 / np.sqrt(ne[0]))).astype(np.float32)


_ATTN_B = ("attn_kv_b", "attn_k_b", "attn_v_b")


def _attn_b(cls: str, ne: tuple, per_head: np.ndarray, nope: int) -> np.ndarray:
    """wkv_b or one of its halves from wkv_b's values ``per_head`` ``(n_head, nope + v, rank)``, NumPy shape ``ne``
    reversed: K_hᵀ stacked (``attn_k_b``), V_h stacked (``attn_v_b``); 3-D ``ne`` keeps the heads as dim 2."""
    if cls == "attn_kv_b":
        x = per_head
    elif cls == "attn_k_b":
        x = per_head[:, :nope, :].transpose(0, 2, 1)
    else:
        x = per_head[:, nope:, :]
    shape = tuple(reversed(ne))
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return np.ascontiguousarray(x).reshape(shape)


def _encode(x: np.ndarray, type: str) -> np.ndarray:
    """float32 values -> uint8 bytes of ``type`` (NumPy shape (..., row_bytes))."""
    if type == "f32":
        return x.view(np.uint8)
    if type == "f16":
        return fp.f32_to_f16(x).astype("<u2").view(np.uint8)
    if type == "bf16":
        return fp.f32_to_bf16(x).astype("<u2").view(np.uint8)
    return quantize(x, type)


def write_synthetic(path, preset: str = "tiny", *, types: dict | None = None, seed: int = 0, fallback: bool = True,
                    layout: str = "both", **hparams) -> dict:
    """Write a synthetic deepseek2 GGUF; return ``{"hparams", "types", "tensors"}`` describing what was written.

    ``hparams`` override the preset (``n_layer``, ``n_embd``, ``n_head``, ``n_lora_kv``, ``n_rot``,
    ``n_embd_head_k``, ``n_embd_head_v``, ``n_lora_q`` (0 = Lite's plain ``attn_q``), ``n_ff``, ``n_ff_exp``,
    ``n_expert``, ``n_expert_used``, ``n_expert_shared``, ``n_layer_dense_lead``, ``n_vocab``, ...);
    ``types`` overrides weight types per tensor class (see :func:`expected_tensors`), any type mlaref can
    quantize. A class type whose block does not divide a tensor's ne0 falls back as llama-quantize does
    (``q4_K`` -> ``q5_0``, ``q6_K`` -> ``q8_0``, ...) when ``fallback``, else raises ValueError.
    ``layout`` is the attention layout (``both``, ``ik`` or ``mainline``; module docstring).
    ``tensors`` maps each name to ``(type, ne, bytes)``: the exact bytes written.
    """
    if layout not in ATTN_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(ATTN_LAYOUTS)}; got {layout!r}")
    p = synthetic_hparams(preset, **hparams)
    tmap = synthetic_types(preset, **(types or {}))
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    for t in sorted(set(tmap.values())):
        type_geometry(t)  # unknown to mlaref: refuse before any work
        gguf_type(t)  # unknown to gguf-py or sized differently there
    w = GGUFWriter(os.fspath(path), ARCH)
    w.add_name(f"mlaref-synthetic-{preset}")
    w.add_uint32(arch_key(Keys.LLM.BLOCK_COUNT), p["n_layer"])
    w.add_uint32(arch_key(Keys.LLM.CONTEXT_LENGTH), p["n_ctx_train"])
    w.add_uint32(arch_key(Keys.LLM.EMBEDDING_LENGTH), p["n_embd"])
    w.add_uint32(arch_key(Keys.LLM.FEED_FORWARD_LENGTH), p["n_ff"])
    w.add_uint32(arch_key(Keys.Attention.HEAD_COUNT), p["n_head"])
    w.add_uint32(arch_key(Keys.Attention.HEAD_COUNT_KV), 1 if layout == "mainline" else p["n_head"])
    w.add_float32(arch_key(Keys.Rope.FREQ_BASE), p["rope_freq_base"])
    w.add_float32(arch_key(Keys.Attention.LAYERNORM_RMS_EPS), p["f_norm_rms_eps"])
    w.add_uint32(arch_key(Keys.LLM.EXPERT_USED_COUNT), p["n_expert_used"])
    w.add_uint32(arch_key(Keys.LLM.LEADING_DENSE_BLOCK_COUNT), p["n_layer_dense_lead"])
    w.add_uint32(arch_key(Keys.LLM.VOCAB_SIZE), p["n_vocab"])
    if p["n_lora_q"]:
        w.add_uint32(arch_key(Keys.Attention.Q_LORA_RANK), p["n_lora_q"])
    w.add_uint32(arch_key(Keys.Attention.KV_LORA_RANK), p["n_lora_kv"])
    if layout == "mainline":  # MLA as MQA over the latent (conversion/deepseek.py:343-353 of mainline)
        w.add_uint32(arch_key(Keys.Attention.KEY_LENGTH), p["n_lora_kv"] + p["n_rot"])
        w.add_uint32(arch_key(Keys.Attention.VALUE_LENGTH), p["n_lora_kv"])
        w.add_uint32(arch_key(Keys.Attention.KEY_LENGTH_MLA), p["n_embd_head_k"])
        w.add_uint32(arch_key(Keys.Attention.VALUE_LENGTH_MLA), p["n_embd_head_v"])
    else:
        w.add_uint32(arch_key(Keys.Attention.KEY_LENGTH), p["n_embd_head_k"])
        w.add_uint32(arch_key(Keys.Attention.VALUE_LENGTH), p["n_embd_head_v"])
    w.add_uint32(arch_key(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), p["n_ff_exp"])
    w.add_uint32(arch_key(Keys.LLM.EXPERT_COUNT), p["n_expert"])
    w.add_uint32(arch_key(Keys.LLM.EXPERT_SHARED_COUNT), p["n_expert_shared"])
    w.add_float32(arch_key(Keys.LLM.EXPERT_WEIGHTS_SCALE), p["expert_weights_scale"])
    w.add_bool(arch_key(Keys.LLM.EXPERT_WEIGHTS_NORM), p["expert_weights_norm"])
    w.add_uint32(arch_key(Keys.LLM.EXPERT_GATING_FUNC), p["expert_gating_func"])
    w.add_uint32(arch_key(Keys.Rope.DIMENSION_COUNT), p["n_rot"])
    w.add_string(arch_key(Keys.Rope.SCALING_TYPE), p["rope_scaling_type"])
    w.add_float32(arch_key(Keys.Rope.SCALING_FACTOR), p["rope_scaling_factor"])
    w.add_uint32(arch_key(Keys.Rope.SCALING_ORIG_CTX_LEN), p["n_ctx_orig_yarn"])
    w.add_float32(arch_key(Keys.Rope.SCALING_YARN_LOG_MUL), p["rope_yarn_log_mul"])

    hp = _to_loader_dict(p)
    H, nope, hv, kv = p["n_head"], hp["n_embd_head_qk_nope"], p["n_embd_head_v"], p["n_lora_kv"]
    written = {}
    kv_b_values = {}
    for name, (ne, _required, cls) in expected_tensors(hp, layout).items():
        if cls == "bias":
            continue  # ffn_exp_probs_b is DeepSeek-V3's; V2 files do not have it
        t = tmap[cls]
        bs, _ = type_geometry(t)
        if ne[0] % bs:
            fb = FALLBACK.get(t) if fallback else None
            if fb is None:
                raise ValueError(f"write_synthetic: {name} has ne[0] = {ne[0]}, not a multiple of {t}'s block {bs}")
            t = fb
        if cls in _ATTN_B:
            kv_b_name = name.rsplit(".", 2)[0] + ".attn_kv_b.weight"  # drawn once per layer, written or not
            if kv_b_name not in kv_b_values:
                kv_b_values[kv_b_name] = _values(kv_b_name, (kv, H * (nope + hv), 1, 1), "attn_kv_b", seed)
            x = _attn_b(cls, ne, kv_b_values[kv_b_name].reshape(H, nope + hv, kv), nope)
        else:
            x = _values(name, ne, cls, seed)
        data = np.ascontiguousarray(_encode(np.ascontiguousarray(x), t))
        w.add_tensor(name, data, raw_dtype=gguf_type(t))
        written[name] = (t, ne, data.reshape(-1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"hparams": p, "types": tmap, "tensors": written}
