"""llama.cpp's deepseek2 loader, reproduced: the hyper-parameters it reads and the tensors it requires.

Hyper-parameters are read as ``llm_load_hparams`` reads them (``src/llama.cpp@676f0e71b``, generic part then
``case LLM_ARCH_DEEPSEEK2``): the same keys, the same strict value types (``GKV::get_kv``: a ``u32`` field
needs a ``UINT32`` value), the same defaults for absent optional keys (upstream facts §1.1). One deliberate
difference: llama.cpp decides "Lite" (plain ``wq``, no ``attention.q_lora_rank``) only by ``n_layer == 27``,
which a reduced-layer Lite cannot satisfy; here the q path follows the presence of ``attention.q_lora_rank``
(what the converter writes) and ``hparams["loader_note"]`` says when llama.cpp would refuse the file.

The tensors are those ``llm_load_tensors`` creates for the architecture (:func:`expected_tensors`), named as
gguf-py names them (``gguf.constants.MODEL_TENSORS[MODEL_ARCH.DEEPSEEK2]``); :func:`check_tensors` refuses a
file where a required one is absent or any has another shape (:func:`tensor_problems` lists every such problem).

Two attention layouts exist (:data:`ATTN_LAYOUTS`; :func:`attn_layout` tells which one a file has):

* ``ik``: ``blk.N.attn_kv_b.weight`` = wkv_b ``[kv_lora_rank, n_head·(nope + v)]`` only;
* ``both``: wkv_b plus its halves as 2-D ``attn_k_b`` ``[nope, n_head·kv_lora_rank]`` and ``attn_v_b``
  ``[kv_lora_rank, n_head·v]``, what ``convert_hf_to_gguf.py@676f0e71b`` writes (``DeepseekV2Model.modify_tensors``);
  ik_llama.cpp's loader takes wkv_b and the halves as optional (``llama-load-tensors.cpp:2383-2393`` of the 2026
  snapshot);
* ``mainline``: no wkv_b; 3-D ``attn_k_b`` ``[nope, kv_lora_rank, n_head]`` (per head K_hᵀ) and ``attn_v_b``
  ``[kv_lora_rank, v, n_head]``, what mainline llama.cpp's converter writes (``conversion/deepseek.py:433-450`` of
  llama.cpp in llama-cpp-python 0.3.36; loaded by ``src/models/deepseek2.cpp:114-120`` there, which reads wkv_b only
  from "old legacy" files). Its converter also writes MLA as MQA: ``attention.head_count_kv = 1``,
  ``attention.key_length = kv_lora_rank + n_rot``, ``attention.value_length = kv_lora_rank``, and the per-head sizes
  under ``attention.key_length_mla`` / ``attention.value_length_mla`` (deepseek.py:343-353). :func:`read_hparams`
  maps such a file back to per-head values as the 2026 ik_llama.cpp does (``llama-hparams.cpp:1334-1350``:
  ``n_head_kv = n_head``, head sizes from the ``_mla`` keys) and says so in ``hparams["mla_keys"]``.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES, GGUFValueType, Keys

from mlaref.reference.gguf.errors import BadValue, KeyTypeMismatch, MissingKey, MissingTensor, ShapeMismatch

__all__ = ["ARCH", "ATTN_LAYOUTS", "LLAMA_MAX_LAYERS", "LLAMA_MAX_EXPERTS", "GATING_FUNCS", "arch_key", "expect_type",
           "read_hparams", "missing_keys", "expected_tensors", "attn_layout", "tensor_problems", "check_tensors"]

ATTN_LAYOUTS = ("ik", "both", "mainline")  # see the module docstring

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.DEEPSEEK2]  # "deepseek2"

# Limits of llama.cpp@676f0e71b.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 256

GATING_FUNCS = {1: "softmax", 2: "sigmoid"}  # llm_expert_gating_func_type


# ---------------------------------------------------------------------------------------------------------
# hyper-parameters (llm_load_hparams, llama.cpp@676f0e71b)
# ---------------------------------------------------------------------------------------------------------
def arch_key(template: str) -> str:
    """A gguf-py key template for this architecture: ``{arch}.block_count`` -> ``deepseek2.block_count``."""
    return template.format(arch=ARCH)


_U32, _F32, _BOOL, _STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.BOOL, GGUFValueType.STRING
_ROPE_SCALE_LINEAR_OLD = "{arch}.rope.scale_linear"  # LLM_KV_ROPE_SCALE_LINEAR, the pre-"scaling.factor" key
_ROPE_SCALING_TYPES = ("none", "linear", "yarn")  # LLAMA_ROPE_SCALING_TYPES


def expect_type(path, kv_types, key, vtype) -> None:
    """Raise :class:`KeyTypeMismatch` unless ``key`` holds a value of GGUF type ``vtype``."""
    got = kv_types[key][0]
    if got != vtype:
        raise KeyTypeMismatch(f"{path}: key {key!r} has type {got.name}, expected {vtype.name}")


def read_hparams(meta, kv_types: dict, path: str = "<gguf>") -> dict:
    """DeepSeek-V2 hyper-parameters with llama.cpp's field names, keys, value types and defaults.

    ``meta`` maps keys to values, ``kv_types`` keys to ``(GGUFValueType, element type, length)``. Raises
    :class:`MissingKey`, :class:`KeyTypeMismatch` or :class:`BadValue`.
    """

    def get(template, vtype, default=None, required=False):
        key = arch_key(template)
        if key not in kv_types:
            if required:
                raise MissingKey(f"{path}: key {key!r} is required (llama.cpp: key not found in model)")
            return default
        expect_type(path, kv_types, key, vtype)
        return meta[key]

    def get_or_arr(template, n, default=None, required=False):
        """get_key_or_arr: a UINT32 scalar for all layers, or an INT32 array of n (one per layer; get_arr
        accepts only FLOAT32 and INT32 arrays)."""
        key = arch_key(template)
        if key not in kv_types:
            if required:
                raise MissingKey(f"{path}: key {key!r} is required (llama.cpp: key not found in model)")
            return default
        vtype, etype, alen = kv_types[key]
        if vtype == GGUFValueType.ARRAY:
            if etype != GGUFValueType.INT32:
                raise KeyTypeMismatch(f"{path}: array {key!r} holds {etype.name}, expected INT32")
            if alen != n:
                raise BadValue(f"{path}: key {key!r} has wrong array length; expected {n} (n_layer), got {alen}")
            values = [int(v) for v in meta[key]]
            if min(values) < 0:
                raise BadValue(f"{path}: array {key!r} holds a negative count: {values}")
            return values
        expect_type(path, kv_types, key, _U32)
        return [meta[key]] * n

    hp: dict = {"arch": ARCH}
    hp["name"] = meta[Keys.General.NAME] if kv_types.get(Keys.General.NAME, (None,))[0] == _STR else ""
    n_vocab = get(Keys.LLM.VOCAB_SIZE, _U32)
    if n_vocab is None:
        tok = Keys.Tokenizer.LIST
        if tok not in kv_types or kv_types[tok][0] != GGUFValueType.ARRAY:
            raise MissingKey(f"{path}: neither {arch_key(Keys.LLM.VOCAB_SIZE)!r} nor the array {tok!r} gives n_vocab")
        n_vocab = kv_types[tok][2]
    hp["n_vocab"] = n_vocab
    hp["n_ctx_train"] = get(Keys.LLM.CONTEXT_LENGTH, _U32, required=True)
    hp["n_embd"] = get(Keys.LLM.EMBEDDING_LENGTH, _U32, required=True)
    n_layer = hp["n_layer"] = get(Keys.LLM.BLOCK_COUNT, _U32, required=True)
    hp["n_expert"] = get(Keys.LLM.EXPERT_COUNT, _U32, 0)
    hp["n_expert_used"] = get(Keys.LLM.EXPERT_USED_COUNT, _U32, 0)
    if hp["n_expert"] > LLAMA_MAX_EXPERTS:
        raise BadValue(f"{path}: n_expert = {hp['n_expert']} exceeds LLAMA_MAX_EXPERTS = {LLAMA_MAX_EXPERTS}")
    if hp["n_expert_used"] > hp["n_expert"]:
        raise BadValue(f"{path}: n_expert_used = {hp['n_expert_used']} exceeds n_expert = {hp['n_expert']}")
    if (hp["n_expert"] > 0) != (hp["n_expert_used"] > 0):
        raise BadValue(f"{path}: n_expert_used must be > 0 exactly when n_expert > 0 (got {hp['n_expert_used']}, "
                       f"{hp['n_expert']})")
    if not 1 <= n_layer <= LLAMA_MAX_LAYERS:
        raise BadValue(f"{path}: n_layer = {n_layer} must be in [1, LLAMA_MAX_LAYERS = {LLAMA_MAX_LAYERS}]")
    hp["n_ff_arr"] = get_or_arr(Keys.LLM.FEED_FORWARD_LENGTH, n_layer, required=True)
    hp["n_head_arr"] = get_or_arr(Keys.Attention.HEAD_COUNT, n_layer, required=True)
    hp["n_head_kv_arr"] = get_or_arr(Keys.Attention.HEAD_COUNT_KV, n_layer, list(hp["n_head_arr"]))
    hp["n_ff"], hp["n_head"], hp["n_head_kv"] = hp["n_ff_arr"][0], hp["n_head_arr"][0], hp["n_head_kv_arr"][0]
    hp["rope_finetuned"] = get(Keys.Rope.SCALING_FINETUNED, _BOOL, False)
    hp["n_ctx_orig_yarn"] = get(Keys.Rope.SCALING_ORIG_CTX_LEN, _U32, hp["n_ctx_train"])
    hp["rope_freq_base_train"] = get(Keys.Rope.FREQ_BASE, _F32, 10000.0)
    scaling = get(Keys.Rope.SCALING_TYPE, _STR, "linear")
    if scaling not in _ROPE_SCALING_TYPES:
        raise BadValue(f"{path}: rope.scaling.type {scaling!r} is not one of {_ROPE_SCALING_TYPES}")
    hp["rope_scaling_type_train"] = scaling
    factor = get(Keys.Rope.SCALING_FACTOR, _F32)
    if factor is None:
        factor = get(_ROPE_SCALE_LINEAR_OLD, _F32, 0.0)
    hp["rope_freq_scale_train"] = 1.0 if factor == 0.0 else float(np.float32(1) / np.float32(factor))
    hp["rope_attn_factor"] = get(Keys.Rope.SCALING_ATTN_FACTOR, _F32, 1.0)
    if any(h == 0 for h in hp["n_head_arr"]):
        raise BadValue(f"{path}: attention.head_count must be > 0 in every layer for MLA, got {hp['n_head_arr']}")
    hp["n_embd_head_k"] = get(Keys.Attention.KEY_LENGTH, _U32, hp["n_embd"] // hp["n_head"])
    hp["n_embd_head_v"] = get(Keys.Attention.VALUE_LENGTH, _U32, hp["n_embd"] // hp["n_head"])
    hp["mla_keys"] = "per-head"
    k_mla = get(Keys.Attention.KEY_LENGTH_MLA, _U32)
    v_mla = get(Keys.Attention.VALUE_LENGTH_MLA, _U32)
    if set(hp["n_head_kv_arr"]) == {1} and k_mla and v_mla:
        # mainline's MQA form (module docstring): back to per-head values, as the 2026 ik_llama.cpp does
        hp["n_head_kv_arr"] = list(hp["n_head_arr"])
        hp["n_head_kv"] = hp["n_head"]
        hp["n_embd_head_k"], hp["n_embd_head_v"] = k_mla, v_mla
        hp["mla_keys"] = "mainline (head_count_kv 1, key/value_length of the latent; per-head sizes from *_mla)"
    hp["n_rot"] = get(Keys.Rope.DIMENSION_COUNT, _U32, hp["n_embd_head_k"])
    if hp["n_rot"] > hp["n_embd_head_k"]:
        raise BadValue(f"{path}: rope.dimension_count = {hp['n_rot']} exceeds key_length = {hp['n_embd_head_k']}")
    # case LLM_ARCH_DEEPSEEK2
    hp["is_lite"] = n_layer == 27
    hp["f_norm_rms_eps"] = get(Keys.Attention.LAYERNORM_RMS_EPS, _F32, required=True)
    hp["n_layer_dense_lead"] = get(Keys.LLM.LEADING_DENSE_BLOCK_COUNT, _U32, required=True)
    hp["n_lora_q"] = get(Keys.Attention.Q_LORA_RANK, _U32, 0)
    hp["loader_note"] = ""
    if not hp["is_lite"] and arch_key(Keys.Attention.Q_LORA_RANK) not in kv_types:
        hp["loader_note"] = (f"llama.cpp@676f0e71b would refuse this file: with n_layer = {n_layer} != 27 it "
                             f"requires {arch_key(Keys.Attention.Q_LORA_RANK)!r} and attn_q_a/attn_q_b")
    hp["n_lora_kv"] = get(Keys.Attention.KV_LORA_RANK, _U32, required=True)
    hp["n_ff_exp"] = get(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, _U32, required=True)
    hp["n_expert_shared"] = get(Keys.LLM.EXPERT_SHARED_COUNT, _U32, required=True)
    hp["expert_weights_scale"] = get(Keys.LLM.EXPERT_WEIGHTS_SCALE, _F32, required=True)
    hp["expert_weights_norm"] = get(Keys.LLM.EXPERT_WEIGHTS_NORM, _BOOL, False)
    gating = get(Keys.LLM.EXPERT_GATING_FUNC, _U32, 0)
    gating = 1 if gating == 0 else gating  # old DeepSeek-V2 GGUFs have no key: 0 means softmax
    hp["expert_gating_func"] = GATING_FUNCS.get(gating, f"unknown ({gating})")
    hp["rope_yarn_log_mul"] = get(Keys.Rope.SCALING_YARN_LOG_MUL, _F32, required=True)
    if hp["n_layer_dense_lead"] > n_layer:
        raise BadValue(f"{path}: leading_dense_block_count = {hp['n_layer_dense_lead']} exceeds n_layer = {n_layer}")
    if hp["n_layer_dense_lead"] < n_layer and hp["n_expert"] == 0:
        raise BadValue(f"{path}: MoE layers need expert_count > 0 (llama.cpp asserts n_expert > 0)")
    # derived (build_deepseek2 / llama_hparams)
    hp["n_embd_head_qk_nope"] = hp["n_embd_head_k"] - hp["n_rot"]
    hp["n_embd_k_gqa"] = hp["n_embd_head_k"] * hp["n_head_kv"]
    hp["n_embd_v_gqa"] = hp["n_embd_head_v"] * hp["n_head_kv"]
    hp["kv_row"] = hp["n_lora_kv"] + hp["n_rot"]
    return hp


# the keys read_hparams requires (``required=True`` there), for listing every absent one at once
_REQUIRED_KEYS = (Keys.LLM.CONTEXT_LENGTH, Keys.LLM.EMBEDDING_LENGTH, Keys.LLM.BLOCK_COUNT, Keys.LLM.FEED_FORWARD_LENGTH,
                  Keys.Attention.HEAD_COUNT, Keys.Attention.LAYERNORM_RMS_EPS, Keys.LLM.LEADING_DENSE_BLOCK_COUNT,
                  Keys.Attention.KV_LORA_RANK, Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, Keys.LLM.EXPERT_SHARED_COUNT,
                  Keys.LLM.EXPERT_WEIGHTS_SCALE, Keys.Rope.SCALING_YARN_LOG_MUL)


def missing_keys(kv_types: dict) -> list[tuple[str, str]]:
    """``(key, what is wrong)`` for every key :func:`read_hparams` requires and the file lacks (n_vocab needs
    ``vocab_size`` or the tokenizer's token list)."""
    out = []
    vocab, tok = arch_key(Keys.LLM.VOCAB_SIZE), Keys.Tokenizer.LIST
    if vocab not in kv_types and not (tok in kv_types and kv_types[tok][0] == GGUFValueType.ARRAY):
        out.append((vocab, f"absent, and no array {tok!r} gives n_vocab (llama.cpp: key not found in model)"))
    for template in _REQUIRED_KEYS:
        if arch_key(template) not in kv_types:
            out.append((arch_key(template), "required, absent (llama.cpp: key not found in model)"))
    return out


# ---------------------------------------------------------------------------------------------------------
# tensors llama.cpp creates for deepseek2 (llm_load_tensors, llama.cpp@676f0e71b)
# ---------------------------------------------------------------------------------------------------------
def _tn(t: MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    assert t in MODEL_TENSORS[MODEL_ARCH.DEEPSEEK2], t
    base = TENSOR_NAMES[t].format(bid=bid) if bid is not None else TENSOR_NAMES[t]
    return f"{base}.{suffix}"


def expected_tensors(hp: dict, layout: str = "both") -> dict:
    """name -> (ne padded to 4 dims, required, class) for every tensor of a deepseek2 model in ``layout``.

    ``class`` groups tensors for per-class weight types: ``norm``, ``embd``, ``output``, ``attn_q``,
    ``attn_kv_a``, ``attn_kv_b``, ``attn_k_b``, ``attn_v_b``, ``attn_out``, ``ffn`` (dense), ``gate_inp``,
    ``exps``, ``shexp``, ``bias``. ``layout`` (:data:`ATTN_LAYOUTS`): ``both`` lists wkv_b and its optional 2-D
    halves, ``ik`` wkv_b alone, ``mainline`` the required 3-D halves and no wkv_b.
    """
    if layout not in ATTN_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(ATTN_LAYOUTS)}; got {layout!r}")
    T = MODEL_TENSOR
    E, V = hp["n_embd"], hp["n_vocab"]
    rot, nope, hv = hp["n_rot"], hp["n_embd_head_qk_nope"], hp["n_embd_head_v"]
    kv, ql = hp["n_lora_kv"], hp["n_lora_q"]
    ffe, nexp, nsh = hp["n_ff_exp"], hp["n_expert"], hp["n_expert_shared"]

    def pad(*ne):
        return tuple(ne) + (1,) * (4 - len(ne))

    out = {
        _tn(T.TOKEN_EMBD): (pad(E, V), True, "embd"),
        _tn(T.OUTPUT_NORM): (pad(E), True, "norm"),
        _tn(T.OUTPUT): (pad(E, V), True, "output"),
    }
    # llm_load_tensors takes n_head = hparams.n_head() and n_ff = hparams.n_ff(), i.e. layer 0's, for every layer
    H, HK, ff = hp["n_head_arr"][0], hp["n_embd_head_k"], hp["n_ff_arr"][0]
    for i in range(hp["n_layer"]):
        out[_tn(T.ATTN_NORM, i)] = (pad(E), True, "norm")
        if ql:
            out[_tn(T.ATTN_Q_A_NORM, i)] = (pad(ql), True, "norm")
        out[_tn(T.ATTN_KV_A_NORM, i)] = (pad(kv), True, "norm")
        if ql:
            out[_tn(T.ATTN_Q_A, i)] = (pad(E, ql), True, "attn_q")
            out[_tn(T.ATTN_Q_B, i)] = (pad(ql, H * HK), True, "attn_q")
        else:
            out[_tn(T.ATTN_Q, i)] = (pad(E, H * HK), True, "attn_q")
        out[_tn(T.ATTN_KV_A_MQA, i)] = (pad(E, kv + rot), True, "attn_kv_a")
        if layout == "mainline":
            out[_tn(T.ATTN_K_B, i)] = (pad(nope, kv, H), True, "attn_k_b")
            out[_tn(T.ATTN_V_B, i)] = (pad(kv, hv, H), True, "attn_v_b")
        else:
            out[_tn(T.ATTN_KV_B, i)] = (pad(kv, H * (nope + hv)), True, "attn_kv_b")
        if layout == "both":
            out[_tn(T.ATTN_K_B, i)] = (pad(nope, H * kv), False, "attn_k_b")
            out[_tn(T.ATTN_V_B, i)] = (pad(kv, H * hv), False, "attn_v_b")
        out[_tn(T.ATTN_OUT, i)] = (pad(H * hv, E), True, "attn_out")
        out[_tn(T.FFN_NORM, i)] = (pad(E), True, "norm")
        if i < hp["n_layer_dense_lead"]:
            out[_tn(T.FFN_GATE, i)] = (pad(E, ff), True, "ffn")
            out[_tn(T.FFN_DOWN, i)] = (pad(ff, E), True, "ffn")
            out[_tn(T.FFN_UP, i)] = (pad(E, ff), True, "ffn")
        else:
            out[_tn(T.FFN_GATE_INP, i)] = (pad(E, nexp), True, "gate_inp")
            out[_tn(T.FFN_EXP_PROBS_B, i, "bias")] = (pad(nexp), False, "bias")
            out[_tn(T.FFN_GATE_EXP, i)] = (pad(E, ffe, nexp), True, "exps")
            out[_tn(T.FFN_DOWN_EXP, i)] = (pad(ffe, E, nexp), True, "exps")
            out[_tn(T.FFN_UP_EXP, i)] = (pad(E, ffe, nexp), True, "exps")
            out[_tn(T.FFN_GATE_SHEXP, i)] = (pad(E, ffe * nsh), True, "shexp")
            out[_tn(T.FFN_DOWN_SHEXP, i)] = (pad(ffe * nsh, E), True, "shexp")
            out[_tn(T.FFN_UP_SHEXP, i)] = (pad(E, ffe * nsh), True, "shexp")
    return out


def attn_layout(names) -> str:
    """The attention layout (:data:`ATTN_LAYOUTS`) of a file with these tensor names, judged on all layers: any
    wkv_b without halves ``ik``, with them ``both``, halves without any wkv_b ``mainline``; ``ik`` when neither is
    there (its wkv_b are then reported missing). A file missing one layer's wkv_b keeps its layout, so the absent
    tensor is what gets reported."""
    names = list(names)
    kv_b = any(n.startswith("blk.") and n.endswith(".attn_kv_b.weight") for n in names)
    k_b = any(n.startswith("blk.") and n.endswith(".attn_k_b.weight") for n in names)
    if kv_b:
        return "both" if k_b else "ik"
    return "mainline" if k_b else "ik"


def tensor_problems(model) -> list[tuple[str, str]]:
    """``(tensor name, what is wrong)`` for every tensor llama.cpp requires and the file lacks, and every expected
    tensor whose shape the hyper-parameters contradict, in the file's own layout (:func:`attn_layout`).

    ``model`` has ``path``, ``hparams`` (:func:`read_hparams`) and ``infos`` (``name`` and ``ne`` per tensor).
    """
    hp = model.hparams
    # each layer has at least 8 tensors: refuse absurd layer counts before building the expected list
    if hp["n_layer"] * 8 > len(model.infos):
        return [("(all)", f"n_layer = {hp['n_layer']} needs at least {hp['n_layer'] * 8} tensors, the file has "
                          f"{len(model.infos)}")]
    have = {ti.name: ti for ti in model.infos}
    out = []
    for name, (ne, required, _cls) in expected_tensors(hp, attn_layout(have)).items():
        ti = have.get(name)
        if ti is None:
            if required:
                out.append((name, f"required for {ARCH}, absent"))
        elif ti.ne != ne:
            out.append((name, f"ne {ti.ne}, the hyper-parameters give {ne} (llama.cpp: wrong shape)"))
    return out


def check_tensors(model) -> None:
    """Raise :class:`MissingTensor` or :class:`ShapeMismatch` for the first of :func:`tensor_problems`."""
    problems = tensor_problems(model)
    if problems:
        name, what = problems[0]
        if name == "(all)":
            raise MissingTensor(f"{model.path}: {what}")
        if what.endswith("absent"):
            raise MissingTensor(f"{model.path}: tensor {name!r} is {what.replace(', absent', ' and absent')}")
        raise ShapeMismatch(f"{model.path}: tensor {name!r} has {what}")
