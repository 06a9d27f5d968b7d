"""flash_attn_ext algorithm="iqk2026" (reference/ops/fa_iqk2026.py): properties checked independently of the code
under test — float64 attention within a stated NMSE, masked entries ignored, the block-skip rule, V as a view of K,
thread-count (in)dependence, the blocking tables read off the source, the q8_2 quantizer and the FMA helper on
hand-checked values, and the documented refusals. (Its bit-exactness against the real ik build is recorded in
docs/facts/ik-snapshot-fa.md; the library is not called here.)"""

import numpy as np
import pytest

from mlaref.reference import fp
from mlaref.reference.compare import nmse
from mlaref.reference.ops import fa_iqk2026 as iqk
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.tensor import Tensor

# Measured against float64 on these inputs: f16 K/V <= 2.5e-13, q8_0 K/V <= 3.1e-5 (q quantized to q8_2 with bf16
# scales). Bounds: ggml's default 1e-7 for the f16 path, test-backend-ops' 5e-4 for flash_attn_ext with quants.
NMSE = {"f16": 1e-7, "q8_0": 5e-4}
GEOMS = {"192/128": (192, 128, 2, 2, False), "576/512": (576, 512, 4, 1, True)}  # Dk, Dv, heads, kv heads, V view


def _inputs(rng, kvt, geom, nq, n_kv, mask_kind="causal"):
    Dk, Dv, nh, nhk, view = GEOMS[geom]
    q = Tensor.from_numpy(rng.standard_normal((1, nh, nq, Dk)).astype(np.float32))
    k = Tensor.from_numpy(rng.standard_normal((1, nhk, n_kv, Dk)).astype(np.float32), kvt)
    if view:
        v = k.view((Dv, n_kv, nhk, 1), k.nb[1:], 0)
    else:
        v = Tensor.from_numpy(rng.standard_normal((1, nhk, n_kv, Dv)).astype(np.float32), kvt)
    npad = -(-nq // 16) * 16
    m = np.zeros((npad, n_kv), np.float32)
    if mask_kind == "causal":  # column j of row i masked when j > n_kv - nq + i; column 0 always open
        i, j = np.arange(npad)[:, None], np.arange(n_kv)[None, :]
        m[j > n_kv - nq + np.minimum(i, nq - 1)] = -np.inf
        m[:, 0] = 0
    return q, k, v, Tensor.from_numpy(m, "f16"), 1.0 / np.sqrt(Dk)


def _float64_attention(q, k, v, mask, scale):
    """softmax(scale·(Q·Kᵀ + mask))·V in float64 on the stored K/V values; rows (nq, nh, Dv)."""
    Q = q.to_numpy()[0].astype(np.float64)            # (nh, nq, Dk)
    K = k.to_numpy()[0].astype(np.float64)            # (nhk, n_kv, Dk)
    V = v.to_numpy()[0].astype(np.float64)
    nh, nq = Q.shape[:2]
    m = mask.to_numpy()[0, 0, :nq, : K.shape[1]].astype(np.float64)
    out = np.empty((nq, nh, V.shape[2]))
    for h in range(nh):
        g = h // (nh // K.shape[0])
        s = scale * (Q[h] @ K[g].T + m)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h] = (p / p.sum(axis=1, keepdims=True)) @ V[g]
    return out


def _run(q, k, v, m, scale, nth=1):
    return flash_attn_ext(q, k, v, m, scale, algorithm="iqk2026", n_threads=nth)


@pytest.mark.parametrize("kvt", ["f16", "q8_0"])
@pytest.mark.parametrize("geom", list(GEOMS))
@pytest.mark.parametrize("nq,n_kv", [(1, 128), (8, 96), (20, 256)])
def test_matches_float64_attention(rng, kvt, geom, nq, n_kv):
    q, k, v, m, scale = _inputs(rng, kvt, geom, nq, n_kv)
    got = _run(q, k, v, m, scale).to_numpy()[0]
    err = nmse(got, _float64_attention(q, k, v, m, scale))
    assert err < NMSE[kvt], err


@pytest.mark.parametrize("kvt", ["f16", "q8_0"])
def test_masked_entries_do_not_matter(rng, kvt):
    """Changing K and V where every query row is masked leaves the bytes unchanged (V in those rows gets p = 0,
    K gives s = -inf). Causal mask plus KV columns 40..49 masked for all rows."""
    q, k, v, m, scale = _inputs(rng, kvt, "192/128", 16, 128)
    mm = m.to_numpy()[0, 0].copy()
    mm[:, 40:50] = -np.inf
    m = Tensor.from_numpy(mm, "f16")
    dead = np.nonzero(np.all(mm[:16] == -np.inf, axis=0))[0]
    assert dead.size == 10
    base = _run(q, k, v, m, scale).raw()
    k2 = k.to_numpy()[0].copy()
    v2 = v.to_numpy()[0].copy()
    k2[:, dead] = rng.standard_normal((k2.shape[0], dead.size, k2.shape[2])) * 5
    v2[:, dead] = rng.standard_normal((v2.shape[0], dead.size, v2.shape[2])) * 5
    alt = _run(q, Tensor.from_numpy(k2[None], kvt), Tensor.from_numpy(v2[None], kvt), m, scale).raw()
    assert np.array_equal(base, alt)


def test_block_skip_rule_ignores_entries_the_last_row_skips(rng):
    """Documented oddity: per chunk of q_step rows upstream probes only the chunk's last row at the first column of
    each k_step block, from the end. With 192 KV rows k_step is 64; the last of 8 rows masks column 64 (the start
    of block 1) and everything after, while the other rows keep it all open: they must equal the rows with columns
    64.. masked explicitly."""
    q, k, v, m, scale = _inputs(rng, "f16", "192/128", 8, 192, mask_kind="open")
    mm = m.to_numpy()[0, 0].copy()
    mm[7, 64:] = -np.inf
    got = _run(q, k, v, Tensor.from_numpy(mm, "f16"), scale).raw()
    mm2 = mm.copy()
    mm2[:8, 64:] = -np.inf
    want = _run(q, k, v, Tensor.from_numpy(mm2, "f16"), scale).raw()
    assert np.array_equal(got, want)
    ref = _float64_attention(q, k, v, Tensor.from_numpy(mm, "f16"), scale)
    assert nmse(got.view(np.float32).reshape(ref.shape)[0], ref[0]) > 1e-4  # a real difference from the math


@pytest.mark.parametrize("kvt", ["f16", "q8_0"])
def test_v_view_equals_v_copy(rng, kvt):
    """MLA: V as a view of K's first 512 columns gives the bytes of V as its own tensor holding those bytes."""
    q, k, v, m, scale = _inputs(rng, kvt, "576/512", 4, 64)
    vcopy = v.copy()
    assert vcopy.nb != v.nb
    assert np.array_equal(_run(q, k, v, m, scale).raw(), _run(q, k, vcopy, m, scale).raw())


@pytest.mark.parametrize("kvt", ["f16", "q8_0"])
def test_prompt_processing_is_thread_independent(rng, kvt):
    """With several query rows every thread count gives the same bytes (threads split heads / query rows)."""
    q, k, v, m, scale = _inputs(rng, kvt, "576/512", 8, 128)
    outs = [_run(q, k, v, m, scale, nth).raw() for nth in (1, 2, 3, 4)]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_mla_decode_depends_on_threads_but_stays_accurate(rng):
    """One query row, one KV head: the KV range is split by thread and merged; the bytes may change with the
    thread count, each within the bound."""
    q, k, v, m, scale = _inputs(rng, "f16", "576/512", 1, 256)
    assert iqk.thread_path(1, 4, 1, 1, 1, 256, 2) == "mla_split"
    ref = _float64_attention(q, k, v, m, scale)
    outs = {nth: _run(q, k, v, m, scale, nth).to_numpy()[0] for nth in (1, 2)}
    assert all(nmse(o, ref) < NMSE["f16"] for o in outs.values())


def test_thread_paths():
    """The branch table of iqk_flash_attn_noalibi (iqk_flash_attn.cpp:262, :310, :381, :456)."""
    assert iqk.thread_path(1, 16, 1, 1, 1, 512, 2) == "mla_split"   # 16 steps of 32 >= 4·2
    assert iqk.thread_path(1, 16, 1, 1, 1, 96, 1) == "mla_gcd"      # 3 steps < 4
    assert iqk.thread_path(1, 4, 1, 2, 2, 256, 2) == "gqa_chunks"   # two KV heads
    assert iqk.thread_path(1, 4, 1, 4, 4, 256, 2) == "heads"        # no head sharing
    assert iqk.thread_path(8, 16, 1, 1, 1, 512, 2) == "heads"       # several queries


def test_blocking_tables():
    """k_step and q_step read off fa/iqk_fa_192_128.cpp:31-41, fa/iqk_fa_576_512.cpp:23-51, 119 and
    fa/iqk_fa_templates.h:2054-2105."""
    assert [iqk.k_step_for(192, 128, n) for n in (256, 320, 96)] == [128, 64, 32]
    assert iqk.k_step_for(576, 512, 512) == 32
    assert iqk.q_steps(192, 128, 512, 512) == [(64, 512)]
    assert iqk.q_steps(192, 128, 200, 512) == [(64, 128), (64, 64), (8, 8)]
    assert iqk.q_steps(192, 128, 200, 256) == [(8, 200)]
    assert iqk.q_steps(192, 128, 12, 256) == [(12, 12)]
    assert iqk.q_steps(192, 128, 7, 256) == [(4, 4), (1, 3)]
    assert iqk.q_steps(192, 128, 1, 256) == [(1, 1)]
    assert iqk.q_steps(576, 512, 31, 256) == [(16, 16), (8, 8), (4, 4), (3, 3)]
    assert iqk.q_steps(576, 512, 4, 4096) == [(4, 4)]


def test_quantize_q8_2_hand_checked():
    """One block 0..31 (amax 31): d = bf16(31/127) = 0x3E7A -> 0.244140625; q = rint(x / d) with 1/d = 4.096."""
    x = np.arange(32, dtype=np.float32)[None, :]
    d, qs = iqk.quantize_q8_2(x)
    assert d.shape == (1, 1) and d[0, 0] == np.float32(0.244140625)
    assert fp.f32_to_bf16(np.float32(31) / np.float32(127)) == 0x3E7A
    assert qs[0, 0, 1] == 4 and qs[0, 0, 5] == 20 and qs[0, 0, 31] == 127  # 1·4.096, 5·4.096 = 20.48, 126.98
    d0, q0 = iqk.quantize_q8_2(np.zeros((1, 32), np.float32))
    assert d0[0, 0] == 0 and not q0.any()


def test_fma_helper_matches_exact_fma(rng):
    """The fast FMA against fp.fmaf on random values and on constructed double-rounding cases."""
    a = rng.standard_normal(200_000).astype(np.float32)
    b = rng.standard_normal(200_000).astype(np.float32)
    c = (rng.standard_normal(200_000) * 1e3).astype(np.float32)
    assert np.array_equal(iqk._fma(a, b, c), fp.fmaf(a, b, c))
    # a·b = 1 + 2^-24 + 2^-47 (exact), c = 2^-70: the float64 sum lands on the float32 midpoint 1 + 2^-24
    a1 = np.float32(1 + 2.0 ** -23)
    b1 = np.float32(1 + 2.0 ** -24 * 0 + 2.0 ** -24)
    cases = np.array([[a1, b1, -2.0 ** -80], [a1, b1, 2.0 ** -80], [1.0, 1.0 + 2.0 ** -23, -2.0 ** -140]], np.float32)
    assert np.array_equal(iqk._fma(*cases.T), fp.fmaf(*cases.T))


def test_kq_f16_two_chains():
    """kq_f16 = chain over indices ≡ 0..3 (mod 8) + chain over ≡ 4..7, each fmaf in index order: a scalar loop."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal((3, 32)).astype(np.float32)
    kf = fp.f16_to_f32(fp.f32_to_f16(rng.standard_normal((5, 32)).astype(np.float32)))
    got = iqk.kq_f16(q, kf)
    for r in range(3):
        for n in range(5):
            a = b = np.float32(0)
            for i in range(32):
                if i % 8 < 4:
                    a = fp.fmaf(q[r, i], kf[n, i], a)
                else:
                    b = fp.fmaf(q[r, i], kf[n, i], b)
            assert got[r, n] == np.float32(a + b)


def test_refusals(rng):
    q, k, v, m, scale = _inputs(rng, "f16", "192/128", 8, 64)
    short = Tensor.from_numpy(m.to_numpy()[0, 0, :8], "f16")  # 8 rows: not padded to GGML_KQ_MASK_PAD = 16
    with pytest.raises(ValueError, match="GGML_PAD"):
        _run(q, k, v, short, scale)
    with pytest.raises(ValueError, match="needs a mask"):
        _run(q, k, v, None, scale)
    allmasked = Tensor.from_numpy(np.full((16, 64), -np.inf, np.float32), "f16")
    with pytest.raises(ValueError, match="S = 0"):
        _run(q, k, v, allmasked, scale)
    q2, k2, v2, m2, _ = _inputs(rng, "f16", "192/128", 8, 80)
    with pytest.raises(ValueError, match="n_kv % 32"):
        _run(q2, k2, v2, m2, scale)
    with pytest.raises(NotImplementedError):
        flash_attn_ext(q, k, v, m, scale, softcap=30.0, algorithm="iqk2026")
    with pytest.raises(ValueError, match="n_threads applies"):
        flash_attn_ext(q, k, v, m, scale, algorithm="generic", n_threads=2)
