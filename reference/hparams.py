"""DeepSeek-V2 hyper-parameters as llama.cpp reads them, with the Lite and full presets and their validation.

Fields carry llama.cpp's names (``llama_hparams`` in ``src/llama.cpp@676f0e71b``); the GGUF keys are
``deepseek2.<key>`` (upstream facts §1.1). llama.cpp decides "Lite" (no q low-rank projection, a plain ``wq``)
only by ``n_layer == 27`` (``llm_load_hparams``); :attr:`HParams.is_lite` keys it on ``n_lora_q == 0`` instead,
so that synthetic models with fewer layers keep the Lite structure.

Derived values used by the graph (``build_deepseek2``, upstream facts §1.3), in float32 as the C++ computes them::
    mscale             = attn_factor * (1 + rope_yarn_log_mul * logf(1 / freq_scale))
    kq_scale           = mscale * mscale / sqrtf(n_embd_head_k)
    attn_factor_scaled = 1 / (1 + 0.1 * logf(1 / freq_scale))

``logf`` is taken from the platform libm when available (``mlaref.reference.libm``), else NumPy float32;
the two may differ in the last bit.

Presets (:data:`PRESETS`, the one table of named models; :data:`CHECKPOINTS` names the released ones):

* ``deepseek-v2-lite``: upstream facts §1.1 (GGUF dumps; vocab, head_count_kv, expert_used_count,
  leading_dense_block_count, rms eps and rope base are HF-config values **[unverified]** there).
* ``deepseek-v2``: the 236B model, from its HF ``config.json`` (hidden 5120, 60 layers, 128 heads, q_lora_rank
  1536, 160 routed experts of width 1536, 2 shared, 6 used, routed_scaling_factor 16, first_k_dense_replace 1,
  intermediate 12288) **[unverified against a GGUF]**. Its group-limited routing (n_group 8, topk_group 3) is
  not implemented by llama.cpp@676f0e71b and is not modelled.
* ``lite-attn``: ``deepseek-v2-lite``'s attention with 2 layers, 4 experts, narrow FFNs and a small vocabulary;
  a GGUF file of it is a few MiB (:func:`mlaref.reference.gguf.write_synthetic`).
* ``tiny``: Lite's structure (plain ``wq``) at toy sizes, every row a multiple of 32: the GGUF writer's default.
* ``synthetic-tiny``: the full model's structure (low-rank q) at toy sizes: the graphs' default
  (:func:`mlaref.reference.graphs.synthetic.tiny_hparams`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from mlaref.reference import libm as libm

__all__ = ["HParams", "PRESETS", "CHECKPOINTS", "preset", "FA_CTX_PAD", "pad_ctx"]

# llama_kv_cache_get_padding (llama.cpp@676f0e71b): n_ctx is a multiple of 256 with flash attention, else 32.
FA_CTX_PAD = 256
NO_FA_CTX_PAD = 32


def _logf(x: float) -> np.float32:
    try:
        if libm.available():
            return np.float32(libm.logf(np.array([x], dtype=np.float32))[0])
    except ImportError:
        pass
    return np.log(np.float32(x))


@dataclass(frozen=True)
class HParams:
    """One DeepSeek-V2-family model's shape and attention constants (llama.cpp field names)."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_embd_head_k: int  # 192 = qk_nope 128 + qk_rope 64
    n_embd_head_v: int
    n_rot: int  # qk_rope head dim
    n_lora_q: int  # 0 for Lite (the key is not read)
    n_lora_kv: int
    n_ff: int  # dense layers' FFN width
    n_ff_exp: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_layer_dense_lead: int
    n_vocab: int
    n_ctx_train: int = 163840
    f_norm_rms_eps: float = 1e-6
    rope_freq_base: float = 10000.0
    rope_freq_scale: float = 0.025  # 1 / rope.scaling.factor (40)
    n_ctx_orig_yarn: int = 4096
    rope_yarn_log_mul: float = 0.0707
    rope_attn_factor: float = 1.0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_ext_factor: float = 1.0
    expert_weights_scale: float = 1.0
    expert_weights_norm: bool = False
    expert_gating_func: str = "softmax"
    f_max_alibi_bias: float = 0.0

    def __post_init__(self):
        self.validate()

    # -- validation ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the field and the rule for any inconsistent value."""
        positive = ("n_layer", "n_embd", "n_head", "n_head_kv", "n_embd_head_k", "n_embd_head_v", "n_rot",
                    "n_lora_kv", "n_ff", "n_ff_exp", "n_expert", "n_expert_used", "n_vocab", "n_ctx_train",
                    "n_ctx_orig_yarn")
        for f in positive:
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"HParams.{f} must be a positive int, got {v!r}")
        for f in ("n_lora_q", "n_expert_shared", "n_layer_dense_lead"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"HParams.{f} must be an int >= 0, got {v!r}")
        if self.n_head % self.n_head_kv:
            raise ValueError(
                f"HParams.n_head ({self.n_head}) must be a multiple of n_head_kv ({self.n_head_kv}): "
                "flash attention broadcasts each K/V head over n_head / n_head_kv query heads"
            )
        if self.n_rot >= self.n_embd_head_k:
            raise ValueError(
                f"HParams.n_rot ({self.n_rot}) must be smaller than n_embd_head_k ({self.n_embd_head_k}): "
                "the key head is qk_nope + qk_rope with qk_nope > 0"
            )
        if self.n_rot % 2:
            raise ValueError(f"HParams.n_rot must be even (rope rotates pairs), got {self.n_rot}")
        if self.n_expert_used > self.n_expert:
            raise ValueError(
                f"HParams.n_expert_used ({self.n_expert_used}) must not exceed n_expert ({self.n_expert})"
            )
        if self.n_layer_dense_lead > self.n_layer:
            raise ValueError(
                f"HParams.n_layer_dense_lead ({self.n_layer_dense_lead}) must not exceed n_layer ({self.n_layer})"
            )
        if self.expert_gating_func not in ("softmax", "sigmoid"):
            raise ValueError(
                f"HParams.expert_gating_func must be 'softmax' or 'sigmoid', got {self.expert_gating_func!r}"
            )
        if not (0.0 < self.rope_freq_scale <= 1.0):
            raise ValueError(f"HParams.rope_freq_scale must be in (0, 1], got {self.rope_freq_scale}")

    # -- derived --------------------------------------------------------------------------------------
    @property
    def is_lite(self) -> bool:
        """Whether q comes from a plain ``wq`` (no q low-rank projection): ``n_lora_q == 0``.

        This is what shapes the graph. llama.cpp itself decides it by ``n_layer == 27`` (``llm_load_hparams``,
        ``llama.cpp@676f0e71b``; see :attr:`loader_is_lite`), which is the same thing for real checkpoints but
        would refuse synthetic models with fewer layers, so mlaref keys the structure on ``n_lora_q``.
        """
        return self.n_lora_q == 0

    @property
    def loader_is_lite(self) -> bool:
        """llama.cpp's own rule: ``is_lite = (n_layer == 27)``."""
        return self.n_layer == 27

    @property
    def n_embd_head_qk_nope(self) -> int:
        return self.n_embd_head_k - self.n_rot

    @property
    def kv_row_elems(self) -> int:
        """Elements per MLA cache row: c^KV (kv_lora_rank) + k_pe (n_rot) = 576 for DeepSeek-V2."""
        return self.n_lora_kv + self.n_rot

    @property
    def mscale(self) -> np.float32:
        one = np.float32(1)
        return np.float32(self.rope_attn_factor) * (
            one + np.float32(self.rope_yarn_log_mul) * _logf(float(one / np.float32(self.rope_freq_scale)))
        )

    @property
    def kq_scale(self) -> np.float32:
        m = self.mscale
        return np.float32(np.float32(1) * m * m / np.sqrt(np.float32(self.n_embd_head_k)))

    @property
    def attn_factor_scaled(self) -> np.float32:
        one = np.float32(1)
        return np.float32(one / (one + np.float32(0.1) * _logf(float(one / np.float32(self.rope_freq_scale)))))

    def replace(self, **changes) -> "HParams":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# -- the presets: the one table of named models ----------------------------------------------------------------
# Every preset of mlaref, published or synthetic, is defined here and nowhere else. The other views derive from
# it: preset() and CHECKPOINTS here, the GGUF writer's presets (mlaref.reference.gguf.presets: the entries it has
# weight types for) and the graphs' toy model (mlaref.reference.graphs.synthetic.tiny_hparams).
DEEPSEEK_V2_LITE = HParams(
    name="deepseek-v2-lite",
    n_layer=27, n_embd=2048, n_head=16, n_head_kv=16, n_embd_head_k=192, n_embd_head_v=128, n_rot=64,
    n_lora_q=0, n_lora_kv=512, n_ff=10944, n_ff_exp=1408, n_expert=64, n_expert_used=6, n_expert_shared=2,
    n_layer_dense_lead=1, n_vocab=102400, expert_weights_scale=1.0,
)

DEEPSEEK_V2 = HParams(
    name="deepseek-v2",
    n_layer=60, n_embd=5120, n_head=128, n_head_kv=128, n_embd_head_k=192, n_embd_head_v=128, n_rot=64,
    n_lora_q=1536, n_lora_kv=512, n_ff=12288, n_ff_exp=1536, n_expert=160, n_expert_used=6, n_expert_shared=2,
    n_layer_dense_lead=1, n_vocab=102400, expert_weights_scale=16.0,
)

PRESETS = {p.name: p for p in (
    DEEPSEEK_V2_LITE,
    DEEPSEEK_V2,
    # DeepSeek-V2-Lite's attention, all of it (upstream facts §1.1); 2 layers, 4 experts, narrow FFNs, small vocab
    DEEPSEEK_V2_LITE.replace(name="lite-attn", n_layer=2, n_ff=512, n_ff_exp=256, n_expert=4, n_expert_used=2,
                             n_vocab=256),
    # Lite's structure (plain wq) at toy sizes; every row a multiple of 32 (q8_0, iq4_nl, q4_0 ... blocks)
    HParams(name="tiny", n_layer=2, n_embd=64, n_head=2, n_head_kv=2, n_embd_head_k=64, n_embd_head_v=32, n_rot=32,
            n_lora_q=0, n_lora_kv=32, n_ff=64, n_ff_exp=32, n_expert=4, n_expert_used=2, n_expert_shared=1,
            n_layer_dense_lead=1, n_vocab=64, n_ctx_train=4096),
    # the full model's structure (low-rank q) at toy sizes, multiples of 32; a cache row of 96 values
    HParams(name="synthetic-tiny", n_layer=2, n_embd=64, n_head=2, n_head_kv=2, n_embd_head_k=64, n_embd_head_v=32,
            n_rot=32, n_lora_q=64, n_lora_kv=64, n_ff=64, n_ff_exp=32, n_expert=8, n_expert_used=3,
            n_expert_shared=1, n_layer_dense_lead=1, n_vocab=64),
)}

CHECKPOINTS = (DEEPSEEK_V2_LITE.name, DEEPSEEK_V2.name)  # the released models; the other presets are synthetic


def preset(name: str) -> HParams:
    """The preset called ``name`` (a key of :data:`PRESETS`: ``deepseek-v2-lite``, ``deepseek-v2``, ...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def pad_ctx(n_ctx: int, flash_attn: bool = True) -> int:
    """n_ctx rounded up as llama.cpp does (``GGML_PAD(n_ctx, llama_kv_cache_get_padding)``)."""
    pad = FA_CTX_PAD if flash_attn else NO_FA_CTX_PAD
    return int(math.ceil(n_ctx / pad) * pad)
