"""Write small synthetic deepseek2 GGUF files: the real architecture, keys and tensor names, seeded values.

:func:`write_synthetic` emits the real architecture name, keys and tensor names
(``gguf.constants.MODEL_TENSORS[MODEL_ARCH.DEEPSEEK2]``), values drawn from a seeded generator per tensor,
encoded with :func:`mlaref.reference.quantize` (block types) or :mod:`mlaref.reference.fp` (f16/bf16).
``attn_k_b`` / ``attn_v_b`` are split from the same float ``attn_kv_b`` as ``convert_hf_to_gguf.py@676f0e71b``
does (``DeepseekV2Model.modify_tensors``). Shapes and weight types come from a preset
(:mod:`mlaref.reference.gguf.presets`).
"""

from __future__ import annotations

import os
import zlib

import numpy as np
from gguf import GGUFWriter
from gguf.constants import Keys

from mlaref.reference import fp, quantize
from mlaref.reference.gguf.loader import ARCH, arch_key, expected_tensors
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
                    **hparams) -> dict:
    """Write a synthetic deepseek2 GGUF; return ``{"hparams", "types", "tensors"}`` describing what was written.

    ``hparams`` override the preset (``n_layer``, ``n_embd``, ``n_head``, ``n_lora_kv``, ``n_rot``,
    ``n_embd_head_k``, ``n_embd_head_v``, ``n_lora_q`` (0 = Lite's plain ``attn_q``), ``n_ff``, ``n_ff_exp``,
    ``n_expert``, ``n_expert_used``, ``n_expert_shared``, ``n_layer_dense_lead``, ``n_vocab``, ...);
    ``types`` overrides weight types per tensor class (see :func:`expected_tensors`), any type mlaref can
    quantize. A class type whose block does not divide a tensor's ne0 falls back as llama-quantize does
    (``q4_K`` -> ``q5_0``, ``q6_K`` -> ``q8_0``, ...) when ``fallback``, else raises ValueError.
    ``tensors`` maps each name to ``(type, ne, bytes)``: the exact bytes written.
    """
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
    w.add_uint32(arch_key(Keys.Attention.HEAD_COUNT_KV), p["n_head"])
    w.add_float32(arch_key(Keys.Rope.FREQ_BASE), p["rope_freq_base"])
    w.add_float32(arch_key(Keys.Attention.LAYERNORM_RMS_EPS), p["f_norm_rms_eps"])
    w.add_uint32(arch_key(Keys.LLM.EXPERT_USED_COUNT), p["n_expert_used"])
    w.add_uint32(arch_key(Keys.LLM.LEADING_DENSE_BLOCK_COUNT), p["n_layer_dense_lead"])
    w.add_uint32(arch_key(Keys.LLM.VOCAB_SIZE), p["n_vocab"])
    if p["n_lora_q"]:
        w.add_uint32(arch_key(Keys.Attention.Q_LORA_RANK), p["n_lora_q"])
    w.add_uint32(arch_key(Keys.Attention.KV_LORA_RANK), p["n_lora_kv"])
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
    kv_b_values = None
    for name, (ne, _required, cls) in expected_tensors(hp).items():
        if cls == "bias":
            continue  # ffn_exp_probs_b is DeepSeek-V3's; V2 files do not have it
        t = tmap[cls]
        bs, _ = type_geometry(t)
        if ne[0] % bs:
            fb = FALLBACK.get(t) if fallback else None
            if fb is None:
                raise ValueError(f"write_synthetic: {name} has ne[0] = {ne[0]}, not a multiple of {t}'s block {bs}")
            t = fb
        if cls == "attn_kv_b":
            x = kv_b_values = _values(name, ne, cls, seed)
        elif cls == "attn_k_b":  # per head: the k_nope rows of kv_b, transposed -> [nope, H*kv]
            x = kv_b_values.reshape(H, nope + hv, kv)[:, :nope, :].transpose(0, 2, 1).reshape(H * kv, nope)
        elif cls == "attn_v_b":  # per head: the v rows of kv_b -> [kv, H*hv]
            x = kv_b_values.reshape(H, nope + hv, kv)[:, nope:, :].reshape(H * hv, kv)
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
