"""flash_attn_ext algorithm="tiled" (reference/ops/fa_tiled.py): bit for bit against upstream ggml's tiled path, at
several thread counts and build levels; not the one-chunk order; exact on a hand-built case; bad inputs."""

import numpy as np
import pytest

from mlaref.codegen.peers import ggml_ops as ggml_ops


from mlaref.codegen.peers import build as peer_build
from mlaref.reference.compare import nmse
from mlaref.reference.ops.fa_tiled import Q_TILE, tiled_build
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.plan import get_plan
from mlaref.reference.tensor import Tensor

NMSE_FA = 5e-4  # test-backend-ops' bound for flash_attn_ext


def _qkv(rng, kvt, Dk, Dv, nq, nh, n_kv, nh_kv=1, shared=False):
    """Q [Dk, nq, nh]; K [Dk, n_kv, nh_kv]; V its own tensor, or (``shared``, the MLA cache) a view of K's first
    Dv columns."""
    q = Tensor.from_numpy((rng.standard_normal((1, nh, nq, Dk)) * 0.3).astype(np.float32))
    k = Tensor.from_numpy(rng.standard_normal((1, nh_kv, n_kv, Dk)).astype(np.float32), kvt)
    if shared:
        v = k.view((Dv, n_kv, nh_kv, 1), k.nb, 0)
    else:
        v = Tensor.from_numpy(rng.standard_normal((1, nh_kv, n_kv, Dv)).astype(np.float32), kvt)
    return q, k, v


def _mask(rng, nq, n_kv):
    """Causal over the last nq cells, plus: KV tile 1 (cells 64..127) masked for every query, so upstream skips the
    whole tile; a fully masked row (3: output 0); a row masked in tile 0 only (5: rows of one tile disagree on
    what to skip); finite additive values on row 9."""
    m = np.zeros((1, 1, nq, n_kv), np.float32)
    for i in range(nq):
        m[..., i, max(n_kv - nq + i + 1, 0):] = -np.inf
    m[..., :, 64:128] = -np.inf
    m[..., 3, :] = -np.inf
    m[..., 5, :64] = -np.inf
    m[..., 9, :] += rng.standard_normal(n_kv).astype(np.float32)
    return Tensor.from_numpy(m, "f16")


def _cases(rng, big=True):
    """(id, q, k, v, mask, scale, softcap): partial last KV tiles, more than one Q tile per head, 2 heads on one
    K/V head, the MLA shapes (Dk 576 / Dv 512 with V a view of K), f32 K/V, and softcap."""
    out = []
    q, k, v = _qkv(rng, "f16", 192, 128, 64, 2, 200)
    out.append(("f16/dk192_dv128/nq64/mask", q, k, v, _mask(rng, 64, 200), 1 / np.sqrt(192), 0.0))
    q, k, v = _qkv(rng, "f16", 192, 128, 130, 2, 100)
    out.append(("f16/dk192_dv128/nq130/nomask", q, k, v, None, 1 / np.sqrt(192), 0.0))
    q, k, v = _qkv(rng, "f32", 192, 128, 70, 1, 150)
    out.append(("f32/dk192_dv128/nq70/mask", q, k, v, _mask(rng, 70, 150), 1 / np.sqrt(192), 0.0))
    q, k, v = _qkv(rng, "f16", 192, 128, 65, 1, 190)
    out.append(("f16/dk192_dv128/nq65/mask/softcap", q, k, v, _mask(rng, 65, 190), 0.125, 30.0))
    if big:
        q, k, v = _qkv(rng, "f16", 576, 512, 64, 2, 150, shared=True)
        out.append(("f16/dk576_dv512/nq64/mask", q, k, v, _mask(rng, 64, 150), 1 / np.sqrt(192), 0.0))
        q, k, v = _qkv(rng, "f16", 576, 512, 100, 1, 64, shared=True)
        out.append(("f16/dk576_dv512/nq100/nomask", q, k, v, None, 1 / np.sqrt(192), 0.0))
        q, k, v = _qkv(rng, "f16", 192, 128, 300, 1, 320)
        out.append(("f16/dk192_dv128/nq300/mask", q, k, v, _mask(rng, 300, 320), 1 / np.sqrt(192), 0.0))
    return out


def _bits(t: Tensor) -> np.ndarray:
    return t.to_numpy().view(np.uint32)


def test_tiled_equals_upstream_ggml(ggml, rng, peer_plan):
    """Every case, at 1, 2, 3 and 4 threads (which change the rows each tile holds, not one bit: fa_tiled's
    "Rows are independent"), gives the model's bytes; the fully masked row gives zeros."""
    bad = []
    for name, q, k, v, mask, scale, softcap in _cases(rng):
        got = _bits(flash_attn_ext(q, k, v, mask, scale, 0.0, softcap, algorithm="tiled", plan=peer_plan))
        for nth in (1, 2, 3, 4):
            want = _bits(ggml_ops.flash_attn_ext(q, k, v, mask, scale, 0.0, softcap, n_threads=nth))
            if not np.array_equal(got, want):
                bad.append(f"{name}@{nth}: {int(np.sum(got != want))} words differ")
        if mask is not None:
            assert not got[0, 3].any()  # row 3 fully masked: S = 0 -> 1/S taken as 0
    assert not bad, bad


# The levels whose tiled path differs (fa_tiled.tiled_build: GEMM fused or not, soft_max's v_expf and width).
LEVELS = ["generic", "avx", "avx2", "avx512"]


@pytest.mark.parametrize("level", LEVELS)
def test_tiled_equals_upstream_ggml_at_each_level(rng, level, ggml_level):
    """Upstream ggml built at ``level`` gives the model's bytes with that level's plan (``GgmlBuild.vec_dot_plan``),
    at 1 and 3 threads; avx512 is run only where the CPU has it."""
    plan = ggml_level(level).vec_dot_plan
    cases = _cases(rng, big=False)
    calls = [("mlaref.codegen.peers.ggml_ops:flash_attn_ext", (q, k, v, m, sc, 0.0, cap), {"n_threads": nth})
             for _, q, k, v, m, sc, cap in cases for nth in (1, 3)]
    want = peer_build.call_many(level, calls)
    bad = []
    for i, (name, q, k, v, mask, scale, softcap) in enumerate(cases):
        got = _bits(flash_attn_ext(q, k, v, mask, scale, 0.0, softcap, algorithm="tiled", plan=plan))
        bad += [f"{name}@{nth}" for nth, w in zip((1, 3), want[2 * i:2 * i + 2]) if not np.array_equal(got, _bits(w))]
    assert not bad, f"plan {plan} differs from ggml level {level} on {bad}"


def test_tiled_is_not_the_one_chunk_order(rng):
    """The tiled and the one-chunk (generic) orders give different bytes on the same input (so matching upstream
    tells them apart), both within the NMSE bound of each other."""
    q, k, v = _qkv(rng, "f16", 192, 128, Q_TILE, 2, 100)
    mask = _mask(rng, Q_TILE, 100)
    tiled = flash_attn_ext(q, k, v, mask, 0.07, algorithm="tiled", plan="ggml_x86_avx2_znver3")
    generic = flash_attn_ext(q, k, v, mask, 0.07, algorithm="generic", plan="ggml_x86_avx2_znver3")
    assert not np.array_equal(_bits(tiled), _bits(generic))
    assert nmse(tiled.to_numpy(), generic.to_numpy()) < NMSE_FA


def test_tiled_build_differences_change_bytes(rng):
    """The build parameters the model reads (fused GEMM steps, soft_max's v_expf) each change some bytes."""
    q, k, v = _qkv(rng, "f16", 192, 128, Q_TILE, 1, 128)
    outs = {p: _bits(flash_attn_ext(q, k, v, None, 0.07, algorithm="tiled", plan=p))
            for p in ("ggml_generic", "ggml_x86_avx", "ggml_x86_avx2", "ggml_x86_avx512")}
    assert [tiled_build(get_plan(p))[:2] for p in outs] == [
        (False, "sse2"), (False, "sse2_avx"), (True, "avx2"), (True, "avx512")]
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(outs[a], outs[b]), (a, b)


def test_softcap_without_mask_weighs_stale_padding(ggml, rng, peer_plan):
    """Upstream oddity: with softcap and no mask, the padding of a partial last KV tile scores tanh(-inf)*softcap =
    -softcap, not -inf, so it takes weight exp(-softcap - M) on the previous tile's V rows. The model follows it
    (equal bytes), and with a small softcap the result is far from float64 attention."""
    q, k, v = _qkv(rng, "f16", 192, 128, Q_TILE, 1, 100)
    softcap, scale = 2.0, 0.1
    got = flash_attn_ext(q, k, v, None, scale, 0.0, softcap, algorithm="tiled", plan=peer_plan)
    assert np.array_equal(_bits(got), _bits(ggml_ops.flash_attn_ext(q, k, v, None, scale, 0.0, softcap)))
    qv, kv, vv = (t.to_numpy()[0, 0].astype(np.float64) for t in (q, k, v))
    s = softcap * np.tanh(qv @ kv.T * scale / softcap)
    e = np.exp(s - s.max(1, keepdims=True))
    exact = (e @ vv) / e.sum(1, keepdims=True)
    assert nmse(got.to_numpy()[0, :, 0], exact) > NMSE_FA


@pytest.mark.parametrize("plan", ["ggml_generic", "ggml_x86_avx2", "ggml_x86_avx512"])
def test_equal_scores_give_the_exact_mean(plan):
    """Identical K rows: every score equals, every weight is exp(0) = 1 in every exp, S = 100, and the small integer
    V values sum exactly in any order: out = mean(V) exactly (n_kv = 100: a partial second KV tile)."""
    n_kv, D = 100, 192
    kb = np.zeros((1, 1, n_kv, D), np.float32)
    kb[..., 0] = 1
    vals = np.random.default_rng(3).integers(-8, 9, size=(1, 1, n_kv, 128)).astype(np.float32)
    q = Tensor.from_numpy(np.ones((1, 1, Q_TILE, D), np.float32))
    got = flash_attn_ext(q, Tensor.from_numpy(kb, "f16"), Tensor.from_numpy(vals, "f16"), None, 0.5,
                         algorithm="tiled", plan=plan).to_numpy()[0, :, 0]
    mean = (vals[0, 0].sum(0) * np.float32(1 / np.float32(n_kv))).astype(np.float32)
    assert np.array_equal(got, np.broadcast_to(mean, got.shape))


@pytest.mark.parametrize(
    "what, message",
    [
        ("q8_0", "K and V both f16 or both f32"),
        ("mixed", "K and V both f16 or both f32"),
        ("dv", "Dv % GGML_F32_EPR == 0"),
    ],
)
def test_bad_inputs(rng, what, message):
    q, k, v = _qkv(rng, "f16", 192, 128, 4, 1, 32)
    if what == "q8_0":
        k, v = _qkv(rng, "q8_0", 192, 128, 4, 1, 32)[1:]
    elif what == "mixed":
        v = _qkv(rng, "f32", 192, 128, 4, 1, 32)[2]
    elif what == "dv":
        v = _qkv(rng, "f16", 192, 100, 4, 1, 32)[2]  # 100 % 8 != 0: upstream's one-chunk path
    with pytest.raises(ValueError, match=message):
        flash_attn_ext(q, k, v, None, 0.1, algorithm="tiled", plan="ggml_x86_avx2")
    if what == "dv":  # without GGML_SIMD there is no such gate
        assert flash_attn_ext(q, k, v, None, 0.1, algorithm="tiled", plan="ggml_generic").ne == (100, 1, 4, 1)
