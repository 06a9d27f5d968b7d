"""flash_attn_ext: ggml's per-row algorithm and its split-KV path bit for bit against upstream ggml (natively and at
each build level), the blocked (iqk) algorithm against float64 softmax attention, hand-built exact cases, the
v_expf polynomials, bad inputs."""

import numpy as np
import pytest

from mlaref.reference import libm as libm
from mlaref.reference.compare import nmse
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext, upstream_splits_kv, v_expf_avx2, v_expf_avx512
from mlaref.reference.plan import MLAREF_L8A2
from mlaref.reference.tensor import Tensor

NMSE_FA = 5e-4  # test-backend-ops' bound for flash_attn_ext; measured <= 6e-6 (f16 accumulators), 1e-13 (f32)


def _inputs(rng, kvt, Dk, Dv, nq, nh, n_kv, nh_kv=None, masked_rows=(), scale_q=1.0):
    nh_kv = nh if nh_kv is None else nh_kv
    q = Tensor.from_numpy((rng.standard_normal((1, nh, nq, Dk)) * scale_q).astype(np.float32))
    k = Tensor.from_numpy(rng.standard_normal((1, nh_kv, n_kv, Dk)).astype(np.float32), kvt)
    v = Tensor.from_numpy(rng.standard_normal((1, nh_kv, n_kv, Dv)).astype(np.float32), kvt)
    m = np.zeros((1, 1, nq, n_kv), np.float32)
    m[..., 1 % nq, n_kv // 2:] = -np.inf  # a causal-like tail
    m[..., 2 % nq, ::3] = -np.inf
    for r in masked_rows:
        m[..., r, :] = -np.inf  # a fully masked query row
    return q, k, v, Tensor.from_numpy(m, "f16")


def _bits(t):
    return t.to_numpy().view(np.uint32)


def _float64_attention(q, k, v, mask, scale, softcap=0.0):
    """softmax(scale·q·kᵀ + mask)·v in float64 on the stored values; rows with no live entry give 0."""
    qv = q.to_numpy().astype(np.float64)[0]  # (nh, nq, Dk)
    kv = k.to_numpy().astype(np.float64)[0]
    vv = v.to_numpy().astype(np.float64)[0]
    rep = qv.shape[0] // kv.shape[0]
    kv, vv = np.repeat(kv, rep, axis=0), np.repeat(vv, rep, axis=0)
    s = np.einsum("hqd,hkd->hqk", qv, kv) * scale
    if softcap:
        s = softcap * np.tanh(s / softcap)
    s = s + mask.to_numpy().astype(np.float64)[0, 0][None, :, : kv.shape[1]]
    mx = np.max(s, axis=-1, keepdims=True)
    live = np.isfinite(mx)
    e = np.where(live, np.exp(s - np.where(live, mx, 0)), 0)
    den = e.sum(-1, keepdims=True)
    out = np.einsum("hqk,hkd->hqd", e, vv) / np.where(den > 0, den, 1)
    return np.transpose(out, (1, 0, 2))  # (nq, nh, Dv) as dst (ne2 = nq, ne1 = nh)


@pytest.mark.parametrize("kvt", ["q8_0", "f16"])
@pytest.mark.parametrize("dims", [(192, 128), (128, 128), (576, 512)])
def test_generic_equals_upstream_ggml(ggml_ops, rng, kvt, dims, peer_plan):
    """Few queries (< GGML_FA_TILE_Q = 64): upstream runs its per-row one_chunk code for f16 and q8_0 alike.
    n_kv = 100 (no block multiple), a fully masked row (row 3 -> zeros), K/V shared by 2 heads (nh_kv = 2)."""
    Dk, Dv = dims
    q, k, v, mask = _inputs(rng, kvt, Dk, Dv, nq=4, nh=4, n_kv=100, nh_kv=2, masked_rows=(3,), scale_q=0.3)
    scale = 1 / np.sqrt(Dk)
    got = flash_attn_ext(q, k, v, mask, scale, plan=peer_plan)
    want = ggml_ops.flash_attn_ext(q, k, v, mask, scale)
    assert got.ne == want.ne == (Dv, 4, 4, 1)
    assert np.array_equal(_bits(got), _bits(want))
    assert not got.to_numpy()[0, 3].any()  # S = 0 -> 1/S taken as 0


def test_views_equal_upstream_ggml(ggml_ops, rng, peer_plan):
    """As in the graph: q a permuted view (heads and tokens swapped), K and V row views into one cache buffer."""
    nq, nh, n_kv = 3, 4, 64
    qbase = Tensor.from_numpy((rng.standard_normal((1, nq, nh, 192)) * 0.3).astype(np.float32))
    q = qbase.permute(0, 2, 1, 3)  # [192, nh, nq] -> [192, nq, nh]
    cache = Tensor.from_numpy(rng.standard_normal((1, 1, n_kv, 576)).astype(np.float32), "q8_0")
    rs = cache.nb[1]
    k = cache.view((192, n_kv, 1, 1), (34, rs, rs * n_kv, rs * n_kv), 0)
    v = cache.view((128, n_kv, 1, 1), (34, rs, rs * n_kv, rs * n_kv), 34 * 6)
    m = np.zeros((1, 1, nq, n_kv), np.float32)
    m[..., 0, 40:] = -np.inf
    mask = Tensor.from_numpy(m, "f16")
    got = flash_attn_ext(q, k, v, mask, 0.1, plan=peer_plan)
    assert np.array_equal(_bits(got), _bits(ggml_ops.flash_attn_ext(q, k, v, mask, 0.1)))


def test_generic_softcap_equals_upstream_ggml(ggml_ops, rng, peer_plan):
    q, k, v, mask = _inputs(rng, "q8_0", 192, 128, nq=3, nh=2, n_kv=64)
    got = flash_attn_ext(q, k, v, mask, 0.125, 0.0, 30.0, plan=peer_plan)
    assert np.array_equal(_bits(got), _bits(ggml_ops.flash_attn_ext(q, k, v, mask, 0.125, 0.0, 30.0)))


def test_mla_shapes_against_upstream_ggml(ggml_ops, rng, peer_plan):
    """FlashMLA-2 PP shapes: Q [192, n_q, 16], K [192, 256, 16], V [128, 256, 16].

    q8_0 K/V: upstream's per-row path, bit for bit. f16 K/V with 64 queries: upstream takes its tiled path,
    ``algorithm="tiled"``, bit for bit; the one-chunk order is another order, within the NMSE bound of both."""
    q, k, v, mask = _inputs(rng, "q8_0", 192, 128, nq=16, nh=16, n_kv=256, scale_q=0.3)
    scale = 1 / np.sqrt(192)
    got = flash_attn_ext(q, k, v, mask, scale, plan=peer_plan)
    assert np.array_equal(_bits(got), _bits(ggml_ops.flash_attn_ext(q, k, v, mask, scale, n_threads=4)))

    q, k, v, mask = _inputs(rng, "f16", 192, 128, nq=64, nh=16, n_kv=256, scale_q=0.3)
    want = ggml_ops.flash_attn_ext(q, k, v, mask, scale, n_threads=4)
    tiled = flash_attn_ext(q, k, v, mask, scale, algorithm="tiled", plan=peer_plan)
    assert np.array_equal(_bits(tiled), _bits(want))
    got = flash_attn_ext(q, k, v, mask, scale, plan=peer_plan).to_numpy()[0]
    assert nmse(got, _float64_attention(q, k, v, mask, scale)) < NMSE_FA
    assert nmse(got, want.to_numpy()[0]) < NMSE_FA


# -- split KV: one query row, n_kv >= 512, f16/f32 K/V: upstream splits the KV rows over its threads -------------

def _split_cases(rng):
    """(id, q, k, v, mask, scale, softcap) for upstream's split-KV path: the MLA decode shape (f16, Dk 576 / Dv 512,
    V a view of K) and f32 Dk 192 / Dv 128 with 4 heads on 2 KV heads and softcap. The mask hides KV rows 170..379
    (at 4 threads all of chunk 1, 175..349: a chunk with S = 0, which the merge skips) and adds 1.5 at row 450."""
    out = []
    for name, kvt, Dk, Dv, n_kv, nh_kv, softcap in (("f16/dk576_dv512", "f16", 576, 512, 700, 1, 0.0),
                                                    ("f32/dk192_dv128/softcap", "f32", 192, 128, 600, 2, 20.0)):
        q = Tensor.from_numpy((rng.standard_normal((1, 4, 1, Dk)) * 0.3).astype(np.float32))
        k = Tensor.from_numpy(rng.standard_normal((1, nh_kv, n_kv, Dk)).astype(np.float32), kvt)
        if kvt == "f16":
            v = k.view((Dv, n_kv, nh_kv, 1), k.nb, 0)
        else:
            v = Tensor.from_numpy(rng.standard_normal((1, nh_kv, n_kv, Dv)).astype(np.float32), kvt)
        m = np.zeros((1, 1, 1, n_kv), np.float32)
        m[..., 170:380] = -np.inf
        m[..., 450] = 1.5
        assert upstream_splits_kv(q, k, v)
        out.append((name, q, k, v, Tensor.from_numpy(m, "f16"), float(1 / np.sqrt(Dk)), softcap))
    return out


def test_split_kv_equals_upstream_ggml(ggml_ops, rng, peer_plan):
    """At 1 to 4 threads upstream's bytes are the model's with ``kv_split`` = the thread count."""
    bad = []
    for name, q, k, v, mask, scale, softcap in _split_cases(rng):
        for nth in (1, 2, 3, 4):
            got = flash_attn_ext(q, k, v, mask, scale, 0.0, softcap, plan=peer_plan, kv_split=nth)
            want = ggml_ops.flash_attn_ext(q, k, v, mask, scale, 0.0, softcap, n_threads=nth)
            if not np.array_equal(_bits(got), _bits(want)):
                bad.append(f"{name}@{nth}: {int(np.sum(_bits(got) != _bits(want)))} words differ")
    assert not bad, bad


# The levels whose split-KV merge differs: fused (avx2, avx512) or not (generic, avx).
LEVELS = ["generic", "avx", "avx2", "avx512"]


@pytest.mark.parametrize("level", LEVELS)
def test_split_kv_equals_upstream_ggml_at_each_level(rng, level, ggml_level):
    """Upstream ggml built at ``level`` gives the model's bytes with that level's plan, at 1, 2 and 3 threads;
    avx512 is run only where the CPU has it."""
    from mlaref.codegen.peers import build as peer_build  # noqa: PLC0415

    plan = ggml_level(level).vec_dot_plan
    cases = _split_cases(rng)
    threads = (1, 2, 3)
    calls = [("mlaref.codegen.peers.ggml_ops:flash_attn_ext", (q, k, v, m, sc, 0.0, cap), {"n_threads": nth})
             for _, q, k, v, m, sc, cap in cases for nth in threads]
    want = iter(peer_build.call_many(level, calls))
    bad = []
    for name, q, k, v, mask, scale, softcap in cases:
        for nth in threads:
            got = flash_attn_ext(q, k, v, mask, scale, 0.0, softcap, plan=plan, kv_split=nth)
            if not np.array_equal(_bits(got), _bits(next(want))):
                bad.append(f"{name}@{nth}")
    assert not bad, f"plan {plan} differs from ggml level {level} on {bad}"


def test_split_kv_depends_on_the_split(rng):
    """Upstream's result there depends on its thread count: 2 or 3 chunks give other bytes than 1, all within the
    NMSE bound of float64 attention."""
    name, q, k, v, mask, scale, softcap = _split_cases(rng)[0]
    outs = {n: flash_attn_ext(q, k, v, mask, scale, plan="ggml_x86_avx2", kv_split=n) for n in (1, 2, 3)}
    assert not np.array_equal(_bits(outs[1]), _bits(outs[2]))
    assert not np.array_equal(_bits(outs[1]), _bits(outs[3]))
    exact = _float64_attention(q, k, v, mask, scale)
    assert all(nmse(o.to_numpy()[0], exact) < NMSE_FA for o in outs.values())


def test_split_kv_one_thread_turns_negative_zero_positive(ggml_ops, peer_plan):
    """Upstream oddity: with one thread the split-KV path still merges its single chunk, fma(0, 0, VKQ*1), which is
    VKQ except that -0.0 becomes +0.0; so ``kv_split=1`` is not the one-chunk order (``kv_split=None``). Built case
    (f16 VKQ): V row 0 is -2**-24, the later rows -0.0; row 1's score is 20 above row 0's, so VKQ *= expf(-20)
    underflows to -0.0 in f16 and stays there."""
    n_kv, D = 512, 64
    qn = np.zeros((1, 1, 1, D), np.float32)
    qn[..., 0] = 1
    kn = np.zeros((1, 1, n_kv, D), np.float32)
    kn[..., 0] = -10
    kn[..., 0, 0], kn[..., 1, 0] = 0, 20
    vn = np.full((1, 1, n_kv, D), -0.0, np.float32)
    vn[..., 0, :] = -2.0 ** -24
    q, k, v = Tensor.from_numpy(qn), Tensor.from_numpy(kn, "f16"), Tensor.from_numpy(vn, "f16")
    one_chunk = flash_attn_ext(q, k, v, None, 1.0, plan=peer_plan).to_numpy()
    assert np.all(one_chunk == 0) and np.all(np.signbit(one_chunk))
    got = flash_attn_ext(q, k, v, None, 1.0, plan=peer_plan, kv_split=1)
    assert not np.signbit(got.to_numpy()).any()
    assert np.array_equal(_bits(got), _bits(ggml_ops.flash_attn_ext(q, k, v, None, 1.0, n_threads=1)))


BLOCKED = [
    MLAREF_L8A2.replace(name="b64", k_step=64, exp="libm"),
    MLAREF_L8A2.replace(name="b32x3", k_step=32, kv_chunks=3, exp="v_expf_avx2"),
    MLAREF_L8A2.replace(name="b64x2", k_step=64, kv_chunks=2, exp="v_expf_avx512"),
]


@pytest.mark.parametrize("plan", BLOCKED, ids=lambda p: p.name)
@pytest.mark.parametrize("kvt", ["q8_0", "f16"])
@pytest.mark.parametrize("dims", [(192, 128), (128, 128), (576, 512)])
def test_blocked_nmse_against_float64(rng, plan, kvt, dims):
    Dk, Dv = dims
    q, k, v, mask = _inputs(rng, kvt, Dk, Dv, nq=4, nh=2, n_kv=100, scale_q=0.3)
    scale = 1 / np.sqrt(Dk)
    got = flash_attn_ext(q, k, v, mask, scale, algorithm="blocked", plan=plan, kq_type="f32" if kvt == "f16" else None)
    err = nmse(got.to_numpy()[0], _float64_attention(q, k, v, mask, scale))
    assert err < NMSE_FA, err


@pytest.mark.parametrize("algorithm", ["generic", "blocked"])
def test_generic_and_blocked_nmse_with_softcap(rng, algorithm):
    q, k, v, mask = _inputs(rng, "f16", 192, 128, nq=4, nh=2, n_kv=96, scale_q=2.0)
    got = flash_attn_ext(q, k, v, mask, 0.1, 0.0, 5.0, algorithm=algorithm, plan=MLAREF_L8A2)
    assert nmse(got.to_numpy()[0], _float64_attention(q, k, v, mask, 0.1, softcap=5.0)) < NMSE_FA


@pytest.mark.parametrize("algorithm", ["generic", "blocked"])
@pytest.mark.parametrize("kvt", ["f16", "q8_0"])
def test_equal_scores_give_the_exact_mean(algorithm, kvt):
    """Identical K rows: every score equals, every weight is exp(0) = 1 in any exp, S = n_kv = 64, and the
    V values (small integers, d = 1 for q8_0) sum exactly: out = mean(V) exactly, in every order."""
    n_kv, D = 64, 192
    kb = np.zeros((1, 1, n_kv, D), np.float32)
    kb[..., 0] = 1
    rng = np.random.default_rng(3)
    vals = rng.integers(-8, 9, size=(1, 1, n_kv, 128)).astype(np.float32)
    if kvt == "q8_0":
        vals[..., ::32] = 127  # one 127 per 32-block of every V row pins each q8_0 scale to 1 (amax 127 -> d = 1)
    # (f16: column sums stay below 2048, so even ggml's f16 accumulator adds them exactly)
    q = Tensor.from_numpy(np.ones((1, 1, 2, D), np.float32))
    k, v = Tensor.from_numpy(kb, kvt), Tensor.from_numpy(vals, kvt)
    for plan in (MLAREF_L8A2.replace(name="b", k_step=32, kv_chunks=2),
                 MLAREF_L8A2.replace(name="c", exp="v_expf_avx2")):
        got = flash_attn_ext(q, k, v, None, 0.5, algorithm=algorithm, plan=plan).to_numpy()[0, :, 0]
        assert np.array_equal(got, np.broadcast_to(vals[0, 0].sum(0) / n_kv, got.shape).astype(np.float32))


def test_blocked_mask_is_binary(rng):
    """iqk treats any non-+0.0 f16 mask value as -inf: a mask of -0.0 (0x8000) or 1.0 removes the entry,
    whereas ggml's generic code adds the value."""
    q, k, v, _ = _inputs(rng, "f16", 192, 128, nq=1, nh=1, n_kv=64)
    m = np.zeros((1, 1, 1, 64), np.float32)
    m[..., 5] = 1.0
    m[..., 9] = -0.0
    drop = np.zeros((1, 1, 1, 64), np.float32)
    drop[..., [5, 9]] = -np.inf
    plan = MLAREF_L8A2
    binary = flash_attn_ext(q, k, v, Tensor.from_numpy(m, "f16"), 0.1, algorithm="blocked", plan=plan)
    dropped = flash_attn_ext(q, k, v, Tensor.from_numpy(drop, "f16"), 0.1, algorithm="blocked", plan=plan)
    assert np.array_equal(_bits(binary), _bits(dropped))
    additive = flash_attn_ext(q, k, v, Tensor.from_numpy(m, "f16"), 0.1, algorithm="generic", plan=plan)
    assert not np.array_equal(_bits(additive), _bits(dropped))


def test_blocked_rejects_fully_masked_rows(rng):
    q, k, v, mask = _inputs(rng, "f16", 192, 128, nq=4, nh=1, n_kv=64, masked_rows=(3,))
    with pytest.raises(ValueError, match="every KV entry masked"):
        flash_attn_ext(q, k, v, mask, 0.1, algorithm="blocked", plan=MLAREF_L8A2)


# -- v_expf ------------------------------------------------------------------------------------------------------

def test_v_expf_of_the_build_equals_ggml_soft_max(ggml_ops, rng):
    """ggml's soft_max on rows of 16: y = ggml_v_expf(x - max) * f32(1/sum), sum a double of the per-chunk float
    sums (``vexp.chunk_sum``). Predicting every output bit from the build's v_expf (``ggml_peer.build().simd``:
    v_expf_avx512 on AVX512F+DQ, v_expf_avx2 on AVX2+FMA, ...) checks it equals that build's ggml_v_expf; scores
    spread over [-104, 0] reach the subnormal and the |n| > 126 ranges."""
    from mlaref.codegen.peers import ggml as ggml_peer  # noqa: PLC0415
    from mlaref.reference.ops.vexp import WIDTH, chunk_sum, v_expf  # noqa: PLC0415

    simd = ggml_peer.build().simd
    x = np.concatenate([np.zeros((400, 1)), -rng.uniform(0, 104, (400, 15))], axis=1).astype(np.float32)
    x = x[:, rng.permutation(16)]
    got = ggml_ops.soft_max_ext(Tensor.from_numpy(x), None, 1.0, 0.0).to_numpy()
    e = v_expf((x - x.max(1, keepdims=True)).astype(np.float32), simd)
    w = WIDTH[simd]
    s = np.zeros(400)
    for c in range(0, 16, w):
        s = s + chunk_sum(e[:, c:c + w], simd).astype(np.float64)
    inv = (1.0 / s).astype(np.float32)
    assert np.array_equal((e * inv[:, None]).astype(np.float32).view(np.uint32), got.reshape(400, 16).view(np.uint32))


@pytest.mark.parametrize("fn", [v_expf_avx2, v_expf_avx512])
def test_v_expf_close_to_libm(fn):
    """Within 2 ulp of libm expf over [-87, 88] (the polynomial's documented error is about 1.5 ulp)."""
    x = np.linspace(-87.0, 88.0, 200001, dtype=np.float32)
    got, ref = fn(x), libm.expf(x)
    ulp = np.abs(got.view(np.int32).astype(np.int64) - ref.view(np.int32).astype(np.int64))
    assert ulp.max() <= 2


def test_v_expf_special_values():
    x = np.array([0.0, -np.inf, -200.0, 100.0, 89.0], np.float32)
    assert v_expf_avx512(x).tolist() == [1.0, 0.0, 0.0, np.inf, np.inf]
    assert v_expf_avx2(x).tolist() == [1.0, 0.0, 0.0, np.inf, np.inf]


def test_v_expf_variants_round_differently():
    """AVX2 computes fma(j, 2**n, 2**n) with j = p(b) - 1, AVX-512 scalef(1 + p(b), n): not always equal."""
    x = np.linspace(-20.0, 0.0, 100001, dtype=np.float32)
    assert np.any(v_expf_avx2(x) != v_expf_avx512(x))


# -- bad inputs ----------------------------------------------------------------------------------------------

def _bad(rng, what):
    q, k, v, mask = _inputs(rng, "f16", 192, 128, nq=2, nh=2, n_kv=32)
    if what == "q-type":
        return (Tensor.from_numpy(q.to_numpy(), "f16"), k, v, mask, 0.1), {}
    if what == "dk":
        return (q, _inputs(rng, "f16", 576, 128, 2, 2, 32)[1], v, mask, 0.1), {}
    if what == "n-kv":
        return (q, k, _inputs(rng, "f16", 192, 128, 2, 2, 64)[2], mask, 0.1), {}
    if what == "mask-shape":
        return (q, k, v, Tensor.from_numpy(np.zeros((1, 16), np.float32), "f16"), 0.1), {}
    if what == "mask-type":
        return (q, k, v, Tensor.from_numpy(np.zeros((2, 32), np.float32)), 0.1), {}
    if what == "alibi":
        return (q, k, v, mask, 0.1, 8.0), {}
    if what == "algorithm":
        return (q, k, v, mask, 0.1), {"algorithm": "paged"}
    if what == "kv-split-shape":  # 2 query rows, 32 KV rows: upstream does not split
        return (q, k, v, mask, 0.1), {"kv_split": 2}
    if what == "kv-split-algorithm":
        return (q, k, v, mask, 0.1), {"kv_split": 2, "algorithm": "blocked"}
    if what == "kv-split-value":
        return (q, k, v, mask, 0.1), {"kv_split": 0}
    if what == "scale":
        return (q, k, v, mask, "0.1"), {}
    return (q, k, v, mask, 0.1), {}


@pytest.mark.parametrize(
    "what, error, message",
    [
        ("q-type", TypeError, "q must be of type f32"),
        ("dk", ValueError, "q.ne\\[0\\] \\(192\\) must equal k.ne\\[0\\] \\(576\\)"),
        ("n-kv", ValueError, "same number of KV rows"),
        ("mask-shape", ValueError, "mask must cover"),
        ("mask-type", TypeError, "mask must be of type f16"),
        ("alibi", ValueError, "max_bias must be 0"),
        ("algorithm", ValueError, "algorithm must be 'generic', 'blocked' or 'tiled'"),
        ("kv-split-shape", ValueError, "one query row .* n_kv >= 512"),
        ("kv-split-algorithm", ValueError, "kv_split applies to algorithm='generic' only"),
        ("kv-split-value", ValueError, "kv_split must be None or an int >= 1"),
        ("scale", TypeError, "scale must be a real number"),
        ("valid", None, None),
    ],
)
def test_bad_inputs(rng, what, error, message):
    args, kwargs = _bad(rng, what)
    if error is None:  # the control case
        assert flash_attn_ext(*args, **kwargs).ne == (128, 2, 2, 1)
        return
    with pytest.raises(error, match=message):
        flash_attn_ext(*args, **kwargs)
