"""DeepSeek-V2 graphs against upstream facts §3 (node order, names, ops, shapes, strides) and hyper-parameter rules."""

import pytest

from mlaref.reference.graphs import deepseek2
from mlaref.reference.hparams import HParams, pad_ctx, preset

LITE = preset("deepseek-v2-lite")
N = 4096  # n_kv in the worst case


def _layer_nodes(g, il, first, last):
    names = [t.name for t in g.graph.nodes]
    i0 = names.index(f"{first}-{il}")
    i1 = names.index(last, i0)
    return g.graph.nodes[i0:i1 + 1]


def _row(t):
    view = t.view_offs if t.view_src is not None else None
    return (t.op, t.type, list(t.ne[:3]), view)


@pytest.fixture(scope="module")
def direct():
    return deepseek2.build_graph(LITE, N, variant="direct")


@pytest.fixture(scope="module")
def old():
    return deepseek2.build_graph(LITE, N, variant="f32")


def test_common_part_layer1(direct):
    # Upstream facts §3.3 common part, rows 1-10 (layer 1; kv_head = n_ctx - 512).
    nodes = _layer_nodes(direct, 1, "attn_norm", "cache_kv_l1 (view) (copy of kvr-1)")
    got = [(t.name,) + _row(t) for t in nodes]
    row = 1152
    assert got == [
        ("attn_norm-1", "FUSED_RMS_NORM", "f32", [2048, 512, 1], None),
        ("kv_rope_compresseed-1", "MUL_MAT", "f32", [576, 512, 1], None),
        ("kv_compressed-1", "VIEW", "f32", [512, 512, 1], 0),
        ("kv_compressed-1", "FUSED_RMS_NORM", "f32", [512, 512, 1], None),
        ("k_rope-1", "VIEW", "f32", [64, 1, 512], 2048),
        ("k_rope-1", "ROPE", "f32", [64, 1, 512], None),
        ("k_rope-1 (permuted)", "PERMUTE", "f32", [64, 512, 1], 0),
        ("kvr-1", "CONCAT", "f32", [576, 512, 1], None),
        ("cache_kv_l1 (view)", "VIEW", "f16", [576, 512, 1], row * (N - 512)),
        ("cache_kv_l1 (view) (copy of kvr-1)", "CPY", "f16", [576, 512, 1], row * (N - 512)),
    ]
    assert nodes[2].nb[1] == 2304 and nodes[4].nb[1] == nodes[4].nb[2] == 2304


def test_direct_branch_layer1(direct):
    # Upstream facts §3.3 "new sub-branch" rows 11-19, then the query rows q1-q6, the f16 mask only in layer 0, FA.
    nodes = _layer_nodes(direct, 1, "kv_f32", "kqv-1")
    got = [(t.name,) + _row(t) for t in nodes]
    assert got == [
        ("kv_f32-1", "MUL_MAT", "f32", [4096, N, 1], None),
        ("k_nope_f32-1", "VIEW", "f32", [128, N, 16], 0),
        ("k_nope-1", "CPY", "f16", [128, N, 16], None),
        ("v_f32-1", "VIEW", "f32", [128, N, 16], 512),
        ("v-1", "CPY", "f16", [128, N, 16], None),
        ("cache_kv_l1 (view)", "VIEW", "f16", [64, N, 1], 1024),
        ("k_rope-1", "REPEAT", "f16", [64, N, 16], None),
        ("k-1", "CONCAT", "f16", [192, N, 16], None),
        ("q-1", "MUL_MAT", "f32", [3072, 512, 1], None),
        ("q_nope-1", "VIEW", "f32", [128, 16, 512], 0),
        ("q_rope-1", "VIEW", "f32", [64, 16, 512], 512),
        ("q_rope-1", "ROPE", "f32", [64, 16, 512], None),
        (nodes[12].name, "CONCAT", "f32", [192, 16, 512], None),  # unnamed: node_%d
        ("q_concat-1", "PERMUTE", "f32", [192, 512, 16], 0),
        ("kqv-1", "FLASH_ATTN_EXT", "f32", [128, 16, 512], None),
    ]
    g = direct.graph
    kv_nope = g.nodes[g.nodes.index(nodes[0]) - 1]
    assert kv_nope.op == "VIEW" and kv_nope.ne[:2] == (512, N) and kv_nope.nb[1] == 1152 and kv_nope.view_offs == 0
    assert nodes[1].nb[1:3] == (16384, 1024) and nodes[3].nb[1:3] == (16384, 1024)
    assert nodes[9].nb[1:3] == (768, 12288) and nodes[13].nb[1:3] == (12288, 768)
    fa = nodes[-1]
    assert [s.name for s in fa.src] == ["q_concat-1", "k-1", "v-1", "KQ_mask (copy)"]
    assert fa.op_params["scale"] == pytest.approx(0.11472137, abs=1e-8)
    assert [t.name for t in g.nodes].count("KQ_mask (copy)") == 1
    after = g.nodes[g.nodes.index(fa) + 1]
    assert after.op == "RESHAPE" and after.ne[:2] == (2048, 512)


def test_f32_branch_layer0(old):
    # Upstream facts §3.3 "old sub-branch" rows 11'-22': the query is visited before K/V, the f16 mask just before FA.
    nodes = _layer_nodes(old, 0, "q", "kqv-0")
    got = [(t.name,) + _row(t) for t in nodes]
    names = [r[0] for r in got]
    assert names[:2] == ["q-0", "q_nope-0"] and names[5] == "q_concat-0"
    assert got[6:] == [
        ("cache_kv_l0 (view)", "VIEW", "f16", [576, N, 1], 0),
        ("kv_cache_view_f32-0", "CPY", "f32", [576, N, 1], None),
        ("kv_cache_view_f32-0 (view)", "VIEW", "f32", [512, N, 1], 0),
        ("kv_f32-0", "MUL_MAT", "f32", [4096, N, 1], None),
        ("k_nope_f32-0", "VIEW", "f32", [128, N, 16], 0),
        ("kv_cache_view_f32-0 (view)", "VIEW", "f32", [64, 1, N], 2048),
        (nodes[12].name, "REPEAT", "f32", [64, 16, N], None),
        ("k_rope_f32-0", "PERMUTE", "f32", [64, N, 16], 0),
        ("k_f32-0", "CONCAT", "f32", [192, N, 16], None),
        ("k-0", "CPY", "f16", [192, N, 16], None),
        ("v_f32-0", "VIEW", "f32", [128, N, 16], 512),
        ("v-0", "CPY", "f16", [128, N, 16], None),
        ("KQ_mask (copy)", "CPY", "f16", [N, 512, 1], None),
        ("kqv-0", "FLASH_ATTN_EXT", "f32", [128, 16, 512], None),
    ]
    assert nodes[8].nb[1] == 2304 and nodes[11].nb[1:3] == (2304, 2304)
    assert nodes[13].nb[1:3] == (4096, 256)
    assert nodes[7].src[1] is nodes[7]  # ggml_cast's self source


def test_inputs_and_leaf_order(direct):
    leafs = [t for t in direct.graph.leafs if not t.external]
    assert [(t.name, t.type, t.ne[:2]) for t in leafs] == [
        ("inp_tokens", "i32", (512, 1)), ("inp_pos", "i32", (512, 1)), ("KQ_mask", "f32", (N, 512)),
        ("inp_out_ids", "i32", (512, 1))]
    assert all(t.is_input for t in leafs)


def test_rest_of_layer_and_output(direct):
    g = direct.graph
    byname = {}
    for t in g.nodes:
        byname.setdefault(t.name, t)
    assert byname["ffn_gate-0"].ne[:2] == (10944, 512) and byname["ffn_out-0"].ne[:2] == (2048, 512)
    assert byname["ffn_moe_logits-1"].ne[:2] == (64, 512)
    assert byname["ffn_moe_argsort-1"].type == "i32" and byname["ffn_moe_topk-1"].ne[:2] == (6, 512)
    assert byname["ffn_moe_up-1"].ne[:3] == (1408, 6, 512) and byname["ffn_moe_down-1"].ne[:3] == (2048, 6, 512)
    assert byname["ffn_moe_weights_scaled-1"].ne[:3] == (1, 6, 512)
    assert byname["ffn_moe_out-1"].op == "MULTI_ADD" and byname["ffn_moe_out-1"].op_params["n_experts"] == 6
    assert byname["ffn_gate-1"].ne[:2] == (2816, 512)
    assert [t.op for t in g.nodes[-2:]] == ["FUSED_RMS_NORM", "MUL_MAT"]
    assert g.nodes[-1].name == "result_output" and g.nodes[-1].ne[:2] == (102400, 512)
    assert g.nodes[-1].nbytes == 200 * (1 << 20)
    assert sum(t.op == "FLASH_ATTN_EXT" for t in g.nodes) == 27


def test_q8_0_cache_rope_view():
    # Upstream facts §3.3 row 17: the rope part of a q8_0 row starts at row_size(q8_0, 512) = 544 B; rows are 612 B.
    g = deepseek2.build_graph(LITE, 2048, variant="direct", cache_type="q8_0").graph
    rep = next(t for t in g.nodes if t.name == "k_rope-0" and t.op == "REPEAT")
    assert rep.type == "q8_0"
    assert rep.src[0].view_offs == 544 and rep.src[0].nb[1] == 612
    assert g.find("k-0").nb[1] == 6 * 34


def test_chunked_structure():
    mg = deepseek2.build_graph(LITE, 16384, variant="chunked", kv_chunk=4096)
    g = mg.graph
    assert mg.inputs["KQ_mask"].type == "f16" and not any(t.name == "KQ_mask (copy)" for t in g.nodes)
    parts = [t for t in g.nodes if t.op == "FLASH_ATTN_EXT_PARTIAL"]
    merges = [t for t in g.nodes if t.op == "FA_MERGE"]
    assert len(parts) == 27 * 4 and len(merges) == 27 * 3
    p = g.find("kqv_part_c2-1")
    assert p.ne[:3] == (130, 16, 512)
    assert [s.name for s in p.src[:3]] == ["q_concat-1", "k_c2-1", "v_c2-1"]
    mask = p.src[3]
    assert mask.view_src is mg.inputs["KQ_mask"] and mask.ne[:2] == (4096, 512) and mask.view_offs == 2 * 8192
    assert mask.nb[1] == 2 * 16384
    last = g.find("kqv-1")
    assert last.op == "FA_MERGE" and last.op_params["final"] and last.ne[:3] == (128, 16, 512)
    assert [s.name for s in last.src] == ["kqv_merge_c2-1", "kqv_part_c3-1"]
    kv = g.find("kv_f32_c1-1")
    assert kv.ne[:2] == (4096, 4096) and kv.src[1].view_offs == 4096 * 1152
    # chunk order in the graph: a chunk's partial is computed before the next chunk's decompression
    idx = {t.name: i for i, t in enumerate(g.nodes)}
    assert idx["kqv_part_c0-1"] < idx["kv_f32_c1-1"] < idx["kqv_merge_c1-1"] < idx["kv_f32_c2-1"]


def test_chunked_short_last_chunk_and_single_chunk():
    g = deepseek2.build_graph(LITE, 5120, variant="chunked", kv_chunk=4096).graph
    assert g.find("k_c1-0").ne[1] == 1024
    # one chunk: #253's direct graph (ggml's flash_attn_ext), only the mask is an f16 input
    g1 = deepseek2.build_graph(LITE, 4096, variant="chunked", kv_chunk=4096).graph
    g2 = deepseek2.build_graph(LITE, 4096, variant="direct").graph
    assert not any(t.op in ("FLASH_ATTN_EXT_PARTIAL", "FA_MERGE") for t in g1.nodes)
    def sig(t):  # auto names node_%d shift by one without the cast node
        return ("node_" if t.name.startswith("node_") else t.name, t.op, t.ne, t.nb)

    assert [sig(t) for t in g1.nodes] == [sig(t) for t in g2.nodes if t.name != "KQ_mask (copy)"]
    assert g1.find("kqv-0").src[3] is g1.find("KQ_mask")


def test_token_generation_path():
    # Upstream facts §3.1: T <= n_head uses the absorbed path (mla = 2): no flash attention, soft_max_ext on the f16
    # mask.
    mg = deepseek2.build_graph(LITE, 4096, n_tokens=1, n_kv=4096, kv_head=100)
    assert mg.path == "tg"
    g = mg.graph
    last = {t.name: t for t in g.nodes}  # the last node of each name (q-0: the concat, not the projection)
    shapes = {n: last[f"{n}-0"].ne[:3] for n in
              ("q_nope_perm", "q_nope2", "q", "kv_cache_trans", "q_perm", "kq", "kq_perm", "kq_soft_max_ext",
               "kqv_compressed", "kqv_compressed_perm", "kqv", "kqv_perm", "kqv_2d")}
    assert last["q-0"].op == "CONCAT"
    assert shapes == {
        "q_nope_perm": (128, 1, 16), "q_nope2": (512, 1, 16), "q": (576, 1, 16), "kv_cache_trans": (4096, 512, 1),
        "q_perm": (576, 16, 1), "kq": (4096, 16, 1), "kq_perm": (4096, 1, 16), "kq_soft_max_ext": (4096, 1, 16),
        "kqv_compressed": (512, 16, 1), "kqv_compressed_perm": (512, 1, 16), "kqv": (128, 1, 16),
        "kqv_perm": (128, 16, 1), "kqv_2d": (2048, 1, 1)}
    assert g.find("kq_soft_max_ext-0").src[1].name == "KQ_mask (copy)"
    assert g.find("KQ_mask").ne[:2] == (4096, 32)
    assert not any(t.op == "FLASH_ATTN_EXT" for t in g.nodes)
    assert g.find("cache_kv_l0 (view) (copy of kvr-0)").view_offs == 100 * 1152
    assert "prec" not in g.find("kq-0").op_params  # n_kv >= 256: default precision


def test_full_deepseek_v2_q_path():
    hp = preset("deepseek-v2")
    mg = deepseek2.build_graph(hp, 2048, variant="direct")
    q = [t for t in mg.graph.nodes if t.name == "q-0"]
    assert [t.op for t in q] == ["MUL_MAT", "FUSED_RMS_NORM", "MUL_MAT"]
    assert [t.ne[0] for t in q] == [1536, 1536, 128 * 192]
    assert "blk.0.attn_q_a.weight" in mg.weights and "blk.0.attn_q.weight" not in mg.weights
    assert mg.graph.find("kqv-0").ne[:3] == (128, 128, 512)
    assert mg.graph.find("ffn_moe_logits-1").ne[:2] == (160, 512)


def test_hparams_derived_values():
    # Upstream facts §1.1 / §1.3
    assert LITE.is_lite and LITE.n_embd_head_qk_nope == 128 and LITE.kv_row_elems == 576
    assert float(LITE.mscale) == pytest.approx(1.2608037, abs=2e-7)
    assert float(LITE.kq_scale) == pytest.approx(0.11472137, abs=2e-8)
    assert float(LITE.attn_factor_scaled) == pytest.approx(0.73052, abs=1e-5)
    assert pad_ctx(1000) == 1024 and pad_ctx(1000, flash_attn=False) == 1024 and pad_ctx(1030, False) == 1056


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_context_is_rejected_with_the_rule():
    with pytest.raises(ValueError, match=r"n_ctx \(1000\) must be a multiple of 256 with flash attention.*1024"):
        deepseek2.build_graph(LITE, 1000)
    with pytest.raises(ValueError, match="n_ctx must be a positive int"):
        deepseek2.build_graph(LITE, 0)
    with pytest.raises(ValueError, match="n_kv must be a multiple of 256"):
        deepseek2.build_graph(LITE, 4096, n_tokens=1, n_kv=300)
    with pytest.raises(ValueError, match="kv_head"):
        deepseek2.build_graph(LITE, 4096, n_tokens=512, kv_head=4000)


def test_bad_variant_cache_type_and_chunk():
    with pytest.raises(ValueError, match="variant must be one of f32, direct, chunked, mla3, mla3-amb, mainline; got 'fast'"):
        deepseek2.build_graph(LITE, 2048, variant="fast")
    with pytest.raises(ValueError, match="cache_type must be one of f16, q8_0, bf16"):
        deepseek2.build_graph(LITE, 2048, cache_type="q4_0")
    with pytest.raises(ValueError, match="kv_chunk must be a positive multiple of 256"):
        deepseek2.build_graph(LITE, 2048, variant="chunked", kv_chunk=1000)
    with pytest.raises(TypeError, match="hp must be an HParams"):
        deepseek2.build_graph({"n_layer": 27}, 2048)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match=r"n_head \(16\) must be a multiple of n_head_kv \(5\)"):
        LITE.replace(n_head_kv=5)
    with pytest.raises(ValueError, match=r"n_lora_q must be an int >= 0"):
        LITE.replace(n_lora_q=-1)
    # Fewer layers keep the Lite structure (is_lite keys on n_lora_q), though llama.cpp's loader would not.
    short = LITE.replace(n_layer=2)
    assert short.is_lite and not short.loader_is_lite and LITE.loader_is_lite
    with pytest.raises(ValueError, match="n_expert_used .* must not exceed n_expert"):
        LITE.replace(n_expert_used=65)
    with pytest.raises(ValueError, match="n_rot .* must be smaller than n_embd_head_k"):
        LITE.replace(n_rot=192)
    with pytest.raises(ValueError, match="HParams.n_embd must be a positive int"):
        LITE.replace(n_embd=0)
    with pytest.raises(ValueError, match="unknown model 'deepseek-v3'"):
        preset("deepseek-v3")
    assert isinstance(LITE.replace(n_ctx_train=4096), HParams)


def test_the_attention_block_is_the_layers_attention_alone():
    """build_attention_block: the nodes of layer 0's attention in build_graph's order, from the input attn_norm-0
    to kqv_out-0, with the cache store before the reads of the cache and #253's ops of the branch."""
    from mlaref.reference.graphs.deepseek2 import build_attention_block, build_graph
    from mlaref.reference.hparams import preset

    hp = preset("lite-attn").replace(n_layer=1, n_layer_dense_lead=1)
    blk = build_attention_block(hp, 256, variant="direct", cache_type="q8_0", n_tokens=32)
    full = build_graph(hp, 256, variant="direct", cache_type="q8_0", n_tokens=32)
    names = [n.name for n in blk.graph.nodes]
    assert names[-1] == "kqv_out-0" and blk.output.name == "kqv_out-0"
    full_names = [n.name for n in full.graph.nodes]
    lo, hi = full_names.index(names[0]), full_names.index("kqv_out-0")

    def sig(nodes):  # op, type, shape and name (auto names "node_%d" count graph-wide: left out)
        return [(n.op, n.type, n.ne, "" if n.name.startswith("node_") else n.name) for n in nodes]

    assert sig(full.graph.nodes[lo:hi + 1]) == sig(blk.graph.nodes)  # the same nodes, in the same order
    assert set(blk.inputs) == {"attn_norm-0", "inp_pos", "KQ_mask"} and len(blk.kv_cache) == 1
    ops = [n.op for n in blk.graph.nodes]
    store = next(i for i, n in enumerate(blk.graph.nodes) if n.op == "CPY" and "kvr-0" in n.name)
    first_read = next(i for i, n in enumerate(blk.graph.nodes) if n.name == "kv_f32-0")
    assert store < first_read
    assert {"CONCAT", "REPEAT", "FLASH_ATTN_EXT", "FUSED_RMS_NORM"} <= set(ops)
    kv = next(n for n in blk.graph.nodes if n.name == "kv_f32-0")
    assert kv.src[1].type == "q8_0"  # the direct branch: mul_mat over the q8_0 cache view
    with pytest.raises(ValueError, match="n_tokens must exceed n_head"):
        build_attention_block(hp, 256, n_tokens=8)
