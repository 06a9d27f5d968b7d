"""DeepSeek-V2 graph builders (``build_deepseek2``, ``-mla 2 -fa``) in three FlashMLA-2 variants plus the TG path.

The builder issues the same ggml calls, in the same order and with the same ``build_forward_expand`` roots,
as ``llm_build_context::build_deepseek2`` (``src/llama.cpp@676f0e71b``), so the IR's DFS gives llama.cpp's
node order and the allocator model sees llama.cpp's graph (upstream facts §3). Names are the ``cb`` names
(``"%s-%d"`` with the layer, e.g. ``kv_f32-1``) or ggml's automatic ones.

Prompt-processing attention (n_tokens > n_head, the worst-case reserve graph):

``f32``  (before #253, fc6a65dda; upstream facts §3.3 "old sub-branch")
    cast the whole per-layer cache view ``[576, n_kv]`` to f32, ``kv_f32 = wkv_b × nope``, repeat and permute
    the rope part in f32, concat K in f32, cast K and V back to the cache type.
``direct`` (#253's CPU-only branch, 676f0e71b)
    ``kv_f32 = wkv_b × cache_view`` reading the cache type directly, cast only the nope/v halves, repeat and
    concat the rope part bytewise in the cache type. Roots k_nope, v, k, then q.
``chunked`` (mlaref)
    the KV cells are processed in chunks of ``kv_chunk`` cells (the last one may be shorter). Per chunk c:
    ``kv_f32_c = wkv_b × cache_view[c]`` ([4096, C] f32), ``k_nope_c``/``v_c`` cast to the cache type,
    ``k_rope_c`` repeated bytewise, ``k_c = concat(k_nope_c, k_rope_c)``, then
    ``part_c = flash_attn_ext_partial(q, k_c, v_c, mask[:, chunk c])`` ([Dv+2, H, T]: acc, M, S) and
    ``m_c = fa_merge(m_{c-1}, part_c, final = c is last)`` (``m_0 = part_0``). Chunks are merged left to
    right, a fixed order independent of threads. When ``n_kv <= kv_chunk`` (one chunk) the layer is #253's
    ``direct`` graph with ggml's own ``flash_attn_ext``, so the variant reduces to #253 at short contexts.
    The mask is an **f16 input** (llama_set_inputs would write 0 / -inf, exact in f16) instead of an f32
    input plus a cast, and each chunk reads a column block of it through a strided view. The per-layer
    working set is O(kv_chunk), so the compute buffer grows only with the f16 mask (1024 B per context
    token). Default chunk: 4096 cells (DeepSeek-V2-Lite, f16 cache: 204.00 MiB up to 65536, 260.26 at
    131072; 2048 cells give 217.13 there, at twice the merges).

Token generation (n_tokens <= n_head, upstream facts §3.1): the absorbed-weights path with ``wk_b``/``wv_b``, a
transposed copy of the latent cache, ``soft_max_ext`` with the f16 mask; shared by all variants (the
chunked variant's mask is its f16 input, the others cast the f32 input as llama.cpp does).

Worst case (``llama_new_context_with_model``): ``n_tokens = min(n_ctx, n_ubatch)``, ``n_kv = n_ctx``,
``kv_head = n_ctx - n_tokens``, ``n_outputs = n_tokens`` (upstream facts §6.3).

After #253 (upstream facts §9; the later graphs, each modelled from the commit named):

``mla3`` (ik_llama.cpp mla = 3, PR #273 = 24e780ba7; upstream facts §9.1)
    prompt processing through the mla = 2 flash path **as #260 (9fe2b06f7) rebuilt it**: the rope repeat and
    ``q_concat`` first, then per group of heads ``kv_f32 = view(wkv_b) × cache``, the k_nope / v casts, K, and
    ``flash_attn_ext`` on a view of q's heads; the groups' ``[128·g, T]`` results joined by ``concat`` along dim 0.
    Without ``-amb`` there is one group, the same tensors as ``direct`` in another node order. Token generation
    through the absorbed mla = 1 path with flash attention: ``q = [wk_b × q_nope, q_rope]`` (576 wide),
    ``flash_attn_ext(q, cache, cache[:, :512])`` with V a view of K, then ``wv_b``. The switch is
    ``pp_rule="n_head"`` (``n_tokens > n_head``, 24e780ba7) or ``pp_rule="128"`` (``n_tokens >= 128``, the
    ik-llama-cpp-python 0.1.5 snapshot); it applies to every ik variant (at 676f0e71b the rule is n_head).
``mla3-amb`` (``-amb``, PRs #237, #260, #1211; 256 MiB by default since #2312; upstream facts §9.3)
    ``mla3`` with ``amb_mib`` (default 256): the number of head groups is chosen by the snapshot's rule
    (:func:`heads_per_group`). ``mla3`` itself takes ``amb_mib`` too (default 0: off).
``mainline`` (llama.cpp PR #12801 and later, llama-cpp-python 0.3.36's ``src/models/deepseek2.cpp`` and
    ``src/llama-graph.cpp``; upstream facts §9.4): ``attn_k_b`` ``[nope, rank, H]`` absorbed into q, multi-query
    flash attention over the 576-wide cache row with V a view of its first 512 columns, ``attn_v_b``
    ``[rank, v, H]`` after attention, the cache written by ``set_rows`` through an i64 index input ``k_idxs``, an
    f16 mask input, no V cache, one path for every batch. Only the attention is mainline's: the rest of the layer
    (norms, MoE, output) is this module's ik graph, so the compute buffer of ``mainline`` is that of mainline's
    attention inside ik's layer, placed by ik's allocator (676f0e71b), not what llama.cpp prints.

``rope_first=True`` (PR #408 = 0c02e16a3; upstream facts §9.2): the cache row is ``[k_rope (n_rot) | c_kv]``;
``kvr``, q and K are concatenated rope first, the nope / latent views start after the rope part. Valid for
``direct``, ``chunked``, ``mla3`` and ``mla3-amb`` (the 676f0e71b graphs with #408's order are mlaref's
combination; #408 itself changed the #273 graph).

Cache types (upstream facts §9.5): f16, q8_0, bf16, and q8_KV (rows with 8 bytes of metadata in front) only for
``f32``'s prompt path, which casts whole cache rows; every other graph takes views that start or end inside a row
(the nope / rope split, V a view of K) or concatenates rows, which q8_KV cannot do: ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlaref.reference.graphs import ir
from mlaref.reference.graphs.deepseek2_after253 import (
    DEFAULT_AMB_MIB,
    MLA3_VARIANTS,
    PP_RULES,
    After253,
    _check_options,
    _pp_opt,
    heads_per_group,
)
from mlaref.reference.hparams import FA_CTX_PAD, HParams

__all__ = ["VARIANTS", "CACHE_TYPES", "DEFAULT_KV_CHUNK", "DEFAULT_AMB_MIB", "PP_RULES", "MLAGraph", "build_graph",
           "build_attention_block", "heads_per_group"]

VARIANTS = ("f32", "direct", "chunked", "mla3", "mla3-amb", "mainline")
CACHE_TYPES = ("f16", "q8_0", "bf16", "q8_KV")
DEFAULT_KV_CHUNK = 4096
LLAMA_ROPE_TYPE_NORM = 0


@dataclass
class MLAGraph:
    """A built graph with its inputs, weights and KV cache tensors by name."""

    graph: ir.Graph
    hparams: HParams
    variant: str
    cache_type: str
    n_ctx: int
    n_tokens: int
    n_kv: int
    kv_head: int
    n_outputs: int
    path: str  # "flash_mla2" (prompt), "tg" (token generation) or "mqa" (mainline, every batch)
    kv_chunk: int | None
    inputs: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    kv_cache: list = field(default_factory=list)
    output: ir.Tensor | None = None
    rope_first: bool = False
    amb_mib: int = 0
    head_groups: int = 1  # flash attention calls per layer on the mla3 prompt path


def check_hparams(hp: HParams, n_ctx, variant, cache_type, n_tokens, n_kv, kv_head, kv_chunk, n_ubatch):
    if not isinstance(hp, HParams):
        raise TypeError(f"hp must be an HParams, got {type(hp).__name__}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    if cache_type not in CACHE_TYPES:
        raise ValueError(f"cache_type must be one of {', '.join(CACHE_TYPES)}; got {cache_type!r}")
    if not isinstance(n_ctx, int) or n_ctx <= 0:
        raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
    if n_ctx % FA_CTX_PAD:
        up = (n_ctx + FA_CTX_PAD - 1) // FA_CTX_PAD * FA_CTX_PAD
        raise ValueError(
            f"n_ctx ({n_ctx}) must be a multiple of {FA_CTX_PAD} with flash attention "
            f"(llama_kv_cache_get_padding; llama.cpp would use {up})"
        )
    if n_ubatch <= 0:
        raise ValueError(f"n_ubatch must be positive, got {n_ubatch}")
    if n_tokens <= 0 or n_tokens > n_ctx:
        raise ValueError(f"n_tokens must be in 1..n_ctx ({n_ctx}), got {n_tokens}")
    if n_kv <= 0 or n_kv > n_ctx or n_kv % FA_CTX_PAD:
        raise ValueError(f"n_kv must be a multiple of {FA_CTX_PAD} in 256..n_ctx ({n_ctx}), got {n_kv}")
    if kv_head < 0 or kv_head + n_tokens > n_ctx:
        raise ValueError(f"kv_head ({kv_head}) + n_tokens ({n_tokens}) must fit in the cache ({n_ctx} cells)")
    if variant == "chunked" and (not isinstance(kv_chunk, int) or kv_chunk <= 0 or kv_chunk % FA_CTX_PAD):
        raise ValueError(f"kv_chunk must be a positive multiple of {FA_CTX_PAD}, got {kv_chunk!r}")


def _default_amb(variant, amb_mib):
    if amb_mib is None:
        return DEFAULT_AMB_MIB if variant == "mla3-amb" else 0
    return amb_mib


def build_graph(hp: HParams, n_ctx: int, *, variant: str = "direct", cache_type: str = "f16",
                n_ubatch: int = 512, n_tokens: int | None = None, n_kv: int | None = None,
                kv_head: int | None = None, weight_type: str = "iq4_nl", kv_chunk: int = DEFAULT_KV_CHUNK,
                fmoe: bool = False, weight_types: dict[str, str] | None = None, rope_first: bool = False,
                amb_mib: int | None = None, pp_rule: str = "n_head") -> MLAGraph:
    """The whole DeepSeek-V2 graph for one micro-batch (all layers, dense lead, MoE FFN, output).

    Defaults give llama.cpp's worst-case reserve graph. ``n_tokens <= n_head`` (``pp_rule="n_head"``) or
    ``n_tokens < 128`` (``pp_rule="128"``) builds the TG path. ``weight_type`` only sets the weights' types (their
    memory is not in the compute buffer). ``weight_types`` (name -> type, e.g. a GGUF file's) gives every weight its
    own type instead; a weight the graph needs and the dict lacks raises ValueError. ``rope_first``, ``amb_mib``
    (None: 256 for ``mla3-amb``, else 0) and ``pp_rule``: see the module docstring.
    """
    if n_tokens is None:
        n_tokens = min(n_ctx, n_ubatch) if isinstance(n_ctx, int) else 1
    if n_kv is None:
        n_kv = n_ctx
    if kv_head is None:
        kv_head = n_ctx - n_tokens if isinstance(n_ctx, int) else 0
    check_hparams(hp, n_ctx, variant, cache_type, n_tokens, n_kv, kv_head, kv_chunk, n_ubatch)
    amb_mib = _default_amb(variant, amb_mib)
    _check_options(hp, variant, cache_type, n_tokens, rope_first, amb_mib, pp_rule)
    if weight_types is not None and not isinstance(weight_types, dict):
        raise TypeError(f"weight_types must be a dict of weight name -> type name, got {type(weight_types).__name__}")
    return Builder(hp, n_ctx, variant, cache_type, n_tokens, n_kv, kv_head, weight_type, kv_chunk, fmoe,
                   weight_types, rope_first=rope_first, amb_mib=amb_mib, pp_rule=pp_rule).build()


def build_attention_block(hp: HParams, n_ctx: int, *, variant: str = "direct", cache_type: str = "f16",
                          n_tokens: int = 32, n_kv: int | None = None, kv_head: int | None = None,
                          weight_type: str = "q8_0", il: int = 0, rope_first: bool = False,
                          amb_mib: int | None = None, pp_rule: str = "n_head", tg: bool = False) -> MLAGraph:
    """Layer ``il``'s attention alone, as :func:`build_graph` builds it: from the input ``attn_norm-{il}`` (the
    normed hidden state, an f32 input ``[n_embd, n_tokens]``) to ``kqv_out-{il}`` (the graph output), with the
    cache store, the K/V build of ``variant`` and the flash attention in between; the inputs are
    ``attn_norm-{il}``, ``inp_pos`` and ``KQ_mask`` (and ``k_idxs`` for ``mainline``) and the layer's cache is
    ``kv_cache[0]``. Used to run one layer's attention on a real ggml and on the spec from the same bytes.
    The prompt path unless ``tg`` (then ``n_tokens`` must be below the ``pp_rule`` switch)."""
    if n_kv is None:
        n_kv = n_ctx
    if kv_head is None:
        kv_head = n_ctx - n_tokens
    check_hparams(hp, n_ctx, variant, cache_type, n_tokens, n_kv, kv_head, DEFAULT_KV_CHUNK, 512)
    amb_mib = _default_amb(variant, amb_mib)
    _check_options(hp, variant, cache_type, n_tokens, rope_first, amb_mib, pp_rule)
    if variant != "mainline" and _pp_opt(hp, n_tokens, pp_rule) == tg:
        if tg:
            raise ValueError(f"tg=True: n_tokens ({n_tokens}) must be below the switch ({PP_RULES[pp_rule]})")
        raise ValueError(f"the attention block is the prompt path: n_tokens must exceed n_head ({hp.n_head})"
                         if pp_rule == "n_head" else "the attention block is the prompt path: n_tokens must be >= 128")
    b = Builder(hp, n_ctx, variant, cache_type, n_tokens, n_kv, kv_head, weight_type, DEFAULT_KV_CHUNK, False,
                rope_first=rope_first, amb_mib=amb_mib, pp_rule=pp_rule)
    return b.build_block(il)


class Builder(After253):
    def __init__(self, hp, n_ctx, variant, cache_type, n_tokens, n_kv, kv_head, weight_type, kv_chunk, fmoe,
                 weight_types=None, *, rope_first=False, amb_mib=0, pp_rule="n_head"):
        self.hp = hp
        self.weight_types = weight_types
        self.n_ctx = n_ctx
        self.variant = variant
        self.ct = cache_type
        self.T = n_tokens
        self.n_kv = n_kv
        self.kv_head = kv_head
        self.n_outputs = n_tokens
        self.wt = weight_type
        self.kv_chunk = kv_chunk if variant == "chunked" else None
        self.fmoe = fmoe
        self.gf = ir.Graph()
        self.weights: dict = {}
        self.inputs: dict = {}
        self.pp_opt = _pp_opt(hp, n_tokens, pp_rule)
        self.rope_first = rope_first
        self.amb_mib = amb_mib
        self.head_groups = 1

    def _path(self) -> str:
        if self.variant == "mainline":
            return "mqa"
        return "flash_mla2" if self.pp_opt else "tg"

    def _graph(self, output, kv_cache, n_outputs) -> MLAGraph:
        return MLAGraph(graph=self.gf, hparams=self.hp, variant=self.variant, cache_type=self.ct, n_ctx=self.n_ctx,
                        n_tokens=self.T, n_kv=self.n_kv, kv_head=self.kv_head, n_outputs=n_outputs,
                        path=self._path(), kv_chunk=self.kv_chunk, inputs=self.inputs, weights=self.weights,
                        kv_cache=kv_cache, output=output, rope_first=self.rope_first, amb_mib=self.amb_mib,
                        head_groups=self.head_groups)

    # -- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def cb(t: ir.Tensor, name: str, il: int) -> ir.Tensor:
        """llama.cpp's callback: ``"%s-%d"`` for layer tensors, the bare name for il = -1."""
        t.name = f"{name}-{il}" if il >= 0 else name
        return t

    def w(self, name: str, ne, type_name: str | None = None) -> ir.Tensor:
        if self.weight_types is not None:
            if name not in self.weight_types:
                raise ValueError(f"weight_types: the graph needs weight {name!r}, which the dict does not hold")
            type_name = self.weight_types[name]
        t = ir.weight(name, type_name or self.wt, ne)
        self.weights[name] = t
        return t

    def norm(self, x, wname, il) -> ir.Tensor:
        """``llm_build_norm(..., LLM_NORM_RMS)`` with a weight: one fused_rms_norm."""
        return ir.fused_rms_norm(x, self.w(wname, (x.ne[0],), "f32"), self.hp.f_norm_rms_eps)

    def rope(self, x, pos) -> ir.Tensor:
        hp = self.hp
        return ir.rope_ext(x, pos, hp.n_rot, LLAMA_ROPE_TYPE_NORM, hp.n_ctx_orig_yarn, hp.rope_freq_base,
                           hp.rope_freq_scale, hp.yarn_ext_factor, float(hp.attn_factor_scaled),
                           hp.yarn_beta_fast, hp.yarn_beta_slow)

    # -- the model -------------------------------------------------------------------------------------
    def build(self) -> MLAGraph:
        hp, T = self.hp, self.T
        gf = self.gf
        self.kv_l = [ir.weight(f"cache_kv_l{il}", self.ct, (hp.kv_row_elems, self.n_ctx)) for il in range(hp.n_layer)]

        inp_tokens = self.cb(ir.input_tensor("", "i32", (T,)), "inp_tokens", -1)
        inpL = self.cb(ir.get_rows(self.w("token_embd.weight", (hp.n_embd, hp.n_vocab)), inp_tokens), "inp_embd", -1)
        self._inputs()
        self.inputs["inp_tokens"] = inp_tokens

        for il in range(hp.n_layer):
            inpSA = inpL
            cur = self.cb(self.norm(inpL, f"blk.{il}.attn_norm.weight", il), "attn_norm", il)
            cur = self.attention(cur, il)
            if il == hp.n_layer - 1:
                inp_out_ids = self.cb(ir.input_tensor("", "i32", (self.n_outputs,)), "inp_out_ids", -1)
                self.inputs["inp_out_ids"] = inp_out_ids
                cur = ir.get_rows(cur, inp_out_ids)
                inpSA = ir.get_rows(inpSA, inp_out_ids)
            ffn_inp = self.cb(ir.add(cur, inpSA), "ffn_inp", il)
            cur = self.cb(self.norm(ffn_inp, f"blk.{il}.ffn_norm.weight", il), "ffn_norm", il)
            if il < hp.n_layer_dense_lead:
                cur = self.cb(self.ffn(cur, f"blk.{il}.ffn_{{}}.weight", hp.n_ff, il), "ffn_out", il)
            else:
                moe_out = self.cb(self.moe(cur, il), "ffn_moe_out", il)
                shexp = self.cb(self.ffn(cur, f"blk.{il}.ffn_{{}}_shexp.weight", hp.n_ff_exp * hp.n_expert_shared, il),
                                "ffn_shexp", il)
                cur = self.cb(ir.add(moe_out, shexp), "ffn_out", il)
            cur = self.cb(ir.add(cur, ffn_inp), "l_out", il)
            inpL = cur

        cur = self.cb(self.norm(inpL, "output_norm.weight", -1), "result_norm", -1)
        cur = self.cb(ir.mul_mat(self.w("output.weight", (hp.n_embd, hp.n_vocab)), cur), "result_output", -1)
        gf.expand(cur)
        return self._graph(cur, self.kv_l, self.n_outputs)

    def _inputs(self):
        """``inp_pos`` and the flash-attention mask (f32 input, cast to f16 except for chunked and mainline).

        mainline: ``build_inp_pos``, then ``build_attn_inp_k``: the i64 cache row index ``k_idxs`` (mainline's
        ``attn_inp_k_idxs``) and the f16 mask (``attn_inp_kq_mask``; ``[n_kv, n_tokens]`` there, padded to 32 rows
        here as ggml@676f0e71b's flash_attn_ext asserts: the same bytes at the worst case's 512 tokens)."""
        T = self.T
        inp_pos = self.cb(ir.input_tensor("", "i32", (T,)), "inp_pos", -1)
        pad = (T + ir.GGML_KQ_MASK_PAD - 1) // ir.GGML_KQ_MASK_PAD * ir.GGML_KQ_MASK_PAD
        if self.variant == "mainline":
            self.k_idxs = self.cb(ir.input_tensor("", "i64", (T,)), "k_idxs", -1)
            self.inputs["k_idxs"] = self.k_idxs
        if self.variant in ("chunked", "mainline"):
            kq_mask = self.cb(ir.input_tensor("", "f16", (self.n_kv, pad)), "KQ_mask", -1)
            self.inputs["KQ_mask"] = kq_mask
        else:
            kq_mask32 = self.cb(ir.input_tensor("", "f32", (self.n_kv, pad)), "KQ_mask", -1)
            kq_mask = ir.cast(kq_mask32, "f16")  # flash_attn: build_inp_KQ_mask returns the f16 cast
            self.inputs["KQ_mask"] = kq_mask32
        self.inputs["inp_pos"] = inp_pos
        self.kq_mask = kq_mask
        self.inp_pos = inp_pos

    def build_block(self, il: int) -> MLAGraph:
        """See :func:`build_attention_block`."""
        hp = self.hp
        self.kv_l = [ir.weight(f"cache_kv_l{il}", self.ct, (hp.kv_row_elems, self.n_ctx))]
        cur = self.cb(ir.input_tensor("", "f32", (hp.n_embd, self.T)), "attn_norm", il)
        self._inputs()
        self.inputs[cur.name] = cur
        if il:
            self.kv_l = [None] * il + self.kv_l
        out = self.attention(cur, il)
        self.gf.expand(out)
        return self._graph(out, [t for t in self.kv_l if t is not None], self.T)

    def ffn(self, cur, wfmt, n_ff, il) -> ir.Tensor:
        """``llm_build_ffn`` with SILU and a parallel gate: ``down × (silu(gate × x) · (up × x))``."""
        n_embd = self.hp.n_embd
        tmp = self.cb(ir.mul_mat(self.w(wfmt.format("up"), (n_embd, n_ff)), cur), "ffn_up", il)
        g = self.cb(ir.mul_mat(self.w(wfmt.format("gate"), (n_embd, n_ff)), cur), "ffn_gate", il)
        cur = ir.fused_mul_unary(g, tmp, "SILU")
        return ir.mul_mat(self.w(wfmt.format("down"), (n_ff, n_embd)), cur)

    def moe(self, cur, il) -> ir.Tensor:
        """``llm_build_moe_ffn``: softmax gating, top-k, up/gate/down per expert, weighted multi_add."""
        hp = self.hp
        n_embd, T = cur.ne[0], cur.ne[1]
        E, k, n_ff = hp.n_expert, hp.n_expert_used, hp.n_ff_exp
        logits = self.cb(ir.mul_mat(self.w(f"blk.{il}.ffn_gate_inp.weight", (n_embd, E), "f32"), cur),
                         "ffn_moe_logits", il)
        if hp.expert_gating_func != "softmax":
            raise ValueError("only softmax expert gating is modelled")
        probs = self.cb(ir.soft_max(logits), "ffn_moe_probs", il)
        selected = ir.top_k(probs, k)
        self.cb(selected.src[0], "ffn_moe_argsort", il)
        self.cb(selected, "ffn_moe_topk", il)
        weights = self.cb(ir.get_rows(ir.reshape_3d(probs, 1, E, T), selected), "ffn_moe_weights", il)
        if hp.expert_weights_norm:
            raise ValueError("expert_weights_norm is not modelled (DeepSeek-V2 does not use it)")
        weights = self.cb(ir.scale(weights, hp.expert_weights_scale), "ffn_moe_weights_scaled", il)
        cur = ir.reshape_3d(cur, n_embd, 1, T)
        up_e = self.w(f"blk.{il}.ffn_up_exps.weight", (n_embd, n_ff, E))
        gate_e = self.w(f"blk.{il}.ffn_gate_exps.weight", (n_embd, n_ff, E))
        if self.fmoe:
            par = ir.moe_up_gate(up_e, gate_e, cur, selected, "SILU")
        else:
            up = self.cb(ir.mul_mat_id(up_e, cur, selected), "ffn_moe_up", il)
            gate = self.cb(ir.mul_mat_id(gate_e, cur, selected), "ffn_moe_gate", il)
            par = ir.fused_mul_unary(gate, up, "SILU")
        self.cb(par, "ffn_moe_gate_par", il)
        experts = self.cb(ir.mul_mat_id(self.w(f"blk.{il}.ffn_down_exps.weight", (n_ff, n_embd, E)), par, selected),
                          "ffn_moe_down", il)
        experts = ir.mul(experts, weights)
        first = ir.view_2d(experts, n_embd, T, experts.nb[2], 0)
        if k == 1:
            return ir.cont(first)
        if k == 2:
            return ir.add(first, ir.view_2d(experts, n_embd, T, experts.nb[2], experts.nb[1]))
        return ir.multi_add(first, k)

    # -- attention ------------------------------------------------------------------------------------
    def _cat(self, nope, rope) -> ir.Tensor:
        """``concat`` along dim 0 in the cache's order: (nope, rope), or (rope, nope) with ``rope_first``."""
        return ir.concat(rope, nope, 0) if self.rope_first else ir.concat(nope, rope, 0)

    def _offsets(self, t) -> tuple[int, int]:
        """Byte offsets of the latent (nope) part and of the rope part inside a cache row of type ``t``."""
        hp = self.hp
        if self.rope_first:
            return ir.row_size(t, hp.n_rot), 0
        return 0, ir.row_size(t, hp.n_lora_kv)

    def attention(self, cur, il) -> ir.Tensor:
        if self.variant == "mainline":
            return self.attention_mainline(cur, il)
        hp, T, gf = self.hp, self.T, self.gf
        H = hp.n_head
        nope, rope_d, rank = hp.n_embd_head_qk_nope, hp.n_rot, hp.n_lora_kv
        if hp.is_lite:
            q = self.cb(ir.mul_mat(self.w(f"blk.{il}.attn_q.weight", (hp.n_embd, H * hp.n_embd_head_k)), cur), "q", il)
        else:
            q = self.cb(ir.mul_mat(self.w(f"blk.{il}.attn_q_a.weight", (hp.n_embd, hp.n_lora_q)), cur), "q", il)
            q = self.cb(self.norm(q, f"blk.{il}.attn_q_a_norm.weight", il), "q", il)
            wq_b = self.w(f"blk.{il}.attn_q_b.weight", (hp.n_lora_q, H * hp.n_embd_head_k))
            q = self.cb(ir.mul_mat(wq_b, q), "q", il)
        rs = ir.row_size
        q_nope = self.cb(ir.view_3d(q, nope, H, T, rs(q.type, hp.n_embd_head_k), rs(q.type, hp.n_embd_head_k * H), 0),
                         "q_nope", il)
        q_rope = self.cb(ir.view_3d(q, rope_d, H, T, rs(q.type, hp.n_embd_head_k), rs(q.type, hp.n_embd_head_k * H),
                                    rs(q.type, nope)), "q_rope", il)
        q_rope = self.cb(self.rope(q_rope, self.inp_pos), "q_rope", il)

        kvc = self.cb(ir.mul_mat(self.w(f"blk.{il}.attn_kv_a_mqa.weight", (hp.n_embd, rank + rope_d)), cur),
                      "kv_rope_compresseed", il)
        k_rope = self.cb(ir.view_3d(kvc, rope_d, 1, T, kvc.nb[1], kvc.nb[1], rs(kvc.type, rank)), "k_rope", il)
        k_rope = self.cb(self.rope(k_rope, self.inp_pos), "k_rope", il)
        kv_compressed = self.cb(ir.view_2d(kvc, rank, T, kvc.nb[1], 0), "kv_compressed", il)
        kv_compressed = self.cb(self.norm(kv_compressed, f"blk.{il}.attn_kv_a_norm.weight", il), "kv_compressed", il)

        kv_l = self.kv_l[il]
        kvr = self.cb(self._cat(kv_compressed, ir.permute(k_rope, 0, 2, 1, 3)), "kvr", il)
        row = rs(kv_l.type, rank + rope_d)
        kv_cache_view = ir.view_2d(kv_l, kv_l.ne[0], T, row, row * self.kv_head)
        gf.expand(ir.cpy(kvr, kv_cache_view))
        # wk_b / wv_b must exist for MLA (llm_load_tensors); they are used by the TG path only.
        wk_b = self.w(f"blk.{il}.attn_k_b.weight", (nope, rank * H))
        wv_b = self.w(f"blk.{il}.attn_v_b.weight", (rank, hp.n_embd_head_v * H))
        kv_cache = self.cb(ir.view_2d(kv_l, rank + rope_d, self.n_kv, row, 0), "kv_cache", il)

        chunked = self.variant == "chunked" and self.n_kv > self.kv_chunk
        if self.pp_opt and self.variant in MLA3_VARIANTS:
            cur = self.attn_pp_groups(q_nope, q_rope, kv_l, il)
        elif not self.pp_opt and self.variant in MLA3_VARIANTS:
            cur = self.attn_tg_flash(q_nope, q_rope, kv_cache, wk_b, wv_b, kv_l, il)
        elif self.pp_opt:
            if self.variant in ("direct", "chunked") and not chunked:
                k, v = self.kv_direct(kv_l, il)
            elif self.variant == "f32":
                k, v = self.kv_f32(kv_l, il)
            q = ir.permute(self._cat(q_nope, q_rope), 0, 2, 1, 3)
            self.cb(q, "q_concat", il)
            gf.expand(q)
            if chunked:
                kqv = self.cb(self.attn_chunked(q, kv_l, il), "kqv", il)
            else:
                kqv = ir.flash_attn_ext(q, k, v, self.kq_mask, float(hp.kq_scale), hp.f_max_alibi_bias, 0.0)
                if q.ne[1] <= 8:
                    kqv.op_params["prec"] = "f32"
                self.cb(kqv, "kqv", il)
            cur = ir.reshape_2d(kqv, hp.n_embd_head_v * H, T)
        else:
            cur = self.attn_tg(q_nope, q_rope, kv_cache, wk_b, wv_b, kv_l, il)
        gf.expand(cur)
        return self.cb(ir.mul_mat(self.w(f"blk.{il}.attn_output.weight", (hp.n_embd_head_v * H, hp.n_embd)), cur),
                       "kqv_out", il)

    def wkv_b(self, il) -> ir.Tensor:
        """Layer ``il``'s ``attn_kv_b`` weight ``[kv_lora_rank, n_head · (nope + v)]`` (the K/V decompression)."""
        hp = self.hp
        per_head = hp.n_embd_head_qk_nope + hp.n_embd_head_v
        return self.w(f"blk.{il}.attn_kv_b.weight", (hp.n_lora_kv, hp.n_head * per_head))

    def split_kv(self, kv_f32, n):
        """The k_nope / v halves of ``wkv_b × c``: ``[128, n, H]`` views, nb1 = row of all heads."""
        hp = self.hp
        rs = ir.row_size
        per_head = hp.n_embd_head_qk_nope + hp.n_embd_head_v
        nb1 = rs(kv_f32.type, hp.n_head * per_head)
        nb2 = rs(kv_f32.type, per_head)
        k_nope_f32 = ir.view_3d(kv_f32, hp.n_embd_head_qk_nope, n, hp.n_head, nb1, nb2, 0)
        v_f32 = ir.view_3d(kv_f32, hp.n_embd_head_v, n, hp.n_head, nb1, nb2, rs(kv_f32.type, hp.n_embd_head_qk_nope))
        return k_nope_f32, v_f32

    def kv_direct(self, kv_l, il):
        """#253's CPU branch (676f0e71b): K and V built in the cache type."""
        hp, gf = self.hp, self.gf
        off_nope, off_rope = self._offsets(kv_l.type)
        kv_cache_nope = ir.view_2d(kv_l, hp.n_lora_kv, self.n_kv, kv_l.nb[1], off_nope)
        kv_f32 = self.cb(ir.mul_mat(self.wkv_b(il), kv_cache_nope), "kv_f32", il)
        k_nope_f32, v_f32 = self.split_kv(kv_f32, self.n_kv)
        self.cb(v_f32, "v_f32", il)
        v = self.cb(ir.cast(v_f32, kv_l.type), "v", il)
        self.cb(k_nope_f32, "k_nope_f32", il)
        k_nope = self.cb(ir.cast(k_nope_f32, kv_l.type), "k_nope", il)
        gf.expand(k_nope)
        gf.expand(v)
        kv_cache_rope = ir.view_3d(kv_l, hp.n_rot, self.n_kv, 1, kv_l.nb[1], kv_l.nb[2], off_rope)
        k_rope = self.cb(ir.repeat(kv_cache_rope, (hp.n_rot, self.n_kv, hp.n_head, 1)), "k_rope", il)
        k = self.cb(self._cat(k_nope, k_rope), "k", il)
        gf.expand(k)
        return k, v

    def kv_f32(self, kv_l, il):
        """The f32 branch (fc6a65dda; 676f0e71b with more than one back-end)."""
        hp = self.hp
        kv_cache_view = ir.view_2d(kv_l, kv_l.ne[0], self.n_kv, kv_l.nb[1], 0)
        kv32 = self.cb(ir.cast(kv_cache_view, "f32"), "kv_cache_view_f32", il)
        kv_cache_nope = ir.view_2d(kv32, hp.n_lora_kv, self.n_kv, kv32.nb[1], 0)
        kv_cache_rope = ir.view_3d(kv32, hp.n_rot, 1, self.n_kv, kv32.nb[1], kv32.nb[1],
                                   ir.row_size(kv32.type, hp.n_lora_kv))
        kv_f32 = self.cb(ir.mul_mat(self.wkv_b(il), kv_cache_nope), "kv_f32", il)
        k_nope_f32, v_f32 = self.split_kv(kv_f32, self.n_kv)
        self.cb(k_nope_f32, "k_nope_f32", il)
        rep = ir.repeat(kv_cache_rope, (hp.n_rot, hp.n_head, self.n_kv, 1))
        k_rope_f32 = self.cb(ir.permute(rep, 0, 2, 1, 3), "k_rope_f32", il)
        k_f32 = self.cb(ir.concat(k_nope_f32, k_rope_f32, 0), "k_f32", il)
        k = self.cb(ir.cast(k_f32, kv_l.type), "k", il)
        self.cb(v_f32, "v_f32", il)
        v = self.cb(ir.cast(v_f32, kv_l.type), "v", il)
        return k, v

    def attn_chunked(self, q, kv_l, il) -> ir.Tensor:
        """mlaref's chunked FlashMLA-2: per chunk decompress, partial attention, fixed-order merge."""
        hp, gf = self.hp, self.gf
        C = self.kv_chunk
        row = kv_l.nb[1]
        mask = self.kq_mask
        acc = None
        off_nope, off_rope = self._offsets(kv_l.type)
        starts = list(range(0, self.n_kv, C))
        for ci, c0 in enumerate(starts):
            n = min(C, self.n_kv - c0)
            nope_view = ir.view_2d(kv_l, hp.n_lora_kv, n, row, c0 * row + off_nope)
            kv_f32 = self.cb(ir.mul_mat(self.wkv_b(il), nope_view), f"kv_f32_c{ci}", il)
            k_nope_f32, v_f32 = self.split_kv(kv_f32, n)
            k_nope = self.cb(ir.cast(k_nope_f32, kv_l.type), f"k_nope_c{ci}", il)
            v = self.cb(ir.cast(v_f32, kv_l.type), f"v_c{ci}", il)
            gf.expand(k_nope)
            gf.expand(v)
            rope_view = ir.view_3d(kv_l, hp.n_rot, n, 1, row, row * n, c0 * row + off_rope)
            k_rope = self.cb(ir.repeat(rope_view, (hp.n_rot, n, hp.n_head, 1)), f"k_rope_c{ci}", il)
            k = self.cb(self._cat(k_nope, k_rope), f"k_c{ci}", il)
            gf.expand(k)
            mask_c = ir.view_2d(mask, n, mask.ne[1], mask.nb[1], c0 * mask.nb[0])
            part = self.cb(ir.flash_attn_ext_partial(q, k, v, mask_c, float(hp.kq_scale)), f"kqv_part_c{ci}", il)
            last = ci == len(starts) - 1
            if acc is None:
                acc = ir.fa_merge(part, None, True) if last else part
            else:
                acc = ir.fa_merge(acc, part, last)
            if acc is not part:
                self.cb(acc, f"kqv_merge_c{ci}", il)
            gf.expand(acc)
        return acc

    def absorbed_q(self, q_nope, q_rope, wk_b, il) -> ir.Tensor:
        """The token paths' query ``[wk_b × q_nope, q_rope]`` per head (``wk_b`` absorbed into q, upstream facts
        §3.1): ``[kv_lora_rank + n_rot, T, H]``."""
        hp = self.hp
        H, nope, rank = hp.n_head, hp.n_embd_head_qk_nope, hp.n_lora_kv
        rs = ir.row_size
        wk_b3 = self.cb(ir.view_3d(wk_b, nope, rank, H, rs(wk_b.type, nope), rs(wk_b.type, rank) * nope, 0), "wk_b", il)
        q_nope = self.cb(ir.permute(q_nope, 0, 2, 1, 3), "q_nope_perm", il)
        q_nope2 = self.cb(ir.mul_mat(wk_b3, q_nope), "q_nope2", il)
        return self.cb(self._cat(q_nope2, ir.permute(q_rope, 0, 2, 1, 3)), "q", il)

    def absorbed_out(self, kqv_compressed, wv_b, il) -> ir.Tensor:
        """The token paths' output: ``wv_b`` per head times the attention over the latent cache
        ``[kv_lora_rank, T, H]``, permuted and flattened to ``[n_embd_head_v · H, T]`` (upstream facts §3.1)."""
        hp, T = self.hp, self.T
        H, rank = hp.n_head, hp.n_lora_kv
        rs = ir.row_size
        wv_b3 = ir.view_3d(wv_b, rank, hp.n_embd_head_v, H, rs(wv_b.type, rank),
                           rs(wv_b.type, rank) * hp.n_embd_head_v, 0)
        wv_b3.name = wv_b.name
        kqv = self.cb(ir.mul_mat(wv_b3, kqv_compressed), "kqv", il)
        kqv = self.cb(ir.cont(ir.permute(kqv, 0, 2, 1, 3)), "kqv_perm", il)
        return self.cb(ir.view_2d(kqv, hp.n_embd_head_v * H, T, rs(kqv.type, hp.n_embd_head_v * H), 0), "kqv_2d", il)

    def attn_tg(self, q_nope, q_rope, kv_cache, wk_b, wv_b, kv_l, il) -> ir.Tensor:
        """mla = 2 token generation (n_tokens <= n_head), upstream facts §3.1; attn_max_batch = 0."""
        hp = self.hp
        rank = hp.n_lora_kv
        rs = ir.row_size
        q = self.absorbed_q(q_nope, q_rope, wk_b, il)
        kv_cache_lora = ir.view_2d(kv_l, rank, self.n_kv, rs(kv_l.type, rank + hp.n_rot), self._offsets(kv_l.type)[0])
        self.cb(kv_cache, "kv_cache_lora", il)  # llama.cpp names kv_cache here, not kv_cache_lora
        kv_cache_trans = self.cb(ir.cont(ir.transpose(kv_cache_lora)), "kv_cache_trans", il)
        if not self.pp_opt:
            q = self.cb(ir.permute(q, 0, 2, 1, 3), "q_perm", il)
        kq = ir.mul_mat(kv_cache, q)
        if kv_cache.ne[1] < 256:
            kq.op_params["prec"] = "f32"
        self.cb(kq, "kq", il)
        if not self.pp_opt:
            kq = self.cb(ir.cont(ir.permute(kq, 0, 2, 1, 3)), "kq_perm", il)
        kq = self.cb(ir.soft_max_ext(kq, self.kq_mask, float(hp.kq_scale), hp.f_max_alibi_bias), "kq_soft_max_ext", il)
        if not self.pp_opt:
            kq = self.cb(ir.permute(kq, 0, 2, 1, 3), "kq_soft_max_ext_perm", il)
        kqv_compressed = self.cb(ir.mul_mat(kv_cache_trans, kq), "kqv_compressed", il)
        if not self.pp_opt:
            kqv_compressed = self.cb(ir.permute(kqv_compressed, 0, 2, 1, 3), "kqv_compressed_perm", il)
        return self.absorbed_out(kqv_compressed, wv_b, il)
