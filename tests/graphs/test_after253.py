"""The graphs after #253 (upstream facts §9): mla = 3, -amb head groups, the RoPE-first cache, q8_KV and mainline's MLA.

Executed on the NumPy reference at small shapes (the synthetic model, reference/graphs/synthetic.py):

* ``-amb`` head groups give **the same bytes** as one group: each head's flash attention reads only its own q rows,
  K and V heads, and the groups' K/V are row blocks of the same ``wkv_b × cache`` products (a mul_mat row depends
  only on its weight row and the cache column); ``concat`` copies f32 bytes.
* mla = 3's prompt path (#260's node order) gives **the same bytes** as #253's ``direct`` graph: the same ops on the
  same operands, in another order.
* The RoPE-first row gives **the same bytes** as the RoPE-last row where the dot products do not depend on the order
  of their terms: with an f16 cache, ggml's generic flash attention (plan ``ggml_generic``) adds exact f16·f16
  products into a double, and that sum is exact for these values, so moving the 64 rope terms in front changes
  nothing. Where a plan sums in float32 lanes or per block (a q8_0 cache: ``sumf += d·sumi`` per block in order),
  the order of the terms is visible in the last bits: there the two layouts are checked against float64
  attention of the same q, K and V (NMSE bounds below), and the q, K, V they attend with are the same values.
* mainline's graph and ik's graph of one layer agree within an NMSE bound (they round differently: mainline
  multiplies q_nope by ``wk_b`` in f32 and attends over the 576-wide latent in f16 K/V, ``wv_b`` after; ik
  decompresses the cache with ``wkv_b`` and rounds K_nope and V to f16 per head).
"""

import json

import numpy as np
import pytest

from mlaref.reference.graphs import alloc, deepseek2
from mlaref.reference.graphs.deepseek2 import build_attention_block, build_graph, heads_per_group
from mlaref.reference.graphs.executor import run_graph
from mlaref.reference.graphs.synthetic import SyntheticModel, tiny_hparams
from mlaref.reference.hparams import preset

T = 32
LAYER = SyntheticModel(tiny_hparams(1), seed=7)
HEADS4 = SyntheticModel(tiny_hparams(1, n_head=4, n_head_kv=4), seed=5)


def _rows(model, g, rope_first):
    """The cache rows of earlier micro-batches in the graph's row order."""
    rows = model.cache_rows(0, g.kv_head)
    if rope_first:
        rank = model.hp.n_lora_kv
        rows = np.concatenate([rows[:, rank:], rows[:, :rank]], axis=1)
    return [rows]


def _run(model, variant, *, n_ctx=512, n_tokens=T, cache_type="f16", weight_type="q8_0", keep=("kqv_out-0",),
         options=None, block=True, **kw):
    if block:
        g = build_attention_block(model.hp, n_ctx, variant=variant, cache_type=cache_type, n_tokens=n_tokens,
                                  weight_type=weight_type, tg=n_tokens <= model.hp.n_head and variant != "mainline",
                                  **kw)
    else:
        g = model.build(n_ctx, variant=variant, cache_type=cache_type, n_tokens=n_tokens, weight_type=weight_type,
                        **kw)
    inputs = model.inputs(g) if not block else _block_inputs(model, g)
    if "k_idxs" in g.inputs:
        inputs["k_idxs"] = (g.kv_head + np.arange(g.n_tokens)).astype(np.int64)
    kv = model.kv_cache(g, rows=_rows(model, g, g.rope_first))
    keep = [k for k in keep if k != g.output.name]
    out = run_graph(g, weights=model.weights(g), kv_cache=kv, inputs=inputs, keep=keep, options=options)
    return g, out


def _block_inputs(model, g):
    inp = model.inputs(g)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((g.n_tokens, model.hp.n_embd)).astype(np.float32)
    return {"attn_norm-0": x, "inp_pos": inp["inp_pos"], "KQ_mask": inp["KQ_mask"]}


def _same(a, b) -> bool:
    return a.type == b.type and a.ne == b.ne and np.array_equal(a.raw(), b.raw())


def _nmse(ref, x) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.sum((ref - np.asarray(x, np.float64)) ** 2) / np.sum(ref ** 2))


# -- -amb ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_head,rows,n_kv,amb,expected", [
    (16, 4096, 131072, 256, 2),    # DeepSeek-V2-Lite at 128k: 2048 MiB -> niter 8 (256 <= 256): 8 groups of 2
    (16, 4096, 32768, 256, 8),     # 512 MiB -> niter 2: 2 groups of 8
    (16, 4096, 16384, 256, 16),    # 256 MiB is not > 256: no split
    (128, 32768, 131072, 256, 2),  # DeepSeek-V2: 16384 MiB -> niter 64 (256): 64 groups of 2
    (16, 4096, 131072, 0, 16),     # amb 0 = off
    (4, 256, 4096, 1, 1),          # 4 MiB: niter 2 gives 2 > 1, niter 3 does not divide: the fallback, 1 head
    (4, 256, 2048, 1, 2),          # 2 MiB: niter 2 gives 1 <= 1
    (6, 1024, 4096, 2, 1),         # 16 MiB: niter 2 -> 8, niter 3 -> 5, 4 and 5 do not divide 6: fallback 1
])
def test_heads_per_group_rule(n_head, rows, n_kv, amb, expected):
    assert heads_per_group(n_head, rows, n_kv, amb) == expected


def test_amb_groups_give_the_same_bytes():
    """n_head 4, 2048 cells: kv_f32 is 256 rows × 2048 × 4 B = 2 MiB > amb 1 MiB, so 2 groups of 2 heads."""
    keep = ["kqv_out-0", "q_concat-0"]
    g1, one = _run(HEADS4, "mla3", n_ctx=2048, keep=keep)
    g2, two = _run(HEADS4, "mla3-amb", n_ctx=2048, amb_mib=1, keep=keep)
    assert (g1.head_groups, g2.head_groups) == (1, 2)
    ops2 = [n.op for n in g2.graph.nodes]
    assert ops2.count("FLASH_ATTN_EXT") == 2 and ops2.count("MUL_MAT") == [n.op for n in g1.graph.nodes].count(
        "MUL_MAT") + 1
    fa = [n for n in g2.graph.nodes if n.op == "FLASH_ATTN_EXT"]
    assert [f.src[0].ne[2] for f in fa] == [2, 2] and fa[1].src[0].view_offs == fa[0].src[0].nb[2] * 2
    joined = next(n for n in g2.graph.nodes if n.op == "CONCAT" and n.src[1].op == "RESHAPE")
    assert joined.ne[:2] == (4 * HEADS4.hp.n_embd_head_v, T)
    assert _same(one["kqv_out-0"], two["kqv_out-0"])


def test_amb_is_refused_where_the_variant_has_no_head_groups():
    hp = tiny_hparams(1)
    with pytest.raises(ValueError, match="amb_mib applies to mla3 and mla3-amb"):
        build_graph(hp, 512, variant="direct", amb_mib=64)
    with pytest.raises(ValueError, match="mla3-amb needs amb_mib > 0"):
        build_graph(hp, 512, variant="mla3-amb", amb_mib=0)
    with pytest.raises(ValueError, match="amb_mib must be an int >= 0"):
        build_graph(hp, 512, variant="mla3", amb_mib=-1)
    assert build_graph(hp, 512, variant="mla3-amb").amb_mib == 256


# -- mla = 3 ---------------------------------------------------------------------------------------------------------
def test_mla3_prompt_path_equals_direct():
    keep = ["kqv_out-0", "k-0", "v-0", "kqv-0"]
    gd, direct = _run(LAYER, "direct", keep=keep)
    g3, mla3 = _run(LAYER, "mla3", keep=keep)
    assert g3.path == "flash_mla2"
    nd, n3 = [n.name for n in gd.graph.nodes], [n.name for n in g3.graph.nodes]
    assert sorted(nd) != sorted(n3) or nd != n3  # another graph ...
    assert n3.index("k_rope-0") < n3.index("q_concat-0") < n3.index("kv_f32-0")  # #260's order
    assert nd.index("kv_f32-0") < nd.index("q_concat-0")  # #253's order
    for name in keep:  # ... the same bytes
        assert _same(direct[name], mla3[name]), name


def test_mla3_switch_and_token_path():
    hp = tiny_hparams(1)  # n_head 2
    g = build_graph(hp, 512, variant="mla3", n_tokens=2, weight_type="q8_0")
    assert g.path == "tg"
    fa = next(n for n in g.graph.nodes if n.op == "FLASH_ATTN_EXT")
    q, k, v = fa.src[:3]
    assert q.ne[:3] == (hp.n_lora_kv + hp.n_rot, 2, hp.n_head) and k.ne[:2] == (hp.kv_row_elems, 512)
    assert v.ne[0] == hp.n_lora_kv and v.view_src is k.view_src and v.nb[1] == k.nb[1]  # V a view of K
    assert "SOFT_MAX" not in {n.op for n in g.graph.nodes}
    # the switch: n_tokens > n_head (24e780ba7) or n_tokens >= 128 (the 2026 snapshot)
    assert build_graph(hp, 512, variant="mla3", n_tokens=3).path == "flash_mla2"
    assert build_graph(hp, 512, variant="mla3", n_tokens=127, pp_rule="128").path == "tg"
    assert build_graph(hp, 512, variant="mla3", n_tokens=128, pp_rule="128").path == "flash_mla2"
    with pytest.raises(ValueError, match="pp_rule must be one of n_head, 128"):
        build_graph(hp, 512, variant="mla3", pp_rule="64")


def test_mla3_token_path_agrees_with_its_prompt_path():
    """The last two tokens of a 32-token prompt, re-run through mla = 3's token path on the cache the prompt left
    (f16 weights and cache). Not bit-exact: the token path rounds q·wk_b to f16 for the 576-wide dot products and
    sums the latent in f16 before wv_b; NMSE bound 1e-4 (measured about 1e-6 here)."""
    g = LAYER.build(512, variant="mla3", cache_type="f16", n_tokens=T, weight_type="f16")
    cache, inp = LAYER.kv_cache(g), LAYER.inputs(g)
    pp = run_graph(g, weights=LAYER.weights(g), kv_cache=cache, inputs=inp, keep=["kqv-0"])
    gt = LAYER.build(512, variant="mla3", cache_type="f16", n_tokens=2, kv_head=510, weight_type="f16")
    assert gt.path == "tg"
    tg_inp = LAYER.inputs(gt)
    tg_inp["inp_tokens"] = inp["inp_tokens"][T - 2:]
    tg = run_graph(gt, weights=LAYER.weights(gt), kv_cache=cache, inputs=tg_inp, keep=["kqv_2d-0"])
    x = pp["kqv-0"].to_numpy().reshape(T, -1)[T - 2:]
    assert _nmse(x, tg["kqv_2d-0"].to_numpy().reshape(2, -1)) < 1e-4


# -- the RoPE-first cache row (#408) --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,n_tokens", [("direct", T), ("mla3", T), ("mla3", 2), ("chunked", T)])
def test_rope_first_equals_rope_last_f16(variant, n_tokens):
    kw = {"kv_chunk": 256} if variant == "chunked" else {}
    block = variant != "chunked"
    gl, last = _run(LAYER, variant, n_tokens=n_tokens, block=block, keep=["kqv_out-0", "kvr-0"], **kw)
    gf, first = _run(LAYER, variant, n_tokens=n_tokens, block=block, keep=["kqv_out-0", "kvr-0"], rope_first=True,
                     **kw)
    assert gf.rope_first and not gl.rope_first
    rank = LAYER.hp.n_lora_kv
    kl, kf = last["kvr-0"].to_numpy().reshape(n_tokens, -1), first["kvr-0"].to_numpy().reshape(n_tokens, -1)
    assert np.array_equal(kf, np.concatenate([kl[:, rank:], kl[:, :rank]], axis=1))  # the row reordered
    assert _same(last["kqv_out-0"], first["kqv_out-0"])


def _attention_f64(q, k, v, mask, scale):
    """softmax(scale·q·kᵀ + mask)·v in float64; q (H, T, D), k (H, n, D), v (H, n, Dv), mask (T, n)."""
    s = scale * np.einsum("htd,hnd->htn", q, k) + mask[None]
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return np.einsum("htn,hnd->thd", p / p.sum(axis=-1, keepdims=True), v)


def test_rope_first_q8_0_cache_against_float64():
    """A q8_0 cache: the blocks of a K row are summed in order (``sumf += d·sumi``), so moving the rope block in
    front changes the last bits. Both layouts attend with the same q, K and V values (checked exactly); each
    kqv is within NMSE 2e-4 of float64 attention of those values (ggml's bound for flash_attn_ext is 5e-4; most of
    it is Q quantized to q8_0, K's vec_dot type), and the two within 1e-10 of each other."""
    hp = LAYER.hp
    keep = ["kqv-0", "k-0", "v-0", "q_concat-0", "kqv_out-0"]
    res = {}
    for rf in (False, True):
        g, out = _run(LAYER, "direct", cache_type="q8_0", keep=keep, rope_first=rf)
        q = out["q_concat-0"].to_numpy()[0].astype(np.float64)     # (H, T, D)
        k = out["k-0"].to_numpy()[0].astype(np.float64)             # (H, n_kv, D)
        v = out["v-0"].to_numpy()[0].astype(np.float64)
        if rf:  # back to (nope, rope) order to compare the operands
            q, k = (np.concatenate([a[..., hp.n_rot:], a[..., :hp.n_rot]], axis=-1) for a in (q, k))
        mask = _block_inputs(LAYER, g)["KQ_mask"][:T].astype(np.float64)
        ref = _attention_f64(q, k, v, mask, float(hp.kq_scale))
        res[rf] = (q, k, v, out["kqv-0"].to_numpy()[0], ref)
    (q0, k0, v0, o0, r0), (q1, k1, v1, o1, r1) = res[False], res[True]
    assert np.array_equal(q0, q1) and np.array_equal(k0, k1) and np.array_equal(v0, v1)
    assert _nmse(r0, o0) < 2e-4 and _nmse(r1, o1) < 2e-4  # measured 4.7e-5: Q is quantized to q8_0 for the dot
    assert _nmse(o0, o1) < 1e-10  # the two orders of the same terms


def test_rope_first_is_refused_where_the_row_is_fixed():
    hp = tiny_hparams(1)
    for variant in ("f32", "mainline"):
        with pytest.raises(ValueError, match="rope_first applies to the flash variants"):
            build_graph(hp, 512, variant=variant, rope_first=True)


# -- mainline llama.cpp ------------------------------------------------------------------------------------------------
def test_mainline_graph_structure():
    hp = tiny_hparams(1)
    g = build_attention_block(hp, 512, variant="mainline", n_tokens=T)
    assert g.path == "mqa" and set(g.inputs) == {"attn_norm-0", "inp_pos", "KQ_mask", "k_idxs"}
    assert g.inputs["k_idxs"].type == "i64" and g.inputs["KQ_mask"].type == "f16"
    assert {"blk.0.attn_k_b.weight", "blk.0.attn_v_b.weight"} <= set(g.weights)
    assert "blk.0.attn_kv_b.weight" not in g.weights
    assert g.weights["blk.0.attn_k_b.weight"].ne[:3] == (hp.n_embd_head_qk_nope, hp.n_lora_kv, hp.n_head)
    store = next(n for n in g.graph.nodes if n.op == "SET_ROWS")
    fa = next(n for n in g.graph.nodes if n.op == "FLASH_ATTN_EXT")
    nodes = g.graph.nodes
    assert nodes.index(store) < nodes.index(fa)
    q, k, v = fa.src[:3]
    assert q.ne[:3] == (hp.kv_row_elems, T, hp.n_head) and k.ne[:3] == (hp.kv_row_elems, 512, 1)
    assert v.ne[:3] == (hp.n_lora_kv, 512, 1) and v.view_src is k.view_src and v.view_offs == 0
    assert {n.op for n in nodes}.isdisjoint({"REPEAT", "CPY"})  # no decompression of the cache, no casts


def test_mainline_and_ik_agree_on_one_layer():
    """One layer's attention output (kqv_out, after wo), f16 weights and cache, from the same cache and input:
    mainline's absorbed MQA against ik's direct (#253) and mla = 3 graphs. They round differently (module
    docstring); NMSE bound 1e-4 (measured about 1.5e-5)."""
    _, ik = _run(LAYER, "direct", weight_type="f16")
    _, ml = _run(LAYER, "mainline", weight_type="f16")
    assert _nmse(ik["kqv_out-0"].to_numpy(), ml["kqv_out-0"].to_numpy()) < 1e-4
    _, ik3 = _run(LAYER, "mla3", weight_type="f16", n_tokens=2)
    _, ml2 = _run(LAYER, "mainline", weight_type="f16", n_tokens=2)
    assert _nmse(ik3["kqv_out-0"].to_numpy(), ml2["kqv_out-0"].to_numpy()) < 1e-4


def test_mainline_writes_the_same_cache_rows():
    g, _ = _run(LAYER, "mainline", weight_type="f16", block=False, keep=["l_out-0"])
    gi = LAYER.build(512, variant="direct", cache_type="f16", n_tokens=T, weight_type="f16")
    kv_m = LAYER.kv_cache(g)
    kv_i = LAYER.kv_cache(gi)
    inp = LAYER.inputs(g)
    inp["k_idxs"] = (g.kv_head + np.arange(T)).astype(np.int64)
    out_m = run_graph(g, weights=LAYER.weights(g), kv_cache=kv_m, inputs=inp)
    out_i = run_graph(gi, weights=LAYER.weights(gi), kv_cache=kv_i, inputs=LAYER.inputs(gi))
    assert np.array_equal(kv_m[0].raw(), kv_i[0].raw())
    assert _nmse(out_i["result_output"].to_numpy(), out_m["result_output"].to_numpy()) < 1e-4


# -- cache types ----------------------------------------------------------------------------------------------------
def test_q8_KV_only_where_whole_rows_are_read():
    hp = tiny_hparams(1)
    for variant in ("direct", "chunked", "mla3", "mla3-amb", "mainline"):
        with pytest.raises(ValueError, match=f"q8_KV cannot be used by variant '{variant}'.*metadata"):
            build_graph(hp, 512, variant=variant, cache_type="q8_KV")
    with pytest.raises(ValueError, match="token-generation path transposes"):
        build_graph(hp, 512, variant="f32", cache_type="q8_KV", n_tokens=2)
    assert alloc.kv_cache_bytes(preset("deepseek-v2-lite"), 2048, "q8_KV") == 27 * 2048 * 584  # 8 + 576 B a row
    try:
        g = build_graph(hp, 512, variant="f32", cache_type="q8_KV", n_tokens=T)
    except ValueError as exc:  # the graph geometry does not size rows with metadata (reference/graphs/geometry.py)
        assert "cache type q8_KV" in str(exc) and "metadata" in str(exc)
    else:
        assert g.kv_cache[0].nb[1] == 8 + hp.kv_row_elems  # 8 bytes of row metadata, then one int8 per value


# -- the allocator model and the plan ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", deepseek2.VARIANTS)
def test_allocator_runs_on_every_variant(variant):
    """The worst-case reserve of DeepSeek-V2-Lite at 2048 tokens is the logits for every variant (the same
    204.00 MiB), and at 131072 the variants order as their designs say."""
    hp = preset("deepseek-v2-lite")
    assert alloc.compute_buffer(hp, 2048, variant=variant).buffer_mib == "204.00"
    g = build_graph(hp, 8192, variant=variant, cache_type="q8_0")
    r = alloc.allocate_graph(g.graph)
    assert r.max_size >= 204 * 2**20 and r.peak_live()


def test_plan_rows_order_the_designs():
    hp = preset("deepseek-v2-lite")
    rows = alloc.plan_rows(hp, [131072], deepseek2.VARIANTS)
    b = rows[0]["buffer_bytes"]
    assert b["mla3"] == b["direct"]  # one group: the same tensors alive at the peak
    assert b["mainline"] < b["chunked"] < b["mla3-amb"] < b["direct"] < b["f32"]
    # 8 groups of 2 heads: kv_f32 of one group is 512 rows × 131072 × 4 B = 256 MiB
    g = build_graph(hp, 131072, variant="mla3-amb")
    assert g.head_groups == 8 and g.graph.find("kv_f32-1").ne[:2] == (512, 131072)
    small = alloc.plan_rows(hp, [131072], ["mla3-amb"], amb_mib=1024, n_ubatch=256)[0]["buffer_bytes"]["mla3-amb"]
    assert small != b["mla3-amb"]


def test_plan_cli_new_columns(tmp_path, capsys):
    from mlaref.codegen.cli import main

    out = tmp_path / "plan.json"
    rc = main(["plan", "--ctx", "2048", "32768", "--amb", "128", "--ubatch", "256", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ubatch 256, amb 128 MiB (mla3-amb)" in text and "(seed" not in text
    for v in deepseek2.VARIANTS:
        assert f"{v} MiB" in text
    data = json.loads(out.read_text())
    assert (data["ubatch"], data["amb_mib"]) == (256, 128)
    row = {r["n_ctx"]: r for r in data["rows"]}[32768]
    assert set(row["buffer_bytes"]) == set(deepseek2.VARIANTS)
    assert row["buffer_bytes"]["mla3-amb"] == alloc.compute_buffer(
        preset("deepseek-v2-lite"), 32768, variant="mla3-amb", amb_mib=128, n_ubatch=256).buffer_size
    assert main(["plan", "--ctx", "2048", "--cache-type", "q8_KV", "--variant", "direct"]) == 2
    assert "q8_KV cannot be used by variant 'direct'" in capsys.readouterr().err
