"""The synthetic GGUF writer's presets: shapes from the one presets table, a weight type per tensor class.

The shapes come from :data:`mlaref.reference.hparams.PRESETS` (the one table of named models); this module
adds only what a GGUF file needs beyond them: the parameters under the names the writer takes (the rope scaling
*factor* the file stores, ``1 / rope_freq_scale``; the gating function's id) and the weight type of each tensor
class (the classes of :func:`mlaref.reference.gguf.loader.expected_tensors`). The writer writes exactly the
presets listed in :data:`WEIGHT_TYPES`.
"""

from __future__ import annotations

from mlaref.reference import hparams
from mlaref.reference.gguf.loader import GATING_FUNCS, LLAMA_MAX_EXPERTS, LLAMA_MAX_LAYERS

__all__ = ["WEIGHT_TYPES", "PRESETS", "writer_params", "synthetic_hparams", "synthetic_types"]

# Per-class weight types of each preset the writer writes; 1-D norms and the router stay f32 as llama-quantize
# leaves them.
WEIGHT_TYPES = {
    "tiny": dict(norm="f32", embd="q8_0", output="q8_0", attn_q="q8_0", attn_kv_a="q8_0", attn_kv_b="q8_0",
                 attn_k_b="q8_0", attn_v_b="q8_0", attn_out="q8_0", ffn="q8_0", gate_inp="f32", exps="q8_0",
                 shexp="q8_0", bias="f32"),
    # DeepSeek-Lite IQ4_NL as llama_tensor_get_type (llama.cpp@676f0e71b) chooses for 64 experts: names with
    # "attn_k" / "attn_q" -> q8_0 (n_expert >= 8), output -> q6_K, default iq4_nl. Not reproduced: attn_output
    # and the first n_layer/8 ffn_down go to q5_K there (mlaref has no q5_K; iq4_nl here). No real file was read.
    "lite-attn": dict(norm="f32", embd="iq4_nl", output="q6_K", attn_q="q8_0", attn_kv_a="q8_0",
                      attn_kv_b="q8_0", attn_k_b="q8_0", attn_v_b="iq4_nl", attn_out="iq4_nl", ffn="iq4_nl",
                      gate_inp="f32", exps="iq4_nl", shexp="iq4_nl", bias="f32"),
}

_GATING_IDS = {name: i for i, name in GATING_FUNCS.items()}
_COUNTS = ("n_layer", "n_embd", "n_head", "n_lora_kv", "n_rot", "n_embd_head_k", "n_embd_head_v", "n_vocab", "n_ff",
           "n_ff_exp", "n_expert", "n_expert_used", "n_expert_shared", "n_ctx_train", "n_ctx_orig_yarn", "n_lora_q",
           "n_layer_dense_lead")


def writer_params(hp: hparams.HParams) -> dict:
    """``hp`` under the writer's parameter names (DeepSeek-V2 ropes with YaRN; head_count_kv is written = n_head)."""
    return dict(
        n_layer=hp.n_layer, n_embd=hp.n_embd, n_head=hp.n_head, n_lora_kv=hp.n_lora_kv, n_rot=hp.n_rot,
        n_embd_head_k=hp.n_embd_head_k, n_embd_head_v=hp.n_embd_head_v, n_lora_q=hp.n_lora_q, n_ff=hp.n_ff,
        n_ff_exp=hp.n_ff_exp, n_expert=hp.n_expert, n_expert_used=hp.n_expert_used,
        n_expert_shared=hp.n_expert_shared, n_layer_dense_lead=hp.n_layer_dense_lead, n_vocab=hp.n_vocab,
        n_ctx_train=hp.n_ctx_train, f_norm_rms_eps=hp.f_norm_rms_eps, rope_freq_base=hp.rope_freq_base,
        rope_scaling_type="yarn", rope_scaling_factor=1.0 / hp.rope_freq_scale, n_ctx_orig_yarn=hp.n_ctx_orig_yarn,
        rope_yarn_log_mul=hp.rope_yarn_log_mul, expert_weights_scale=hp.expert_weights_scale,
        expert_weights_norm=hp.expert_weights_norm, expert_gating_func=_GATING_IDS[hp.expert_gating_func],
    )


# The writer's parameters of each preset it writes (a view of the presets table).
PRESETS = {name: writer_params(hparams.PRESETS[name]) for name in WEIGHT_TYPES}


def synthetic_hparams(preset: str = "tiny", **overrides) -> dict:
    """The writer's parameters: a preset (``tiny``, ``lite-attn``) plus overrides (names as in PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    p = dict(PRESETS[preset])
    unknown = set(overrides) - set(p)
    if unknown:
        raise ValueError(f"unknown synthetic parameters {sorted(unknown)}; known: {sorted(p)}")
    p.update(overrides)
    for k in _COUNTS:
        low = 0 if k in ("n_lora_q", "n_layer_dense_lead") else 1
        if not isinstance(p[k], int) or isinstance(p[k], bool) or p[k] < low:
            raise ValueError(f"synthetic parameter {k} must be an int >= {low}, got {p[k]!r}")
    if p["n_layer"] > LLAMA_MAX_LAYERS:
        raise ValueError(f"n_layer must be <= {LLAMA_MAX_LAYERS}, got {p['n_layer']}")
    if p["n_rot"] >= p["n_embd_head_k"]:
        raise ValueError(f"n_rot ({p['n_rot']}) must be smaller than n_embd_head_k ({p['n_embd_head_k']})")
    if not 0 <= p["n_layer_dense_lead"] <= p["n_layer"]:
        raise ValueError("n_layer_dense_lead must be in [0, n_layer]")
    if not 0 < p["n_expert_used"] <= p["n_expert"] <= LLAMA_MAX_EXPERTS:
        raise ValueError("need 0 < n_expert_used <= n_expert <= 256")
    return p


def synthetic_types(preset: str = "tiny", **overrides) -> dict:
    """Weight type per tensor class for a preset, with overrides (``exps="q4_K"``)."""
    if preset not in WEIGHT_TYPES:
        raise ValueError(f"preset must be one of {', '.join(WEIGHT_TYPES)}, got {preset!r}")
    t = dict(WEIGHT_TYPES[preset])
    unknown = set(overrides) - set(t)
    if unknown:
        raise ValueError(f"unknown tensor classes {sorted(unknown)}; known: {sorted(t)}")
    t.update(overrides)
    return t
