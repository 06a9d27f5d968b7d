"""The DeepSeek-V2 attention graphs after #253: mla = 3, -amb head groups and mainline llama.cpp's MLA.

A mixin of :class:`mlaref.reference.graphs.deepseek2.Builder` (which documents the variants, upstream facts §9)
plus the options' rules: which variant takes ``rope_first``, ``amb_mib``, ``pp_rule`` and the q8_KV cache, and
:func:`heads_per_group`, the snapshot's choice of ``-amb`` head groups. The methods issue the ggml calls of the
source named in each docstring, in its order, through the builder's helpers (``cb``, ``w``, ``norm``, ``rope``,
``_cat``, ``_offsets``, ``wkv_b``).
"""

from __future__ import annotations

from mlaref.reference.graphs import ir

__all__ = ["DEFAULT_AMB_MIB", "PP_RULES", "ROPE_FIRST_VARIANTS", "MLA3_VARIANTS", "After253", "heads_per_group"]

DEFAULT_AMB_MIB = 256  # attn_max_batch's default since ik_llama.cpp #2312 (37d82c231)
# pp_opt, the switch between the prompt path and the token path: rule name -> (source, predicate)
PP_RULES = {
    "n_head": "n_tokens > n_head (llama.cpp@676f0e71b, @24e780ba7)",
    "128": "n_tokens >= 128 (the ik-llama-cpp-python 0.1.5 snapshot, llama-build-context.cpp:7495)",
}
ROPE_FIRST_VARIANTS = ("direct", "chunked", "mla3", "mla3-amb")
MLA3_VARIANTS = ("mla3", "mla3-amb")


def heads_per_group(n_head: int, wkv_b_rows: int, n_kv: int, amb_mib: int) -> int:
    """Heads per ``-amb`` group on the FlashMLA prompt path (the ik-llama-cpp-python 0.1.5 snapshot,
    llama-build-context.cpp:7657-7667; upstream facts §9.3).

    ``kv_f32_size = wkv_b_rows · n_kv · 4 / 2^20`` in whole MiB (C++ integer division). With ``amb_mib > 0`` and
    ``kv_f32_size > amb_mib``: the smallest ``niter`` in ``2 .. n_head - 1`` with ``n_head % niter == 0`` and
    ``kv_f32_size / niter <= amb_mib`` (integer division) gives ``n_head / niter`` heads per group; if none
    does, one head per group. Otherwise every head in one group.
    """
    kv_f32_size = wkv_b_rows * n_kv * 4 // (1024 * 1024)
    if amb_mib <= 0 or kv_f32_size <= amb_mib:
        return n_head
    for niter in range(2, n_head):
        if n_head % niter == 0 and kv_f32_size // niter <= amb_mib:
            return n_head // niter
    return 1


def _check_options(hp, variant, cache_type, n_tokens, rope_first, amb_mib, pp_rule):
    if not isinstance(rope_first, bool):
        raise TypeError(f"rope_first must be a bool, got {rope_first!r}")
    if rope_first and variant not in ROPE_FIRST_VARIANTS:
        raise ValueError(f"rope_first applies to the flash variants {', '.join(ROPE_FIRST_VARIANTS)}; "
                         f"{variant!r} keeps the (NoPE, RoPE) cache row")
    if isinstance(amb_mib, bool) or not isinstance(amb_mib, int) or amb_mib < 0:
        raise ValueError(f"amb_mib must be an int >= 0 (MiB; 0 = off), got {amb_mib!r}")
    if amb_mib and variant not in MLA3_VARIANTS:
        raise ValueError(f"amb_mib applies to {' and '.join(MLA3_VARIANTS)} (the #260 prompt path), not {variant!r}")
    if variant == "mla3-amb" and not amb_mib:
        raise ValueError("mla3-amb needs amb_mib > 0 (use variant 'mla3' for no head groups)")
    if pp_rule not in PP_RULES:
        raise ValueError(f"pp_rule must be one of {', '.join(PP_RULES)}; got {pp_rule!r}")
    if cache_type == "q8_KV":
        if variant != "f32":
            raise ValueError(
                f"cache type q8_KV cannot be used by variant {variant!r}: its rows carry 8 bytes of metadata "
                "(scale and sum) in front, so the views this graph takes inside a row (the nope/rope split, V a view "
                "of K) and its row concatenations are not q8_KV rows (ik_llama.cpp's concat fast path refuses "
                "per-row metadata since #2232); only 'f32' (whole rows cast to f32) can read it")
        if not _pp_opt(hp, n_tokens, pp_rule):
            raise ValueError("cache type q8_KV: the token-generation path transposes the latent cache, "
                             "which has no element-wise meaning for q8_KV rows")


def _pp_opt(hp, n_tokens, pp_rule) -> bool:
    return n_tokens > hp.n_head if pp_rule == "n_head" else n_tokens >= 128


class After253:
    """The builder methods of the graphs after #253 (see the module docstring)."""

    def attn_pp_groups(self, q_nope, q_rope, kv_l, il) -> ir.Tensor:
        """The FlashMLA prompt path as #260 (9fe2b06f7) rebuilt it and mla = 3 (24e780ba7) and the snapshot run it
        (llama-build-context.cpp:7650-7751 of the ik-llama-cpp-python 0.1.5 snapshot; upstream facts §9.1, §9.3):
        ``k_rope`` repeated once for a group of heads, ``q_concat``, then per group of ``n_max_head`` heads a view
        of wkv_b's rows, ``kv_f32``, the k_nope / v casts, K and ``flash_attn_ext`` on q's heads of the group; the
        groups' results are joined by ``concat`` along dim 0 (head order kept), each expanded as it is made."""
        hp, gf, T = self.hp, self.gf, self.T
        H, nope, dv, rope_d = hp.n_head, hp.n_embd_head_qk_nope, hp.n_embd_head_v, hp.n_rot
        rs = ir.row_size
        off_nope, off_rope = self._offsets(kv_l.type)
        kv_cache_nope = ir.view_2d(kv_l, hp.n_lora_kv, self.n_kv, kv_l.nb[1], off_nope)
        wkv_b = self.wkv_b(il)
        g = heads_per_group(H, wkv_b.ne[1], self.n_kv, self.amb_mib)
        if H % g:
            raise AssertionError("n_head % n_max_head != 0")  # GGML_ASSERT in the source; heads_per_group divides
        self.head_groups = H // g
        n_per_head = wkv_b.ne[1] // H
        kv_cache_rope = ir.view_3d(kv_l, rope_d, self.n_kv, 1, kv_l.nb[1], kv_l.nb[2], off_rope)
        k_rope = self.cb(ir.repeat(kv_cache_rope, (rope_d, self.n_kv, g, 1)), "k_rope", il)
        q = ir.permute(self._cat(q_nope, q_rope), 0, 2, 1, 3)
        self.cb(q, "q_concat", il)
        gf.expand(q)
        cur = None
        for it in range(H // g):
            rows = n_per_head * g
            wkv_b_g = ir.view_2d(wkv_b, wkv_b.ne[0], rows, wkv_b.nb[1], wkv_b.nb[1] * rows * it)
            kv_f32 = self.cb(ir.mul_mat(wkv_b_g, kv_cache_nope), "kv_f32", il)
            nb1, nb2 = rs(kv_f32.type, g * (nope + dv)), rs(kv_f32.type, nope + dv)
            v_f32 = self.cb(ir.view_3d(kv_f32, dv, self.n_kv, g, nb1, nb2, rs(kv_f32.type, nope)), "v_f32", il)
            k_nope_f32 = self.cb(ir.view_3d(kv_f32, nope, self.n_kv, g, nb1, nb2, 0), "k_nope_f32", il)
            v = self.cb(ir.cast(v_f32, kv_l.type), "v", il)
            k_nope = self.cb(ir.cast(k_nope_f32, kv_l.type), "k_nope", il)
            gf.expand(k_nope)
            gf.expand(v)
            k = self.cb(self._cat(k_nope, k_rope), "k", il)
            gf.expand(k)
            q_it = ir.view_3d(q, q.ne[0], q.ne[1], g, q.nb[1], q.nb[2], q.nb[2] * g * it)
            kqv = ir.flash_attn_ext(q_it, k, v, self.kq_mask, float(hp.kq_scale), hp.f_max_alibi_bias, 0.0)
            if q.ne[1] <= 8:
                kqv.op_params["prec"] = "f32"
            self.cb(kqv, "kqv", il)
            part = ir.reshape_2d(kqv, dv * g, T)
            cur = part if cur is None else ir.concat(cur, part, 0)
            gf.expand(cur)
        return cur

    def attn_tg_flash(self, q_nope, q_rope, kv_cache, wk_b, wv_b, kv_l, il) -> ir.Tensor:
        """mla = 3's token path (24e780ba7; the snapshot's llama-build-context.cpp:7755-7790; upstream facts §9.1):
        the absorbed q ``[wk_b × q_nope, q_rope]`` against the whole cache row with flash attention, V a view of
        the cache's latent part (the 576 / 512 flash attention), then ``wv_b``. No ``-amb`` split here."""
        hp = self.hp
        rank = hp.n_lora_kv
        rs = ir.row_size
        q = self.absorbed_q(q_nope, q_rope, wk_b, il)
        kv_cache_lora = self.cb(ir.view_2d(kv_l, rank, self.n_kv, rs(kv_l.type, rank + hp.n_rot),
                                           self._offsets(kv_l.type)[0]), "kv_cache_lora", il)
        kqv_c = ir.flash_attn_ext(q, kv_cache, kv_cache_lora, self.kq_mask, float(hp.kq_scale), hp.f_max_alibi_bias,
                                  0.0)
        self.cb(kqv_c, "kqv_compressed", il)
        kqv_c = self.cb(ir.permute(kqv_c, 0, 2, 1, 3), "kqv_compressed_perm", il)
        return self.absorbed_out(kqv_c, wv_b, il)

    def attention_mainline(self, cur, il) -> ir.Tensor:
        """Mainline llama.cpp's MLA attention (llama-cpp-python 0.3.36: ``src/models/deepseek2.cpp``, the ``is_mla``
        branch, and ``llm_graph_context::build_attn`` / ``build_attn_mha`` in ``src/llama-graph.cpp``; upstream
        facts §9.4), in its call order and with its ``cb`` names. Constants (kq_scale, the rope's attn_factor) are
        this module's: mainline derives them in other steps (deepseek2.cpp's ``attn_factor_org``), not modelled."""
        hp, T, gf = self.hp, self.T, self.gf
        H, nope, rope_d, rank, dk = hp.n_head, hp.n_embd_head_qk_nope, hp.n_rot, hp.n_lora_kv, hp.n_embd_head_k
        rs = ir.row_size
        if hp.is_lite:
            q = self.cb(ir.mul_mat(self.w(f"blk.{il}.attn_q.weight", (hp.n_embd, H * dk)), cur), "q", il)
        else:
            q = self.cb(ir.mul_mat(self.w(f"blk.{il}.attn_q_a.weight", (hp.n_embd, hp.n_lora_q)), cur), "q", il)
            q = self.cb(self.norm(q, f"blk.{il}.attn_q_a_norm.weight", il), "q", il)
            q = self.cb(ir.mul_mat(self.w(f"blk.{il}.attn_q_b.weight", (hp.n_lora_q, H * dk)), q), "q", il)
        q = self.cb(ir.reshape_3d(q, dk, H, T), "q", il)
        kvc = self.cb(ir.mul_mat(self.w(f"blk.{il}.attn_kv_a_mqa.weight", (hp.n_embd, rank + rope_d)), cur),
                      "kv_cmpr_pe", il)
        row = rs(kvc.type, rank + rope_d)
        kv_cmpr = self.cb(ir.view_2d(kvc, rank, T, row, 0), "kv_cmpr", il)
        k_pe = self.cb(ir.view_3d(kvc, rope_d, 1, T, row, row, rs(kvc.type, rank)), "k_pe", il)
        k_pe = self.cb(self.rope(k_pe, self.inp_pos), "k_pe", il)
        kv_cmpr = self.cb(self.norm(kv_cmpr, f"blk.{il}.attn_kv_a_norm.weight", il), "kv_cmpr", il)
        q_nope = self.cb(ir.view_3d(q, nope, H, T, q.nb[1], q.nb[2], 0), "q_nope", il)
        q_pe = self.cb(ir.view_3d(q, rope_d, H, T, q.nb[1], q.nb[2], rs(q.type, nope)), "q_pe", il)
        q_pe = self.cb(self.rope(q_pe, self.inp_pos), "q_pe", il)
        q_nope = self.cb(ir.permute(q_nope, 0, 2, 1, 3), "q_nope_perm", il)
        wk_b = self.w(f"blk.{il}.attn_k_b.weight", (nope, rank, H))
        q_abs = self.cb(ir.mul_mat(wk_b, q_nope), "q_nope_absorbed", il)
        q_abs = self.cb(ir.permute(q_abs, 0, 2, 1, 3), "q_nope_absorbed_perm", il)
        q_cur = self.cb(ir.concat(q_abs, q_pe, 0), "Qcur", il)
        kv_cmpr = self.cb(ir.reshape_3d(kv_cmpr, rank, 1, T), "kv_cmpr_reshape", il)
        k_cur = self.cb(ir.concat(kv_cmpr, k_pe, 0), "Kcur", il)
        v_cur = self.cb(kv_cmpr, "Vcur", il)
        wv_b = self.w(f"blk.{il}.attn_v_b.weight", (rank, hp.n_embd_head_v, H))
        # build_attn: q, v, k expanded together, then the cache store (llama_kv_cache::cpy_k: ggml_set_rows)
        gf.expand(q_cur)
        gf.expand(v_cur)
        gf.expand(k_cur)
        kv_l = self.kv_l[il]
        k_rows = ir.view_2d(k_cur, k_cur.ne[0] * k_cur.ne[1], T, k_cur.nb[2], 0)
        gf.expand(ir.set_rows(kv_l, k_rows, self.k_idxs))
        # build_attn_mha (one stream): q viewed 4-d, q / k / v permuted (0, 2, 1, 3); V = K's first rank columns
        q4 = ir.view_4d(q_cur, q_cur.ne[0], q_cur.ne[1], T, 1, q_cur.nb[1], q_cur.nb[2], q_cur.nb[2] * T, 0)
        kr = kv_l.nb[1]
        k = ir.view_4d(kv_l, rank + rope_d, 1, self.n_kv, 1, kr, kr, kr * self.n_ctx, 0)  # llama_kv_cache::get_k
        v = ir.view_4d(k, v_cur.ne[0], k.ne[1], k.ne[2], k.ne[3], k.nb[1], k.nb[2], k.nb[3], 0)
        qp, kp, vp = (ir.permute(t, 0, 2, 1, 3) for t in (q4, k, v))
        att = ir.flash_attn_ext(qp, kp, vp, self.kq_mask, float(hp.kq_scale), hp.f_max_alibi_bias, 0.0)
        att.op_params["prec"] = "f32"  # ggml_prec_set_acc(cur, GGML_PREC_F32)
        att = ir.permute(att, 0, 2, 1, 3)
        att = self.cb(ir.mul_mat(wv_b, att), "fattn_mla", il)
        att = ir.cont(ir.permute(att, 0, 2, 1, 3))
        att = ir.reshape_2d(att, att.ne[0] * att.ne[1], att.ne[2] * att.ne[3])
        gf.expand(att)
        self.cb(att, "kqv_out_mha", il)  # mainline names this "kqv_out"; here that name is the wo product's
        return self.cb(ir.mul_mat(self.w(f"blk.{il}.attn_output.weight", (hp.n_embd_head_v * H, hp.n_embd)), att),
                       "kqv_out", il)
