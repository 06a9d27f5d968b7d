"""The graph IR against ggml's rules: strides, ggml_nbytes, views, permute, cast, DFS order, errors."""

import pytest

from mlaref.reference.graphs import ir


def test_new_tensor_strides_and_nbytes():
    t = ir.new_tensor("f32", (576, 512))
    assert t.ne == (576, 512, 1, 1) and t.nb == (4, 2304, 1179648, 1179648)
    assert t.nbytes == 576 * 512 * 4
    q = ir.new_tensor("q8_0", (576, 100))
    assert q.nb == (34, 612, 61200, 61200)  # 18 blocks x 34 B per row
    assert q.nbytes == 61200
    assert ir.new_tensor("f16", (0, 4)).nbytes == 0


def test_nbytes_of_strided_views_is_their_span():
    # ggml_nbytes: type_size + sum (ne-1) nb for block size 1; nb1 + sum_{i>=1} (ne-1) nb for block formats.
    base = ir.new_tensor("f32", (4096, 100))
    v = ir.view_3d(base, 128, 100, 16, 16384, 1024, 512)
    assert v.nbytes == 4 + 127 * 4 + 99 * 16384 + 15 * 1024
    kv = ir.weight("kv", "q8_0", (576, 64))
    rope = ir.view_3d(kv, 64, 64, 1, 612, 612 * 64, 544)
    assert rope.nbytes == 612 + 63 * 612  # starts from nb1, overstating the 68-B rows (ggml's rule)


def test_view_chains_collapse_to_the_base():
    base = ir.new_tensor("f32", (64, 64)).set_name("base")
    v1 = ir.view_2d(base, 32, 64, base.nb[1], 128)
    v2 = ir.view_1d(v1, 8, 16)
    assert v2.view_src is base and v2.view_offs == 144
    assert v2.src[0] is v1  # the DFS still walks through v1
    assert v1.name == "base (view)" and v2.name == "base (view) (view)"
    with pytest.raises(ValueError, match="exceed"):
        ir.view_1d(base, 64 * 64, 4)


def test_permute_and_transpose_strides():
    a = ir.new_tensor("f32", (192, 16, 512))
    p = ir.permute(a, 0, 2, 1, 3)
    assert p.ne == (192, 512, 16, 1) and p.nb == (4, 12288, 768, 6291456)
    assert p.op == "PERMUTE" and p.view_src is a
    t = ir.transpose(ir.new_tensor("f16", (512, 256)))
    assert t.ne == (256, 512, 1, 1) and t.nb == (1024, 2, 262144, 262144)
    assert t.is_transposed()
    with pytest.raises(ValueError, match="permutation"):
        ir.permute(a, 0, 0, 1, 3)


def test_cpy_is_a_view_of_the_destination_and_cast_points_at_itself():
    cache = ir.weight("cache_kv_l0", "f16", (576, 1024))
    dst = ir.view_2d(cache, 576, 512, 1152, 1152 * 512)
    src = ir.new_tensor("f32", (576, 512)).set_name("kvr-0")
    c = ir.cpy(src, dst)
    assert c.op == "CPY" and c.view_src is cache and c.view_offs == 1152 * 512 and c.external
    assert c.name == "cache_kv_l0 (view) (copy of kvr-0)"
    k = ir.cast(src, "f16")
    assert k.src == [src, k] and k.view_src is None and k.nb == (2, 1152, 589824, 589824)


def test_contiguity_rules():
    a = ir.new_tensor("f32", (128, 16, 512))
    assert a.is_contiguous()
    v = ir.view_3d(ir.new_tensor("f32", (4096, 8)), 128, 8, 16, 16384, 1024, 0)
    assert not v.is_contiguous()
    with pytest.raises(ValueError, match="must be contiguous"):
        ir.reshape_2d(v, 128 * 16, 8)
    r = ir.reshape_2d(a, 2048, 512)
    assert r.op == "RESHAPE" and r.view_src is a and r.nb == (4, 8192, 4194304, 4194304)


def test_constructor_shapes():
    w = ir.weight("wkv_b", "q8_0", (512, 4096))
    c = ir.weight("cache", "f16", (576, 2048))
    nope = ir.view_2d(c, 512, 2048, 1152, 0)
    mm = ir.mul_mat(w, nope)
    assert mm.type == "f32" and mm.ne == (4096, 2048, 1, 1)
    rep = ir.repeat(ir.view_3d(c, 64, 2048, 1, 1152, 1152 * 2048, 1024), (64, 2048, 16))
    assert rep.type == "f16" and rep.ne == (64, 2048, 16, 1)
    kn = ir.new_tensor("f16", (128, 2048, 16))
    k = ir.concat(kn, rep, 0)
    assert k.ne == (192, 2048, 16, 1) and k.op_params["dim"] == 0
    probs = ir.new_tensor("f32", (64, 512))
    topk = ir.top_k(probs, 6)
    assert topk.op == "VIEW" and topk.type == "i32" and topk.ne == (6, 512, 1, 1) and topk.nb[1] == 256
    assert topk.src[0].op == "ARGSORT"
    e = ir.weight("up_exps", "q8_0", (2048, 1408, 64))
    x = ir.new_tensor("f32", (2048, 1, 512))
    assert ir.mul_mat_id(e, x, topk).ne == (1408, 6, 512, 1)
    gr = ir.get_rows(ir.reshape_3d(probs, 1, 64, 512), topk)
    assert gr.ne == (1, 6, 512, 1)
    q = ir.permute(ir.new_tensor("f32", (192, 16, 512)), 0, 2, 1, 3)
    v = ir.new_tensor("f16", (128, 2048, 16))
    mask = ir.new_tensor("f16", (2048, 512))
    fa = ir.flash_attn_ext(q, k, v, mask, 0.1)
    assert fa.ne == (128, 16, 512, 1) and fa.type == "f32"
    part = ir.flash_attn_ext_partial(q, k, v, mask, 0.1)
    assert part.ne == (130, 16, 512, 1)
    assert ir.fa_merge(part, part, False).ne == (130, 16, 512, 1)
    assert ir.fa_merge(part, None, True).ne == (128, 16, 512, 1)


def test_constructor_errors_name_the_rule():
    a = ir.new_tensor("f32", (64, 8))
    with pytest.raises(ValueError, match="mul_mat: cannot multiply"):
        ir.mul_mat(a, ir.new_tensor("f32", (32, 8)))
    with pytest.raises(ValueError, match=r"concat: ne\[1\] differs"):
        ir.concat(a, ir.new_tensor("f32", (64, 9)), 0)
    with pytest.raises(ValueError, match="not a whole repetition"):
        ir.repeat(a, (96, 8))
    with pytest.raises(ValueError, match="row ids must be i32"):
        ir.get_rows(a, ir.new_tensor("f32", (3,)))
    with pytest.raises(ValueError, match="block size 32"):
        ir.new_tensor("q8_0", (48, 2))
    with pytest.raises(ValueError, match="unknown tensor type"):
        ir.new_tensor("q9_9", (32,))
    q = ir.permute(ir.new_tensor("f32", (192, 16, 40)), 0, 2, 1, 3)
    k = ir.new_tensor("f16", (192, 256, 16))
    v = ir.new_tensor("f16", (128, 256, 16))
    with pytest.raises(ValueError, match=r"GGML_PAD\(n_queries=40, 32\) = 64"):
        ir.flash_attn_ext(q, k, v, ir.new_tensor("f16", (256, 40)), 0.1)
    part = ir.flash_attn_ext_partial(q, k, v, ir.new_tensor("f16", (256, 64)), 0.1)
    with pytest.raises(ValueError, match="only be finalised"):
        ir.fa_merge(part, None, False)
    with pytest.raises(ValueError, match="must be a partial"):
        ir.fa_merge(ir.fa_merge(part, None, True), part, True)


def test_dfs_post_order_leafs_and_names():
    # ggml_visit_parents: src[0] subtree first, then src[1]; leafs by op NONE; unnamed get node_%d / leaf_%d.
    w = ir.weight("w", "f32", (4, 4))
    x = ir.input_tensor("x", "f32", (4, 2))
    a = ir.mul_mat(w, x)
    b = ir.new_tensor("f32", (4, 2))  # a leaf without a name
    s = ir.add(a, b)
    t = ir.scale(s, 2.0).set_name("t")
    g = ir.Graph()
    g.expand(a)
    g.expand(t)
    g.expand(t)  # a second expand of a visited root adds nothing
    assert [n.name for n in g.nodes] == ["node_0", "node_1", "t"]
    assert [n.op for n in g.nodes] == ["MUL_MAT", "ADD", "SCALE"]
    assert [l.name for l in g.leafs] == ["w", "x", "leaf_2"]


def test_dfs_is_iterative_for_deep_graphs():
    x = ir.input_tensor("x", "f32", (8,))
    for _ in range(5000):
        x = ir.scale(x, 1.0)
    g = ir.Graph()
    g.expand(x)
    assert len(g.nodes) == 5000 and g.nodes[-1] is x


def test_type_table_agrees_with_the_registry():
    # The fallback table must agree with every format the mlaref registry already defines.
    from mlaref.reference.types import registry

    for name, fmt in registry().items():
        if name in ir.GGML_TYPE_TRAITS:
            assert ir.GGML_TYPE_TRAITS[name] == (fmt.block_size, fmt.type_size), name
    assert ir.row_size("q8_0", 576) == 612 and ir.row_size("f16", 576) == 1152 and ir.row_size("bf16", 576) == 1152
