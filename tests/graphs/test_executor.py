"""The graph executor on a synthetic DeepSeek-V2: f32 vs direct (upstream facts §0.10), chunked vs blocked attention.

**Finding (upstream facts §0.10, executed).** The ``f32`` (pre-#253) and ``direct`` (#253) FlashMLA-2 branches differ
in two places only: (1) the matmul ``kv_f32 = wkv_b × cache`` gets src1 as f32 values of the cache (f32) or
as the cache's own bytes (direct), and (2) K's rope part is copied bytewise (direct) or dequantized,
repeated, concatenated in f32 and quantized again (f32). So the two give the same K, V and attention bytes
iff every cache block survives ``to_float`` -> the writer's ``from_float`` unchanged:

* **f16 cache**: f16 -> f32 -> f16 is exact, and an f32 src1 converts to the weight's vec_dot type from the
  same values either way: **K, V, kqv (and every later tensor) are bit-identical**, for q8_0, iq4_nl and f16
  weights (``test_f32_vs_direct_f16_cache``).
* **q8_0 cache written by ggml** (``cpy`` f32 -> q8_0 = x86 ``quantize_row_q8_0``: ``d = f16(amax/127)``,
  ``q = rint(x·127/amax)``): every block with ``d != 0`` has ``max|q| = 127`` and is a fixed point of
  dequantize -> quantize, subnormal ``d`` included (``test_x86_q8_0_blocks_are_fixed_points``). With a
  q8_0-family weight (q8_0, iq4_nl: vec_dot type q8_0) the direct matmul uses the cache bytes as they are
  (``src1.type == vec_dot_type``: the "src1 is quantized from the same f32 values" of upstream facts §0.10 does not
  happen there) and the f32 one requantizes them, to the same bytes. **K, V and kqv are bit-identical** for q8_0,
  iq4_nl and f16 weights. One exception, in the bytes only: a block with ``0 < amax < 127·2^-25`` stores
  ``d = 0`` with non-zero ``qs`` (the multiplier ``127/amax`` does not see that d underflowed); the f32
  branch rewrites it as zeros, so **K's rope bytes differ in those cells while K's values, V and kqv are
  identical** (``test_f32_vs_direct_q8_0_cache_ggml_written``).
* **q8_0 blocks that ggml's quantizer does not write** (valid bytes with ``max|q| < 127``, e.g. from another
  writer): the f32 branch re-quantizes them. K's rope bytes differ in those cells; with a q8_0 weight (src1
  used as is) ``kv_f32`` differs in the cells whose nope blocks are such blocks, hence K-nope and V there;
  with an f16 weight, or with iqk's q8_0_x4 vec_dot type (ik_llama.cpp's AVX2 build, where both branches
  convert src1 from f32 values), ``kv_f32``/V are identical; kqv differs in every query row that sees a
  changed cell (``test_f32_vs_direct_q8_0_cache_foreign_blocks``).

Chunked: ``flash_attn_ext_partial`` + ``fa_merge`` over chunks of ``kv_chunk`` cells give the same bytes as
``flash_attn_ext(algorithm="blocked")`` with ``plan.kv_chunks = n_kv / kv_chunk``, and per-chunk K/V bytes
equal the rows of the whole-cache K/V.
"""

import numpy as np
import pytest

from mlaref.reference import dequantize, fp, quantize
from mlaref.reference.alloc import allocate_graph
from mlaref.reference.graphs.executor import REFERENCE_OPS, run_graph
from mlaref.reference.graphs.synthetic import SyntheticModel, tiny_hparams
from mlaref.reference.ops.fa_partial import fa_merge, flash_attn_ext_partial
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.plan import get_plan
from mlaref.reference.tensor import Tensor

N_CTX = 512
T = 32
Q8 = 34  # bytes per q8_0 block
ROPE_BLOCK = 2  # the cache row is 3 q8_0 blocks: c_kv (2 blocks), k_rope (1 block)
K_ROPE = Q8  # a K row (64 values) is 2 blocks: nope, rope
LAYER = SyntheticModel(tiny_hparams(1), seed=7)
MODEL = SyntheticModel(tiny_hparams(2), seed=11)
KEEP = ["k-0", "v-0", "kqv-0", "kv_f32-0", "l_out-0"]


def _run(model, variant, cache_type, *, weight_type="q8_0", n_ctx=N_CTX, cache=None, options=None, keep=KEEP,
         kv_chunk=256, stats=None, impl=None):
    g = model.build(n_ctx, variant=variant, cache_type=cache_type, n_tokens=T, weight_type=weight_type,
                    kv_chunk=kv_chunk)
    kv = model.kv_cache(g) if cache is None else [Tensor.from_bytes(c.raw(), c.type, c.ne) for c in cache]
    out = run_graph(g, weights=model.weights(g), kv_cache=kv, inputs=model.inputs(g), keep=keep, options=options,
                    stats=stats, impl=impl)
    return g, out, kv


def _differing_rows(a: Tensor, b: Tensor) -> set:
    """(i1, i2) of the rows whose bytes differ."""
    ra, rb = a.raw(), b.raw()
    i3, i2, i1 = np.nonzero((ra != rb).any(axis=-1))
    return set(zip(i1.tolist(), i2.tolist()))


def _same(a: Tensor, b: Tensor) -> bool:
    return a.type == b.type and a.ne == b.ne and np.array_equal(a.raw(), b.raw())


# -- the q8_0 lemma the finding rests on --------------------------------------------------------------------
def test_x86_q8_0_blocks_are_fixed_points(rng):
    # Blocks at magnitudes 1e-9 .. 1e3 (d normal, subnormal and flushed to 0).
    x = rng.standard_normal((40000, 32)) * np.exp(rng.uniform(np.log(1e-9), np.log(1e3), (40000, 1)))
    q = quantize(x.astype(np.float32), "q8_0", variant="x86")
    again = quantize(dequantize(q, "q8_0"), "q8_0", variant="x86")
    d = np.ascontiguousarray(q[:, :2]).view(np.uint16)[:, 0]
    qs = q[:, 2:].view(np.int8)
    fixed = (again == q).all(axis=1)
    live = d != 0
    assert live.sum() > 20000 and ((d > 0) & (d < 0x400)).sum() > 100  # normal and subnormal d both present
    assert fixed[live].all()
    assert (np.abs(qs[live].astype(int)).max(axis=1) == 127).all()
    # d flushed to 0: the values are 0 either way, the stale qs are not (bytes differ, values do not).
    dead = ~live & (np.abs(qs).max(axis=1) > 0)
    assert dead.sum() > 1000 and not fixed[dead].any()
    assert (dequantize(q[dead], "q8_0") == 0).all() and (again[dead] == 0).all()


# -- f32 vs direct: f16 cache ------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_type", ["q8_0", "iq4_nl", "f16"])
def test_f32_vs_direct_f16_cache(weight_type):
    gf, f32, _ = _run(LAYER, "f32", "f16", weight_type=weight_type)
    gd, direct, _ = _run(LAYER, "direct", "f16", weight_type=weight_type, cache=LAYER.kv_cache(gf))
    names_f, names_d = {t.name for t in gf.graph.nodes}, {t.name for t in gd.graph.nodes}
    assert "kv_cache_view_f32-0" in names_f and "k_f32-0" in names_f  # the graphs really differ
    assert "kv_cache_view_f32-0" not in names_d and "k_nope-0" in names_d
    for name in KEEP + ["result_output"]:
        assert _same(f32[name], direct[name]), name
    assert direct["k-0"].type == "f16" and direct["kqv-0"].ne == (32, 2, T, 1)
    assert np.isfinite(direct["result_output"].to_numpy()).all()


# -- f32 vs direct: q8_0 cache -----------------------------------------------------------------------------
@pytest.mark.parametrize("weight_type", ["q8_0", "iq4_nl", "f16"])
def test_f32_vs_direct_q8_0_cache_ggml_written(weight_type):
    g = LAYER.build(N_CTX, variant="f32", cache_type="q8_0", n_tokens=T, weight_type=weight_type)
    rows = LAYER.cache_rows(0, g.kv_head)
    tiny_rope, tiny_nope = [3, 40, 41], [17]
    rows[tiny_rope, 64:] *= np.float32(1e-9)  # amax < 127 * 2**-25: d flushes to 0, qs stay non-zero
    rows[tiny_nope, :32] *= np.float32(1e-9)
    cache = LAYER.kv_cache(g, rows=[rows])
    cr = cache[0].storage().reshape(N_CTX, 3 * Q8)
    for c in tiny_rope:  # the premise: d = 0 and qs != 0 in those blocks
        blk = cr[c, ROPE_BLOCK * Q8:(ROPE_BLOCK + 1) * Q8]
        assert blk[:2].view(np.uint16)[0] == 0 and np.abs(blk[2:].view(np.int8)).max() == 127
    _, f32, _ = _run(LAYER, "f32", "q8_0", weight_type=weight_type, cache=cache)
    _, direct, _ = _run(LAYER, "direct", "q8_0", weight_type=weight_type, cache=cache)
    for name in ("v-0", "kqv-0", "kv_f32-0", "l_out-0", "result_output"):
        assert _same(f32[name], direct[name]), name
    # K: same values everywhere; bytes differ exactly in the rope block of the tiny-rope cells, all heads.
    k_f, k_d = f32["k-0"], direct["k-0"]
    assert np.array_equal(k_f.to_numpy(), k_d.to_numpy())
    assert _differing_rows(k_f, k_d) == {(c, h) for c in tiny_rope for h in range(2)}
    rf, rd = k_f.raw(), k_d.raw()
    cols = np.nonzero((rf != rd).any(axis=(0, 1, 2)))[0]
    assert cols.min() >= K_ROPE + 2  # only qs bytes of the rope block (d is 0 in both)
    assert (rf[0][:, tiny_rope, K_ROPE:] == 0).all()  # f32 branch: re-quantized zeros


def _foreign_cache(g, cells_rope, cells_nope):
    """A ggml-written cache with some blocks replaced by valid q8_0 blocks of max|q| = 100 (not a quantizer output)."""
    cache = LAYER.kv_cache(g)
    cr = cache[0].storage().reshape(N_CTX, 3 * Q8)
    d = np.array([fp.f32_to_f16(np.float32(0.02))], np.uint16).view(np.uint8)
    for cell, blk in [(c, ROPE_BLOCK) for c in cells_rope] + [(c, 1) for c in cells_nope]:
        qs = np.random.default_rng(cell).integers(-99, 100, 32).astype(np.int8)
        qs[5] = -100
        cr[cell, blk * Q8:blk * Q8 + 2] = d
        cr[cell, blk * Q8 + 2:(blk + 1) * Q8] = qs.view(np.uint8)
    return cache


@pytest.mark.parametrize("weight_type,vdt", [("q8_0", None), ("f16", None), ("q8_0", "q8_0_x4")],
                         ids=["q8_0-weight", "f16-weight", "q8_0-weight-iqk-x4"])
def test_f32_vs_direct_q8_0_cache_foreign_blocks(weight_type, vdt):
    g = LAYER.build(N_CTX, variant="f32", cache_type="q8_0", n_tokens=T, weight_type=weight_type)
    cells_rope, cells_nope = [5, 9], [7]
    cache = _foreign_cache(g, cells_rope, cells_nope)
    opts = {"MUL_MAT": {"vec_dot_type": vdt, "variant": "iqk"}} if vdt else None
    _, f32, _ = _run(LAYER, "f32", "q8_0", weight_type=weight_type, cache=cache, options=opts)
    _, direct, _ = _run(LAYER, "direct", "q8_0", weight_type=weight_type, cache=cache, options=opts)
    src1_as_is = weight_type == "q8_0" and vdt is None  # direct's matmul reads the cache bytes unconverted
    changed_nope = set(cells_nope) if src1_as_is else set()
    heads = range(2)
    assert _differing_rows(f32["kv_f32-0"], direct["kv_f32-0"]) == {(c, 0) for c in changed_nope}
    assert _differing_rows(f32["v-0"], direct["v-0"]) == {(c, h) for c in changed_nope for h in heads}
    assert _differing_rows(f32["k-0"], direct["k-0"]) == {(c, h) for c in set(cells_rope) | changed_nope
                                                            for h in heads}
    # The f32 branch's rope block is the x86 re-quantization of the cache block; direct's is the block itself.
    cr = cache[0].storage().reshape(N_CTX, 3 * Q8)
    for c in cells_rope:
        blk = cr[c, ROPE_BLOCK * Q8:]
        again = quantize(dequantize(blk[None], "q8_0"), "q8_0", variant="x86")[0]
        assert not np.array_equal(again, blk)
        for h in heads:
            assert np.array_equal(f32["k-0"].raw()[0, h, c, K_ROPE:], again)
            assert np.array_equal(direct["k-0"].raw()[0, h, c, K_ROPE:], blk)
    # Every query sees cells 5, 7, 9 (< kv_head): every kqv row changes, by little.
    a, b = f32["kqv-0"].to_numpy(), direct["kqv-0"].to_numpy()
    assert (a != b).any(axis=-1).all()
    nmse = np.sum((a.astype(np.float64) - b) ** 2) / np.sum(b.astype(np.float64) ** 2)
    assert nmse < 1e-4


# -- the two chunked ops on their own ----------------------------------------------------------------------
def _fa_case(rng, kv_type, n=512, nq=8, nh=2, Dk=64, Dv=32, visible=300):
    q = Tensor.from_numpy(rng.standard_normal((nh, nq, Dk)).astype(np.float32))
    k = Tensor.from_numpy(rng.standard_normal((nh, n, Dk)).astype(np.float32), kv_type)
    v = Tensor.from_numpy(rng.standard_normal((nh, n, Dv)).astype(np.float32), kv_type)
    m = np.full((32, n), -np.inf, np.float32)
    for j in range(nq):
        m[j, :visible + j] = 0  # cells >= visible + j masked: the last 128-cell chunk is fully masked
    return q, k, v, Tensor.from_numpy(m, "f16")


def _chunk(t, lo, n):
    return t.view((t.ne[0], n, t.ne[2]), (t.nb[1], t.nb[2]), lo * t.nb[1])


def _merged(q, k, v, mask, n_chunks, plan, scale):
    C = k.ne[1] // n_chunks
    acc = None
    for c in range(n_chunks):
        mc = mask.view((C, mask.ne[1]), (mask.nb[1],), c * C * mask.nb[0])
        part = flash_attn_ext_partial(q, _chunk(k, c * C, C), _chunk(v, c * C, C), mc, scale, plan=plan)
        last = c == n_chunks - 1
        acc = (fa_merge(part, None, True) if last else part) if acc is None else fa_merge(acc, part, last)
    return acc


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
@pytest.mark.parametrize("plan", ["ggml_generic", "mlaref_l8a2"])
@pytest.mark.parametrize("n_chunks", [1, 2, 4])
def test_partial_and_merge_equal_blocked_flash_attn(rng, kv_type, plan, n_chunks):
    q, k, v, mask = _fa_case(rng, kv_type)
    p = get_plan(plan)
    want = flash_attn_ext(q, k, v, mask, 0.125, algorithm="blocked", plan=p.replace(kv_chunks=n_chunks))
    got = _merged(q, k, v, mask, n_chunks, p, 0.125)
    assert got.ne == want.ne == (32, 2, 8, 1)
    assert np.array_equal(got.data, want.data)


def test_partial_state_against_float64(rng):
    """M, S and acc of one partial vs float64 math on the same operands (q rounded to f16 as the f16 K dot
    does): M to 1e-6 relative, S and acc to NMSE 1e-10 (f32 accumulation over 512 cells)."""
    q, k, v, mask = _fa_case(rng, "f16")
    part = flash_attn_ext_partial(q, k, v, mask, 0.125).to_numpy()[0]  # (nq, nh, Dv + 2)
    qv = fp.f16_to_f32(fp.f32_to_f16(q.to_numpy()[0])).astype(np.float64)  # (nh, nq, Dk)
    kv, vv = k.to_numpy()[0].astype(np.float64), v.to_numpy()[0].astype(np.float64)
    s = np.einsum("hqd,hkd->qhk", qv, kv) * 0.125 + mask.to_numpy()[0, 0, :8, None, :]
    M = s.max(axis=-1)
    e = np.exp(s - M[..., None])
    S, acc = e.sum(axis=-1), np.einsum("qhk,hkd->qhd", e, vv)
    assert np.allclose(part[..., 32], M, rtol=1e-6, atol=0)
    assert np.sum((part[..., 33] - S) ** 2) / np.sum(S ** 2) < 1e-10
    assert np.sum((part[..., :32] - acc) ** 2) / np.sum(acc ** 2) < 1e-10


def test_fully_masked_partial_and_merge(rng):
    q, k, v, mask = _fa_case(rng, "f16", visible=0, nq=1)  # query 0 sees no cell at all
    part = flash_attn_ext_partial(q, k, v, mask, 0.125)
    x = part.to_numpy()[0, 0]  # (nh, Dv + 2)
    assert (x[:, 32] == -np.inf).all() and (x[:, 33] == 0).all() and (x[:, :32] == 0).all()
    assert (fa_merge(part, None, True).to_numpy() == 0).all()  # S = 0 gives 0 (blocked flash_attn_ext raises)
    q2, k2, v2, m2 = _fa_case(rng, "f16", nq=1)
    live = flash_attn_ext_partial(q2, k2, v2, m2, 0.125)
    both = fa_merge(live, part, True)  # a masked chunk contributes nothing: weight 0
    assert np.array_equal(both.data, fa_merge(live, None, True).data)


def test_partial_and_merge_reject_bad_arguments(rng):
    q, k, v, mask = _fa_case(rng, "f16")
    with pytest.raises(ValueError, match="mask must be \\[n_cells = 256"):
        flash_attn_ext_partial(q, _chunk(k, 0, 256), _chunk(v, 0, 256), mask, 0.125)
    with pytest.raises(TypeError, match="k must be of type"):
        flash_attn_ext_partial(q, Tensor.zeros("bf16", k.ne), v, mask, 0.125)
    part = flash_attn_ext_partial(q, k, v, mask, 0.125)
    with pytest.raises(ValueError, match="can only be finalised"):
        fa_merge(part, None, False)
    with pytest.raises(ValueError, match="same shape"):
        fa_merge(part, Tensor.zeros("f32", (34, 2, 4, 1)), True)


# -- chunked vs flash_attn_ext with the same KV chunks -----------------------------------------------------
@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
@pytest.mark.parametrize("plan,n_ctx,kv_chunk", [("ggml_generic", 512, 256), ("mlaref_l8a2", 768, 256)])
def test_chunked_matches_blocked_flash_attn(cache_type, plan, n_ctx, kv_chunk):
    p = get_plan(plan)
    n_chunks = n_ctx // kv_chunk
    fa = {"algorithm": "blocked", "plan": p.replace(kv_chunks=n_chunks)}
    keep_c = ["kqv-0"] + [f"k_c{c}-0" for c in range(n_chunks)] + [f"v_c{c}-0" for c in range(n_chunks)]
    gc, chunked, _ = _run(LAYER, "chunked", cache_type, n_ctx=n_ctx, kv_chunk=kv_chunk, keep=keep_c,
                          options={"FLASH_ATTN_EXT_PARTIAL": {"plan": p}})
    gd, direct, _ = _run(LAYER, "direct", cache_type, n_ctx=n_ctx, options={"FLASH_ATTN_EXT": fa},
                         keep=["kqv-0", "k-0", "v-0"])
    ops_c = [t.op for t in gc.graph.nodes]
    assert ops_c.count("FLASH_ATTN_EXT_PARTIAL") == n_chunks and "FLASH_ATTN_EXT" not in ops_c
    assert _same(chunked["kqv-0"], direct["kqv-0"])
    assert _same(chunked["result_output"], direct["result_output"])
    for c in range(n_chunks):  # per-chunk K/V = the chunk's rows of the whole-cache K/V
        lo, hi = c * kv_chunk, (c + 1) * kv_chunk
        assert np.array_equal(chunked[f"k_c{c}-0"].raw(), direct["k-0"].raw()[:, :, lo:hi])
        assert np.array_equal(chunked[f"v_c{c}-0"].raw(), direct["v-0"].raw()[:, :, lo:hi])
    # The chunk split is observable: one chunk (kv_chunks = 1) rounds differently.
    _, one, _ = _run(LAYER, "direct", cache_type, n_ctx=n_ctx, keep=["kqv-0"],
                     options={"FLASH_ATTN_EXT": {"algorithm": "blocked", "plan": p}})
    assert not _same(one["kqv-0"], chunked["kqv-0"])


def test_chunked_with_one_chunk_is_direct():
    gc, chunked, _ = _run(LAYER, "chunked", "f16", kv_chunk=512, keep=["kqv-0"])
    assert "FLASH_ATTN_EXT" in [t.op for t in gc.graph.nodes]
    _, direct, _ = _run(LAYER, "direct", "f16", keep=["kqv-0"])
    assert _same(chunked["kqv-0"], direct["kqv-0"])


# -- a whole two-layer model (dense layer, MoE layer) -------------------------------------------------------
@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
def test_two_layer_model(cache_type):
    keep = ["kqv-0", "kqv-1", "l_out-0", "l_out-1", "k-1", "v-1"]
    g, f32, cf = _run(MODEL, "f32", cache_type, keep=keep)
    assert {t.op for t in g.graph.nodes} >= {"MUL_MAT_ID", "ARGSORT", "SOFT_MAX", "FUSED_MUL_UNARY", "MULTI_ADD"}
    _, direct, cd = _run(MODEL, "direct", cache_type, keep=keep)
    for name in keep + ["result_output"]:
        assert _same(f32[name], direct[name]), name
    for a, b in zip(cf, cd):  # both wrote the same cells of this micro-batch
        assert np.array_equal(a.data, b.data)
    fa = {"algorithm": "blocked", "plan": get_plan("ggml_generic").replace(kv_chunks=2)}
    _, blocked, _ = _run(MODEL, "direct", cache_type, keep=["kqv-1"], options={"FLASH_ATTN_EXT": fa})
    _, chunked, _ = _run(MODEL, "chunked", cache_type, keep=["kqv-1"])
    assert _same(chunked["kqv-1"], blocked["kqv-1"])
    assert _same(chunked["result_output"], blocked["result_output"])
    out = direct["result_output"]
    assert out.ne == (64, T, 1, 1) and np.isfinite(out.to_numpy()).all()


# -- token generation (absorbed weights) against prompt processing ----------------------------------------
def test_tg_path_agrees_with_pp_path():
    """The TG graph (q·wk_b against the latent cache, soft_max, wv_b; upstream facts §3.1) and the PP graph (wkv_b
    decompression, flash attention) compute the same attention when wk_b / wv_b are wkv_b's halves: the last two
    tokens of a 32-token PP micro-batch, re-run as a 2-token TG batch on the cache the PP run left. Not
    bit-exact (the TG path rounds q·wk_b, the probabilities and the latent sums to f16); bounds are NMSE,
    about 5x what f16 weights give here."""
    g = MODEL.build(N_CTX, variant="direct", cache_type="f16", n_tokens=T, weight_type="f16")
    cache, inp = MODEL.kv_cache(g), MODEL.inputs(g)
    pp = run_graph(g, weights=MODEL.weights(g), kv_cache=cache, inputs=inp, keep=["kqv-0", "kqv-1"])
    gt = MODEL.build(N_CTX, variant="direct", cache_type="f16", n_tokens=2, kv_head=N_CTX - 2, weight_type="f16")
    assert gt.path == "tg" and "SOFT_MAX" in {t.op for t in gt.graph.nodes}
    assert "FLASH_ATTN_EXT" not in {t.op for t in gt.graph.nodes}
    tg_inp = MODEL.inputs(gt)
    tg_inp["inp_tokens"] = inp["inp_tokens"][T - 2:]
    cache2 = [Tensor.from_bytes(c.raw(), c.type, c.ne) for c in cache]
    tg = run_graph(gt, weights=MODEL.weights(gt), kv_cache=cache2, inputs=tg_inp, keep=["kqv_2d-0", "kqv_2d-1"])
    assert np.array_equal(cache[0].data, cache2[0].data)  # layer 0 rewrote cells 510, 511 with the same bytes
    for a, b, bound in (("kqv-0", "kqv_2d-0", 5e-5), ("kqv-1", "kqv_2d-1", 1e-4),
                        ("result_output", "result_output", 2e-4)):
        x = pp[a].to_numpy().reshape(T, -1)[T - 2:].astype(np.float64)
        y = tg[b].to_numpy().reshape(2, -1)
        assert np.sum((x - y) ** 2) / np.sum(x ** 2) < bound, a


# -- executor mechanics ------------------------------------------------------------------------------------
def test_cache_written_in_place_through_the_cpy_view():
    g, out, kv = _run(LAYER, "direct", "q8_0", keep=["kvr-0"])
    rows = kv[0].storage().reshape(N_CTX, 3 * Q8)
    kvr = out["kvr-0"].to_numpy().reshape(T, 96)
    assert np.array_equal(rows[g.kv_head:], quantize(kvr, "q8_0", variant="x86"))
    assert np.array_equal(rows[:g.kv_head], LAYER.kv_cache(g)[0].storage().reshape(N_CTX, -1)[:g.kv_head])
    # a cache given as a uint8 (n_ctx, row_bytes) buffer is written in place too
    buf = LAYER.kv_cache(g)[0].raw().reshape(N_CTX, 3 * Q8).copy()
    run_graph(g, weights=LAYER.weights(g), kv_cache=[buf], inputs=LAYER.inputs(g))
    assert np.array_equal(buf, rows)


def test_impl_override_hook():
    calls = []

    def my_mul_mat(node, a, b, **kw):
        calls.append((node.name, a.type, b.type))
        return REFERENCE_OPS["MUL_MAT"](node, a, b, **kw)

    _, ref, _ = _run(LAYER, "direct", "q8_0", keep=["kqv-0"])
    _, hooked, _ = _run(LAYER, "direct", "q8_0", keep=["kqv-0"], impl={"MUL_MAT": my_mul_mat})
    assert _same(ref["result_output"], hooked["result_output"])
    assert ("kv_f32-0", "q8_0", "q8_0") in calls and ("result_output", "q8_0", "f32") in calls

    def bad(node, *srcs, **kw):
        return Tensor.zeros("f32", (1,))

    with pytest.raises(RuntimeError, match="kqv-0.*expected f32 ne \\[32, 2, 32, 1\\]"):
        _run(LAYER, "direct", "f16", impl={"FLASH_ATTN_EXT": bad})
    with pytest.raises(ValueError, match="VIEW is a view"):
        _run(LAYER, "direct", "f16", impl={"VIEW": bad})


def test_bad_bindings():
    g = LAYER.build(N_CTX, variant="direct", cache_type="f16", n_tokens=T, weight_type="q8_0")
    w, kv, inp = LAYER.weights(g), LAYER.kv_cache(g), LAYER.inputs(g)
    with pytest.raises(ValueError, match="weights: missing 'output.weight'"):
        run_graph(g, weights={k: v for k, v in w.items() if k != "output.weight"}, kv_cache=kv, inputs=inp)
    with pytest.raises(ValueError, match="inputs: missing 'inp_pos'"):
        run_graph(g, weights=w, kv_cache=kv, inputs={k: v for k, v in inp.items() if k != "inp_pos"})
    with pytest.raises(ValueError, match="kv_cache: expected 1 layers, got 0"):
        run_graph(g, weights=w, kv_cache=[], inputs=inp)
    with pytest.raises(ValueError, match="leaf 'output.weight': expected a q8_0 tensor"):
        run_graph(g, weights={**w, "output.weight": Tensor.zeros("f16", (64, 64))}, kv_cache=kv, inputs=inp)
    with pytest.raises(ValueError, match="keep: no tensor named 'nope'"):
        run_graph(g, weights=w, kv_cache=kv, inputs=inp, keep=["nope"])


def test_synthetic_model_is_deterministic():
    g = LAYER.build(N_CTX, variant="direct", cache_type="q8_0", n_tokens=T, weight_type="iq4_nl")
    a, b = LAYER.weights(g), SyntheticModel(tiny_hparams(1), seed=7).weights(g)
    assert all(np.array_equal(a[k].data, b[k].data) for k in a)
    c = SyntheticModel(tiny_hparams(1), seed=8).weights(g)
    assert not np.array_equal(a["blk.0.attn_kv_b.weight"].data, c["blk.0.attn_kv_b.weight"].data)
    assert a["blk.0.attn_kv_b.weight"].type == "iq4_nl" and a["blk.0.attn_norm.weight"].type == "f32"
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        SyntheticModel(seed=-1)


# -- memory: the executor's live set against the allocator model -------------------------------------------
@pytest.mark.parametrize("variant", ["f32", "direct", "chunked"])
@pytest.mark.parametrize("n_layer", [1, 2])
def test_live_bytes_match_allocator(variant, n_layer):
    """After every node (its dead sources dropped), the executor holds exactly the bytes ggml-alloc holds
    (upstream facts §6.2; sizes rounded to 32 B), graph inputs aside (ggml-alloc places them, the caller binds them
    here). In-place reuse changes only the moment inside a node, not the state after it."""
    model = LAYER if n_layer == 1 else MODEL
    g = model.build(N_CTX, variant=variant, cache_type="q8_0", n_tokens=T, weight_type="q8_0")
    res = allocate_graph(g.graph)
    stats = {}
    run_graph(g, weights=model.weights(g), kv_cache=model.kv_cache(g), inputs=model.inputs(g), stats=stats)
    inputs = {id(t) for t in g.inputs.values()}
    live, after = {}, {}
    for kind, i, t, _off, parent in res.events:
        if kind == "alloc":
            live[id(t)] = t
        elif kind == "free":
            live.pop(id(t), None)
        else:  # reuse: the node takes its parent's block
            live.pop(id(parent), None)
            live[id(t)] = t
        after[i] = sum(-(-x.nbytes // 32) * 32 for k, x in live.items() if k not in inputs)
    assert any(e[0] == "reuse" for e in res.events)  # in-place reuse happens and does not matter after a node
    expected, v = [], after.get(-1, 0)
    for i in range(len(g.graph.nodes)):
        v = after.get(i, v)  # view nodes have no allocator events
        expected.append(v)
    assert stats["live"] == expected
    assert stats["peak_bytes"] >= max(expected)
