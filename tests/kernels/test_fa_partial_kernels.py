"""flash_attn_ext_partial kernels (one KV chunk's acc, M, S, undivided) against reference/ops/fa_partial.py.

Bit-exact: every manifest kernel equals ``flash_attn_ext_partial(..., plan=p)`` on float32 bytes (acc, M and S of
every row) for 1, 2, 3 and 4 threads, under plans with the kernel's dot order that vary ``k_step`` (16, 32, 64) and
the exp (libm expf, the AVX2 and AVX-512 v_expf polynomials), with n_kv not a multiple of k_step, a query row whose
every cell is masked (acc 0, M -inf, S 0: checked as values too), a -0.0 mask entry (binary mask), K/V head
broadcast, (Dk, Dv) = (192, 128) and (576, 512) with V a view of K, a chunk no query sees (every row 0, -inf, 0),
and the chunk as the chunked graph sees it: K and V views of the chunk's cells inside a longer cache and the mask a
strided column block of the full mask. Outputs are NaN-poisoned with guard bytes after them. The partial's plan
ignores ``kv_chunks`` (its row is one chunk): case 0's plan has kv_chunks 3.
"""

import numpy as np
import pytest
from kernel_inputs import fa_kv as _kv
from kernel_inputs import fa_mask as _mask
from kernel_inputs import fa_q as _q
from kernel_inputs import guarded_f32 as _guarded

from mlaref.codegen.kernels import mm as KM
from mlaref.reference.ops.fa_partial import flash_attn_ext_partial as ref_partial
from mlaref.reference.tensor import Tensor

FAMILY = "flash_attn_ext_partial"
_REF_CACHE: dict = {}

# (Dk, Dv, nq, nh, nhk, n_kv, plan, scale, masked rows (row, lo, hi), -0.0 entry, V a view of K). A scale of 10
# spreads s - M over [-300, 0]: the v_expf paths for large |n|.
CASES = [
    (192, 128, 5, 2, 2, 70, KM.fa_plan(16, 3, "libm"), 0.125, [(1, 10, 40), (2, 0, 70)], True, False),
    (192, 128, 4, 2, 1, 67, KM.fa_plan(64, 1, "v_expf_avx2"), 0.125, None, False, False),
    (192, 128, 3, 1, 1, 48, KM.fa_plan(32, 1, "v_expf_avx512"), 10.0, [(0, 0, 16)], False, False),
    (576, 512, 3, 2, 1, 20, KM.fa_plan(16, 1, "libm"), 0.125, [(1, 3, 9)], False, True),
]


def _dots(plan, dots: str):
    return KM.fa_plan(plan.k_step, plan.kv_chunks, plan.exp, dots=dots)


def _case(type: str, i: int, dots: str):
    key = (type, i, dots)
    if key not in _REF_CACHE:
        Dk, Dv, nq, nh, nhk, n_kv, plan, scale, masked, negzero, view = CASES[i]
        plan = _dots(plan, dots)
        rng = np.random.default_rng(3000 + i + (7 if type == "q8_0" else 0))
        q = _q(rng, Dk, nq, nh)
        k = _kv(rng, type, (Dk, n_kv, nhk, 1))
        v = k.view((Dv, n_kv, nhk, 1), k.nb[1:], 0) if view else _kv(rng, type, (Dv, n_kv, nhk, 1))
        mask = None
        if masked is not None:
            mask = _mask(n_kv, 32, masked)
            if negzero:
                mask.storage()[0, 0, 3, 5] = 0x8000  # -0.0 masks the entry too
        want = ref_partial(q, k, v, mask, scale, plan=plan)
        _REF_CACHE[key] = (q, k, v, mask, plan, scale, want)
    return _REF_CACHE[key]



def test_partial_bit_exact(kernel_name, kt):
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    for i in range(len(CASES)):
        q, kk, v, mask, plan, scale, want = _case(k["type_x"], i, k["plan"])
        for n_threads in (1, 2, 3, 4):
            out, buf = _guarded(want.ne)
            got = KM.flash_attn_ext_partial(q, kk, v, mask, scale, plan=plan, kernel=kernel_name,
                                            n_threads=n_threads, q_block=2, out=out)
            assert np.all(buf[-64:] == 0xA5), f"{kernel_name}: the kernel wrote past the output"
            kt.assert_same_bytes(got.storage(), want.storage(), 4,
                                 f"{kernel_name} case {i} plan {plan.name} threads={n_threads}")


def test_partial_fully_masked_row_is_minus_inf_zero(kt):
    """Case 0's row (query 2, both heads) has every cell masked: acc = +0.0, M = -inf, S = +0.0 as values (the
    reference's definition, not only its bytes), on the dispatched kernel."""
    q, kk, v, mask, plan, scale, want = _case("f16", 0, "l16a1")
    got = KM.flash_attn_ext_partial(q, kk, v, mask, scale, plan=plan, n_threads=2)
    rows = got.storage().reshape(-1, got.ne[0])
    nh = q.ne[2]
    for h in range(nh):
        r = rows[2 * nh + h]
        assert np.all(r[:-2].view(np.uint32) == 0) and r[-2] == -np.inf and r[-1].view(np.uint32) == 0
    other = np.delete(rows, [2 * nh + h for h in range(nh)], axis=0)
    assert np.all(np.isfinite(other[:, -2])) and np.all(other[:, -1] > 0)


@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_partial_of_a_chunk_no_query_sees(type, kt):
    """A chunk whose every cell is masked for every query (causal attention's later chunks for early queries):
    every row is acc = +0.0, M = -inf, S = +0.0, on the dispatched and the scalar kernel, 1 and 3 threads (the avx2
    kernel then skips every KV block without reading K or V)."""
    rng = np.random.default_rng(88)
    q = _q(rng, 192, 5, 2)
    k, v = _kv(rng, type, (192, 40, 1, 1)), _kv(rng, type, (128, 40, 1, 1))
    mask = _mask(40, 32, [(r, 0, 40) for r in range(5)])
    want = ref_partial(q, k, v, mask, 0.1, plan=KM.FA_PLAN)
    rows = want.storage().reshape(-1, 130)
    assert np.all(rows[:, :128].view(np.uint32) == 0) and np.all(rows[:, 128] == -np.inf)
    assert np.all(rows[:, 129].view(np.uint32) == 0)
    for isa in (None, "scalar"):
        for n_threads in (1, 3):
            got = KM.flash_attn_ext_partial(q, k, v, mask, 0.1, isa=isa, n_threads=n_threads, q_block=2)
            kt.assert_same_bytes(got.storage(), want.storage(), 4, f"{type} {isa} threads={n_threads}")


@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_partial_of_a_chunk_inside_the_cache(type, kt):
    """The chunked graph's view of a chunk: K and V are the cells [40, 104) of a 160-cell cache (views with an
    offset), the mask the columns [40, 104) of the full [160, 32] mask (a strided view, not contiguous), 2 query
    heads on 1 KV head; the dispatched and the scalar kernel, 1 and 3 threads, l16a1 and this CPU's native dots."""
    rng = np.random.default_rng(77)
    n_full, c0, n = 160, 40, 64
    q = _q(rng, 192, 6, 2)
    kf, vf = _kv(rng, type, (192, n_full, 1, 1)), _kv(rng, type, (128, n_full, 1, 1))
    k = kf.view((192, n, 1, 1), kf.nb[1:], c0 * kf.nb[1])
    v = vf.view((128, n, 1, 1), vf.nb[1:], c0 * vf.nb[1])
    full = _mask(n_full, 32, [(1, 0, 90), (3, 50, 160), (5, 0, 160)])
    mask = full.view((n, 32, 1, 1), full.nb[1:], c0 * full.nb[0])
    assert not mask.is_contiguous()
    for plan in (KM.fa_plan(32, 1, "v_expf_avx2"), KM.fastest_fa_plan(None, 32, 1, "v_expf_avx2")):
        want = ref_partial(q, k, v, mask, 0.1, plan=plan)
        rows = want.storage().reshape(-1, 130)
        assert rows[5 * 2][-2] == -np.inf and rows[1 * 2][-2] > -np.inf  # query 5 closed, query 1 partly open
        for isa in (None, "scalar"):
            for n_threads in (1, 3):
                got = KM.flash_attn_ext_partial(q, k, v, mask, 0.1, plan=plan, isa=isa, n_threads=n_threads,
                                                q_block=4)
                kt.assert_same_bytes(got.storage(), want.storage(), 4, f"{type} {plan.name} {isa} {n_threads}")


def test_partial_rejects_bad_arguments(rng):
    q = _q(rng, 192, 3, 2)
    k, v = _kv(rng, "f16", (192, 40, 2, 1)), _kv(rng, "f16", (128, 40, 2, 1))
    with pytest.raises(ValueError, match="Dk"):
        KM.flash_attn_ext_partial(_q(rng, 128, 3, 2), k, v, None, 0.1)
    with pytest.raises(ValueError, match="same type"):
        KM.flash_attn_ext_partial(q, k, _kv(rng, "q8_0", (128, 40, 2, 1)), None, 0.1)
    with pytest.raises(ValueError, match="n_cells = 40"):
        KM.flash_attn_ext_partial(q, k, v, _mask(48, 32), 0.1)  # the mask must have exactly the chunk's cells
    with pytest.raises(ValueError, match="n_q = 3"):
        KM.flash_attn_ext_partial(q, k, v, _mask(40, 2), 0.1)
    with pytest.raises(ValueError, match="mask type"):
        KM.flash_attn_ext_partial(q, k, v, Tensor.zeros("f32", (40, 32, 1, 1)), 0.1)
    with pytest.raises(ValueError, match="head broadcast"):
        KM.flash_attn_ext_partial(_q(rng, 192, 3, 3), k, v, None, 0.1)
    with pytest.raises(TypeError, match="scale"):
        KM.flash_attn_ext_partial(q, k, v, None, True)
    with pytest.raises(ValueError, match="x86"):
        KM.flash_attn_ext_partial(q, k, v, None, 0.1, variant="ref")
    with pytest.raises(ValueError, match="mlaref_l16a1"):
        KM.flash_attn_ext_partial(q, k, v, None, 0.1, plan="ggml_generic")
    with pytest.raises(ValueError, match="q_block"):
        KM.flash_attn_ext_partial(q, k, v, None, 0.1, q_block=0)
    with pytest.raises(ValueError, match="n_threads"):
        KM.flash_attn_ext_partial(q, k, v, None, 0.1, n_threads=0)
    with pytest.raises(ValueError, match=r"out must be f32 with ne \(130, 2, 3, 1\)"):
        KM.flash_attn_ext_partial(q, k, v, None, 0.1, out=Tensor.zeros("f32", (128, 2, 3, 1)))
    with pytest.raises(ValueError, match="at least one KV cell"):
        KM.flash_attn_ext_partial(q, k.view((192, 0, 2, 1), k.nb[1:], 0), v.view((128, 0, 2, 1), v.nb[1:], 0),
                                  None, 0.1)
    with pytest.raises(TypeError, match="Tensor"):
        KM.flash_attn_ext_partial(q.to_numpy(), k, v, None, 0.1)
    with pytest.raises(Exception, match="computes flash_attn_ext f16"):
        KM.flash_attn_ext_partial(q, k, v, None, 0.1, kernel="mlaref_flash_attn_ext_f16_f16__scalar_l16a1")
