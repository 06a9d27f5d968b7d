"""Arithmetic ops (add, mul, scale, rms_norm, fused_rms_norm, rope, soft_max) against upstream ggml.

Every op here is bit-exact against ggml-python's CPU back-end (equal bytes). fused_rms_norm, which upstream
lacks, is checked against ggml where the math coincides (unit or power-of-two weights), against a scalar
re-statement of its definition, and against float64 math (NMSE bound 1e-12). soft_max depends on the build's
vector exp (``simd``): it is compared with the installed library at ``ggml_peer.build().simd`` and with upstream
built at each level this CPU runs (``peer_build``) at that level's ``simd``.
"""

import math

import numpy as np
import pytest

from mlaref.codegen.peers import ggml_ops as ggml_ops


from mlaref.reference import libm as libm

from mlaref.codegen.peers import build as peer_build
from mlaref.reference.compare import nmse
from mlaref.reference.ops import add, fused_rms_norm, mul, rms_norm, rope, scale, soft_max
from mlaref.reference.ops.rope import rope_cache, yarn_corr_dims
from mlaref.reference.ops.soft_max import v_expf_avx512
from mlaref.reference.ops.vexp import SIMD, WIDTH, chunk_sum, v_expf, v_expf_avx2, v_expf_sse2
from mlaref.reference.tensor import Tensor


def _same_bytes(x: Tensor, y: Tensor):
    assert x.type == y.type and x.ne == y.ne
    diff = x.raw() != y.raw()
    assert not diff.any(), f"{int(diff.sum())} differing bytes"


def _f32(rng, *shape, scale=1.0):
    return Tensor.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))


# -- add / mul / scale ----------------------------------------------------------------------------------


@pytest.mark.parametrize("a_ne,b_ne", [((64, 7, 3, 2), (64, 7, 3, 2)), ((64, 7, 3, 2), (64, 1, 1, 1)),
                                       ((2048, 6, 5), (1, 6, 5)), ((33, 4, 6), (33, 2, 3)), ((5, 4), (1, 4))])
def test_add_mul_broadcast_match_ggml(ggml, rng, a_ne, b_ne):
    a = _f32(rng, *reversed(a_ne), scale=1e3)
    b = _f32(rng, *reversed(b_ne), scale=1e-2)
    _same_bytes(add(a, b), ggml_ops.add(a, b))
    _same_bytes(mul(a, b), ggml_ops.mul(a, b, n_threads=3))


def test_add_mul_strided_and_special_values_match_ggml(ggml, rng):
    a = _f32(rng, 6, 16, 40).permute(0, 2, 1, 3)  # [40, 6, 16] non-contiguous rows
    x = a.to_numpy()
    b = Tensor.from_numpy(np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45, 3e38, -3e38] * 5, np.float32))
    _same_bytes(add(a, b), ggml_ops.add(a, b))
    _same_bytes(mul(a, b), ggml_ops.mul(a, b))
    assert np.array_equal(add(a, b).to_numpy()[..., 3], x[..., 3])  # + 0.0


def test_scale_matches_ggml(ggml, rng):
    a = _f32(rng, 3, 5, 100, scale=1e30)
    for s in (1.0, 0.11472137, -3.5, 1e-30, 0.0):
        _same_bytes(scale(a, s), ggml_ops.scale(a, s))


def test_add_mul_scale_bad_inputs():
    f = Tensor.zeros("f32", (8, 4))
    with pytest.raises(ValueError, match=r"add: b.ne\[0\] = 3 must divide a.ne\[0\] = 8"):
        add(f, Tensor.zeros("f32", (3, 4)))
    with pytest.raises(TypeError, match="add: b must be of type f32, got f16"):
        add(f, Tensor.zeros("f16", (8, 4)))
    with pytest.raises(ValueError, match=r"mul: b.ne\[1\] = 3 must divide a.ne\[1\] = 4"):
        mul(f, Tensor.zeros("f32", (8, 3)))
    with pytest.raises(TypeError, match="mul: a must be of type f32, got q8_0"):
        mul(Tensor.zeros("q8_0", (32,)), f)
    with pytest.raises(TypeError, match="add: a must be an mlaref Tensor, got ndarray"):
        add(np.zeros((4, 8), np.float32), f)
    with pytest.raises(ValueError, match=r"add: b.ne\[2\] = 0 must divide a.ne\[2\] = 1"):
        add(f, Tensor.zeros("f32", (8, 4, 0)))
    with pytest.raises(TypeError, match="mul: b must be of type f32, got i32"):
        mul(f, Tensor.zeros("i32", (8,)))
    with pytest.raises(ValueError, match="scale: a must be contiguous"):
        scale(f.transpose(), 2.0)
    with pytest.raises(TypeError, match="scale: s must be a real number, got str"):
        scale(f, "2")
    with pytest.raises(TypeError, match="scale: a must be an mlaref Tensor"):
        scale(np.zeros(3, np.float32), 2.0)


# -- rms_norm / fused_rms_norm --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 16, 64, 512, 2048])
def test_rms_norm_matches_ggml(ggml, rng, n):
    mag = np.exp(rng.uniform(-20, 20, (4, 6, 1))).astype(np.float32)
    a = Tensor.from_numpy((rng.standard_normal((4, 6, n)) * mag).astype(np.float32))
    for eps in (1e-6, 0.0, 1e-3):
        _same_bytes(rms_norm(a, eps), ggml_ops.rms_norm(a, eps, n_threads=2))


def test_rms_norm_strided_rows_match_ggml(ggml, rng):
    kv = _f32(rng, 20, 576)
    view = kv.view((512, 20), (2304,), 0)  # kv_compressed view (upstream facts §3.3 #3)
    _same_bytes(rms_norm(view, 1e-6), ggml_ops.rms_norm(view, 1e-6))


def test_fused_rms_norm_equals_ggml_where_the_math_coincides(ggml, rng):
    a = _f32(rng, 5, 9, 2048, scale=0.3)
    ones = Tensor.from_numpy(np.ones(2048, np.float32))
    _same_bytes(fused_rms_norm(a, ones, 1e-6), ggml_ops.rms_norm(a, 1e-6))  # x*1 is x
    # power-of-two weights: (x*w)*s == (x*s)*w exactly (no overflow or underflow here)
    w = Tensor.from_numpy((2.0 ** rng.integers(-8, 8, 2048)).astype(np.float32))
    ref = ggml_ops.run(lambda ctx, x, y: ggml.lib().ggml_mul(ctx, ggml.lib().ggml_rms_norm(ctx, x, 1e-6), y), a, w)
    _same_bytes(fused_rms_norm(a, w, 1e-6), ref)
    # a weight with several rows: ggml_fused_rms_norm builds mul(rms_norm(a), w)
    w2 = _f32(rng, 9, 2048)
    ref2 = ggml_ops.run(lambda ctx, x, y: ggml.lib().ggml_mul(ctx, ggml.lib().ggml_rms_norm(ctx, x, 1e-6), y), a, w2)
    _same_bytes(fused_rms_norm(a, w2, 1e-6), ref2)


def test_fused_rms_norm_definition(rng):
    x = (rng.standard_normal((3, 512)) * 4).astype(np.float32)
    w = (rng.standard_normal(512) + 1).astype(np.float32)
    got = fused_rms_norm(Tensor.from_numpy(x), Tensor.from_numpy(w), 1e-6).to_numpy()[0, 0]
    eps = np.float32(1e-6)
    for r in range(3):  # the C loop, one scalar at a time: products in float, sum in double (Python float)
        s = 0.0
        for v in x[r]:
            s += float(np.float32(v * v))
        mean = np.float32(s / 512)
        sc = np.float32(1) / np.float32(math.sqrt(float(mean + eps)))  # double sqrt, then float: = sqrtf
        want = np.array([np.float32(np.float32(x[r, i] * w[i]) * sc) for i in range(512)], np.float32)
        assert np.array_equal(got[r], want)
    x64 = x.astype(np.float64)
    ref = x64 * w / np.sqrt(np.mean(x64**2, axis=1, keepdims=True) + 1e-6)
    assert nmse(got, ref) < 1e-12
    # the weight-first order differs from rms_norm-then-mul somewhere
    other = mul(rms_norm(Tensor.from_numpy(x), 1e-6), Tensor.from_numpy(w)).to_numpy()[0, 0]
    assert not np.array_equal(got, other)


def test_rms_norm_bad_inputs():
    f = Tensor.zeros("f32", (8, 4))
    with pytest.raises(ValueError, match="rms_norm: eps must be finite and >= 0"):
        rms_norm(f, -1.0)
    with pytest.raises(TypeError, match="rms_norm: a must be of type f32, got f16"):
        rms_norm(Tensor.zeros("f16", (8,)), 1e-6)
    with pytest.raises(ValueError, match="the elements of each row of a must be contiguous"):
        rms_norm(f.transpose(), 1e-6)
    with pytest.raises(ValueError, match="fused_rms_norm: eps must be finite and > 0"):
        fused_rms_norm(f, Tensor.zeros("f32", (8,)), 0.0)
    with pytest.raises(TypeError, match="fused_rms_norm: w must be of type f32, got bf16"):
        fused_rms_norm(f, Tensor.zeros("bf16", (8,)), 1e-6)
    with pytest.raises(TypeError, match="rms_norm: eps must be a real number"):
        rms_norm(f, "1e-6")
    with pytest.raises(ValueError, match="the elements of each row of w must be contiguous"):
        fused_rms_norm(f, Tensor.zeros("f32", (16,)).view((8,), (8,)), 1e-6)  # every other value
    with pytest.raises(TypeError, match="fused_rms_norm: a must be of type f32, got f16"):
        fused_rms_norm(Tensor.zeros("f16", (8,)), Tensor.zeros("f32", (8,)), 1e-6)


# -- rope -----------------------------------------------------------------------------------------------

N_CTX_ORIG, FREQ_BASE, BETA_FAST, BETA_SLOW = 4096, 10000.0, 32.0, 1.0
FREQ_SCALE = float(np.float32(1.0) / np.float32(40.0))
ATTN_FACTOR = float(np.float32(1.0) / (np.float32(1.0) + np.float32(0.1) * np.float32(math.log(40.0))))
YARN = (64, 0, N_CTX_ORIG, FREQ_BASE, FREQ_SCALE, 1.0, ATTN_FACTOR, BETA_FAST, BETA_SLOW)


def test_yarn_constants_of_facts_1_3():
    assert yarn_corr_dims(64, N_CTX_ORIG, FREQ_BASE, BETA_FAST, BETA_SLOW) == (10.0, 23.0)
    cos, sin = rope_cache(np.array([0, 1]), *YARN[:1], *YARN[2:])
    # position 0: theta 0, so cos = magnitude = attn_factor * (1 + 0.1 ln 40) ~ 1 and sin = 0
    assert abs(float(cos[0, 0]) - 1.0) < 1e-6 and (sin[0] == 0).all()


@pytest.mark.parametrize("heads", [1, 16])
def test_rope_yarn_matches_ggml(ggml, rng, heads):
    # q_rope [64, 16, T] / k_rope [64, 1, T] views of the graph (upstream facts §3.3 q3, #5) with positions up to 16k
    T = 96
    q = _f32(rng, T, heads * 192)
    view = q.view((64, heads, T), (768, heads * 768), 512)
    pos = Tensor.from_numpy(np.concatenate([[0, 1, 2, 4095, 4096, 16383], rng.integers(0, 16384, T - 6)])
                            .astype(np.int32))
    _same_bytes(rope(view, pos, *YARN), ggml_ops.rope_ext(view, pos, *YARN, n_threads=3))


def test_rope_yarn_nmse_against_float64(rng):
    """rope against YaRN written out in float64 from upstream facts §1.3 / §4g (theta = p * base^(-2k/n), ramp, mix,
    magnitude m), not from the float32 code path. Bound 1e-6: float32 angles up to 16383 rad carry an absolute
    error of about one float32 ulp of the angle (~1e-3) in the fastest pair, which dominates (measured ~1e-8)."""
    T = 64
    x = rng.standard_normal((T, 16, 64)).astype(np.float32)
    pos = np.concatenate([[0, 1, 4095, 4096, 16383], rng.integers(0, 16384, T - 5)]).astype(np.int32)
    got = rope(Tensor.from_numpy(x), Tensor.from_numpy(pos), *YARN).to_numpy().reshape(T, 16, 64)

    def corr_dim(beta):
        return 64 * math.log(N_CTX_ORIG / (beta * 2 * math.pi)) / (2 * math.log(FREQ_BASE))

    c0, c1 = max(0, math.floor(corr_dim(BETA_FAST))), min(63, math.ceil(corr_dim(BETA_SLOW)))
    k = np.arange(32)
    theta_ext = pos[:, None].astype(np.float64) * FREQ_BASE ** (-2.0 * k / 64)
    mix = (1 - np.clip((k - c0) / max(0.001, c1 - c0), 0, 1)) * 1.0  # ext_factor 1
    theta = FREQ_SCALE * theta_ext * (1 - mix) + theta_ext * mix
    m = ATTN_FACTOR * (1 + 0.1 * math.log(1 / FREQ_SCALE))
    cos, sin = (np.cos(theta) * m)[:, None, :], (np.sin(theta) * m)[:, None, :]
    x0, x1 = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    want = np.empty(x.shape, np.float64)
    want[..., 0::2] = x0 * cos - x1 * sin
    want[..., 1::2] = x0 * sin + x1 * cos
    assert (c0, c1) == (10, 23)
    assert nmse(got, want) < 1e-6


def test_rope_contraction_matters(ggml, rng):
    a = _f32(rng, 64, 4, 64)
    pos = Tensor.from_numpy(rng.integers(0, 16384, 64).astype(np.int32))
    ref = ggml_ops.rope_ext(a, pos, *YARN)
    assert not np.array_equal(rope(a, pos, *YARN, fma=False).raw(), ref.raw())
    _same_bytes(rope(a, pos, *YARN), ref)


def test_rope_plain_and_partial_dims_match_ggml(ggml, rng):
    a = _f32(rng, 3, 40, 5, 128, scale=10)
    pos = Tensor.from_numpy(rng.integers(0, 3000, 40).astype(np.int32))
    args = (96, 0, 4096, 500000.0, 1.0, 0.0, 1.0, 32.0, 1.0)  # no YaRN; the last 32 values are copied
    got = rope(a, pos, *args)
    _same_bytes(got, ggml_ops.rope_ext(a, pos, *args))
    assert np.array_equal(got.to_numpy()[..., 96:], a.to_numpy()[..., 96:])


def test_rope_bad_inputs():
    a = Tensor.zeros("f32", (64, 2, 3))
    pos = Tensor.zeros("i32", (3,))
    with pytest.raises(ValueError, match="rope: only mode 0 .* got mode 2"):
        rope(a, pos, 64, 2)
    with pytest.raises(ValueError, match="rope: n_dims must be a positive even number <= a.ne"):
        rope(a, pos, 63)
    with pytest.raises(ValueError, match=r"rope: pos must be a vector of a.ne\[2\] = 3 positions"):
        rope(a, Tensor.zeros("i32", (2,)), 64)
    with pytest.raises(TypeError, match="rope: pos must be of type i32, got f32"):
        rope(a, Tensor.zeros("f32", (3,)), 64)


# -- soft_max -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 15, 16, 17, 64, 100, 256])
@pytest.mark.parametrize("mask_type", [None, "f16", "f32"])
def test_soft_max_matches_ggml(ggml, rng, n, mask_type):
    a = _f32(rng, 2, 4, 6, n, scale=4)
    mask = None
    if mask_type:
        m = rng.standard_normal((8, n)).astype(np.float32)
        m[rng.random((8, n)) < 0.3] = -np.inf
        m[:, 0] = 0.0  # every row keeps at least one finite value
        mask = Tensor.from_numpy(m, mask_type)
    for sc, max_bias in ((0.11472137, 0.0), (1.0, 8.0 if mask_type else 0.0)):
        got = soft_max(a, mask, sc, max_bias, simd=ggml.build().simd)
        _same_bytes(got, ggml_ops.soft_max_ext(a, mask, sc, max_bias, n_threads=3))


# The levels whose soft_max / SILU differ (builds.GgmlBuild.simd: sse2, sse2_avx, avx2, avx512).
SIMD_LEVELS = ["generic", "avx", "avx2", "avx512"]


def _soft_max_cases(rng):
    """(name, a, mask, scale, max_bias): rows with and without tails for every chunk width, f16 / f32 masks,
    ALiBi over 3 heads (slopes from m0 and m1), and extreme exponents: w - max down to -200 (v_expf's |n| > 126
    subnormal branch and |n| > 192 flush to 0) and f32 mask entries of -1e30."""
    cases = []
    for n in (15, 16, 17, 100):
        a = _f32(rng, 2, 3, 5, n, scale=4)
        m = (rng.standard_normal((5, n)) * 3).astype(np.float32)
        m[rng.random((5, n)) < 0.3] = -np.inf
        m[:, 0] = 0.0  # every row keeps at least one finite value
        cases.append((f"n{n}", a, None, 0.37, 0.0))
        for mt in ("f16", "f32"):
            cases.append((f"n{n}/mask_{mt}", a, Tensor.from_numpy(m, mt), 0.11472137, 0.0))
            cases.append((f"n{n}/mask_{mt}/alibi", a, Tensor.from_numpy(m, mt), 1.0, 8.0))
        x = -rng.uniform(0, 200, (2, 3, 5, n)).astype(np.float32)
        x[..., rng.integers(n)] = 0.0
        cases.append((f"n{n}/extreme", Tensor.from_numpy(x), None, 1.0, 0.0))
        big = m.copy()
        big[rng.random((5, n)) < 0.2] = -1e30
        big[:, 0] = 0.0
        cases.append((f"n{n}/extreme/mask_f32/alibi", Tensor.from_numpy(x), Tensor.from_numpy(big), 1.0, 8.0))
    return cases


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_soft_max_matches_ggml_at_each_level(rng, level, ggml_level):
    """Upstream ggml built at ``level`` gives the bytes of ``soft_max(..., simd=builds.level(level).simd)`` on every
    case, and every other variant of the model differs on some case (so a wrong model fails)."""
    simd = ggml_level(level).simd
    cases = _soft_max_cases(rng)
    want = peer_build.call_many(level, [("mlaref.codegen.peers.ggml_ops:soft_max_ext", (a, m, sc, mb), {})
                                        for _, a, m, sc, mb in cases])
    bad = [name for (name, a, m, sc, mb), w in zip(cases, want)
           if not np.array_equal(soft_max(a, m, sc, mb, simd=simd).raw(), w.raw())]
    assert not bad, f"soft_max(simd={simd!r}) differs from ggml level {level} on {bad}"
    for other in SIMD:
        if other != simd:
            assert any(not np.array_equal(soft_max(a, m, sc, mb, simd=other).raw(), w.raw())
                       for (_, a, m, sc, mb), w in zip(cases, want)), f"simd={other!r} gives level {level}'s bytes"


# Scores whose v_expf is below 2^-30: with one 0 per row of 16 every chunk sums to exactly 1 (the small values
# vanish in any fold order), 1/sum is 1, and soft_max returns each v_expf bit pattern unchanged.
_PROBE_LO, _PROBE_HI = -200.0, -21.0


def _v_expf_probe(rng, rows=4000):
    x = np.concatenate([rng.uniform(-104, _PROBE_HI, rows * 15 - 3000),
                        rng.uniform(-90, -86, 1000),  # around |n| = 126 (x = -87.34)
                        rng.uniform(-140, -130, 1000),  # around |n| = 192 (x = -133.08)
                        rng.uniform(_PROBE_LO, -104, 1000)]).astype(np.float32)
    rows_ = np.zeros((rows, 16), np.float32)
    zero_at = rng.integers(16, size=rows)
    keep = np.ones((rows, 16), bool)
    keep[np.arange(rows), zero_at] = False
    rows_[keep] = rng.permutation(x)
    return rows_, keep


def test_v_expf_variants_differ_on_the_probe(rng):
    """The probe holds inputs where the variants disagree: the AVX2 and AVX-512 closings of the polynomial,
    and FMA against separately rounded multiply-adds."""
    rows_, keep = _v_expf_probe(rng)
    x = rows_[keep]
    assert x.max() < _PROBE_HI and x.min() >= _PROBE_LO
    e2, e5, e0 = (f(x).view(np.uint32) for f in (v_expf_avx2, v_expf_avx512, v_expf_sse2))
    assert (e2 != e5).sum() > 1000 and (e2 != e0).sum() > 50 and (e5 != e0).sum() > 1000
    assert (v_expf(x, "sse2_fma") == v_expf_avx2(x)).all() and (v_expf(x, "sse2_avx") == v_expf_sse2(x)).all()


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_v_expf_equals_each_level_bit_for_bit(rng, level, ggml_level):
    """60,000 scores in [-200, -21] through upstream's soft_max at ``level``: each output is that build's
    ggml_v_expf exactly (see _PROBE_HI), so the level's variant must give every bit, and another variant's
    differing bits are caught."""
    simd = ggml_level(level).simd
    rows_, keep = _v_expf_probe(rng)
    got = peer_build.call(level, "mlaref.codegen.peers.ggml_ops:soft_max_ext", Tensor.from_numpy(rows_), None, 1.0, 0.0)
    y = got.to_numpy().reshape(rows_.shape)
    assert (y[~keep] == 1.0).all()
    want = v_expf(rows_[keep], simd)
    diff = y[keep].view(np.uint32) != want.view(np.uint32)
    assert not diff.any(), f"{int(diff.sum())} of {diff.size} v_expf({simd}) values differ from level {level}"
    for other in SIMD:
        if v_expf(rows_[keep], other).tobytes() != want.tobytes():
            assert (y[keep].view(np.uint32) != v_expf(rows_[keep], other).view(np.uint32)).any()


def test_chunk_sum_orders():
    """The float sum of one chunk per build: halves for AVX-512 / AVX2 / SSE2 with AVX, adjacent pairs for SSE2."""
    v = np.array([1.0, 2.0**-24, -1.0, 2.0**-24], np.float32)
    assert chunk_sum(v, "sse2_avx") == np.float32(2.0**-23) == chunk_sum(v, "sse2_fma")  # 0 + 2^-23
    assert chunk_sum(v, "sse2") == np.float32(2.0**-24)  # 1 (1 + 2^-24 ties to even) + (-1 + 2^-24)
    w = np.array([1.0, 0, 0, 0, 2.0**-24, 0, 0, 0], np.float32)
    assert chunk_sum(w, "avx2") == np.float32(1.0)  # (1 + 2^-24) ties to even at the first step
    assert chunk_sum(np.tile(w, 2), "avx512") == np.float32(2.0)
    assert chunk_sum(v, "neon") == np.float32(2.0**-24)  # vaddvq_f32: adjacent pairs, as sse2
    assert [WIDTH[s] for s in SIMD] == [16, 8, 4, 4, 4, 4]


def test_soft_max_nmse_against_float64(rng):
    x = (rng.standard_normal((3, 16, 300)) * 6).astype(np.float32)
    got = soft_max(Tensor.from_numpy(x), None, 0.5).to_numpy()[0]
    w = x.astype(np.float64) * 0.5
    e = np.exp(w - w.max(axis=-1, keepdims=True))
    assert nmse(got, e / e.sum(axis=-1, keepdims=True)) < 1e-12


@pytest.mark.parametrize("simd", SIMD)
def test_v_expf_accuracy_against_libm(rng, simd):
    x = np.concatenate([rng.uniform(-87, 0, 20000), rng.uniform(-104, -87, 2000), rng.uniform(0, 88.7, 2000),
                        [0.0, -0.0, -1e-30, -88.7, 88.5]])
    x = x.astype(np.float32)
    got, want = v_expf(x, simd), libm.expf(x)
    normal = want >= np.float32(1.2e-38)
    ulps = np.abs(got[normal].view(np.int32).astype(np.int64) - want[normal].view(np.int32).astype(np.int64))
    assert ulps.max() <= 2  # ggml states a maximum error of 1.45 ulp + rounding
    special = v_expf(np.array([-200.0, -1000.0, 100.0, 1000.0, -np.inf, np.inf], np.float32), simd)
    assert special.tolist() == [0, 0, np.inf, np.inf, 0, np.inf]
    assert np.isnan(v_expf(np.array([np.nan], np.float32), simd)).all()
    if simd == "avx512":
        assert np.array_equal(v_expf_avx512(x), got)


def test_soft_max_bad_inputs():
    a = Tensor.zeros("f32", (8, 4))
    with pytest.raises(ValueError, match=r"soft_max: mask must be \[a.ne\[0\], >= a.ne\[1\]\] = \[8, >= 4\]"):
        soft_max(a, Tensor.zeros("f32", (8, 3)))
    with pytest.raises(TypeError, match="soft_max: mask must be of type f16 or f32, got i32"):
        soft_max(a, Tensor.zeros("i32", (8, 4)))
    with pytest.raises(ValueError, match="soft_max: ALiBi .* needs a mask"):
        soft_max(a, None, 1.0, 8.0)
    with pytest.raises(TypeError, match="soft_max: a must be of type f32, got f16"):
        soft_max(Tensor.zeros("f16", (8, 4)))
    with pytest.raises(ValueError, match="soft_max: max_bias must be finite and >= 0"):
        soft_max(a, None, 1.0, -1.0)
    with pytest.raises(ValueError, match="soft_max: simd must be one of avx512, avx2, sse2_fma, sse2_avx, sse2, neon "):
        soft_max(a, simd="avx3")
