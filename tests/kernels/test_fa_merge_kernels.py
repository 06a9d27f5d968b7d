"""fa_merge kernels (the chunked variant's fixed-order merge of partials, and the final division) against
reference/ops/fa_partial.py and against flash_attn_ext's own chunk merge.

Bit-exact, every manifest kernel, 1 to 4 threads, NaN-poisoned outputs with guard bytes after them:

* against the reference ``fa_merge`` on constructed partials: Dv of 1, 15, 16, 17, 40, 128 and 512 (the 16-lane
  vectors, their tails, the MLA heads), rows with M = -inf (every cell masked) in a, in b and in both, S = 0 with
  a finite M (the final division gives 0), -0.0 in acc, merges kept partial (``final=False``) and final, and a
  single partial finalised (``b=None``);
* a chain of 3 chunk partials (the partial kernels on K/V views of the chunks and the mask's column blocks)
  merged left to right equals the blocked ``flash_attn_ext`` kernel with ``kv_chunks=3`` (whose C merges the
  same chunks inside) and the reference, byte for byte, for f16 and q8_0 K/V, with a row whose first chunk is
  fully masked.
"""

import numpy as np
import pytest
from kernel_inputs import fa_kv as _kv
from kernel_inputs import fa_mask as _mask
from kernel_inputs import fa_q as _q
from kernel_inputs import guarded_f32 as _guarded

from mlaref.codegen.kernels import mm as KM
from mlaref.reference.ops.fa_partial import fa_merge as ref_merge
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext as ref_fa
from mlaref.reference.tensor import Tensor

FAMILY = "fa_merge"
DVS = (1, 15, 16, 17, 40, 128, 512)


def _partial(rng, Dv: int, rows: int, dead, s_zero) -> Tensor:
    """A partial [Dv + 2, rows, 1, 1]: acc normal (a -0.0 in row 0), M in [-4, 4], S in (0.5, 20); rows in ``dead``
    have M = -inf, S = 0, acc = 0 (every cell masked); rows in ``s_zero`` have S = 0 and a finite M."""
    x = np.empty((rows, Dv + 2), np.float32)
    x[:, :Dv] = rng.standard_normal((rows, Dv)) * 3
    x[0, 0] = -0.0
    x[:, Dv] = rng.uniform(-4, 4, rows)
    x[:, Dv + 1] = rng.uniform(0.5, 20, rows)
    for r in dead:
        x[r] = 0
        x[r, Dv] = -np.inf
    for r in s_zero:
        x[r, Dv + 1] = 0
    return Tensor.from_numpy(x.reshape(1, 1, rows, Dv + 2))



def test_merge_bit_exact(kernel_name, kt):
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    rng = np.random.default_rng(505)
    rows = 9
    for Dv in DVS:
        a = _partial(rng, Dv, rows, dead=(1, 3), s_zero=())
        b = _partial(rng, Dv, rows, dead=(2, 3), s_zero=(5,))
        a.storage().reshape(rows, -1)[5, Dv + 1] = 0  # row 5: S = 0 on both sides, M finite: final gives 0
        for bb, final in ((b, False), (b, True), (None, True)):
            want = ref_merge(a, bb, final)
            for n_threads in (1, 2, 3, 4):
                out, buf = _guarded(want.ne)
                got = KM.fa_merge(a, bb, final, kernel=kernel_name, n_threads=n_threads, out=out)
                assert np.all(buf[-64:] == 0xA5), f"{kernel_name}: the kernel wrote past the output"
                kt.assert_same_bytes(got.storage(), want.storage(), 4,
                                     f"{kernel_name} Dv={Dv} b={'yes' if bb is not None else 'no'} final={final} "
                                     f"threads={n_threads}")
        if Dv == 40:  # the facts the cases are built for, as values
            m = ref_merge(a, b, False).storage().reshape(rows, -1)
            assert m[3, Dv] == -np.inf and m[3, Dv + 1] == 0 and np.isfinite(m[1, Dv]) and np.isfinite(m[2, Dv])
            f = ref_merge(a, b, True).storage().reshape(rows, -1)
            assert np.all(f[3] == 0) and np.all(f[5] == 0) and np.all(np.isfinite(f))


@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_merge_chain_of_3_chunks_equals_flash_attn_kv_chunks_3(kernel_name, kt, type):
    """partial(chunk 0..2) merged left to right = flash_attn_ext(plan kv_chunks=3): the chunks are the plan's
    [n_kv*c/3, n_kv*(c+1)/3) (23, 23 and 24 cells of 70); row 1's mask closes chunk 0 entirely."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    rng = np.random.default_rng(606 + (1 if type == "q8_0" else 0))
    Dk, Dv, nq, nh, n_kv = 192, 128, 5, 2, 70
    q = _q(rng, Dk, nq, nh)
    kk, v = _kv(rng, type, (Dk, n_kv, 1, 1)), _kv(rng, type, (Dv, n_kv, 1, 1))
    mask = _mask(n_kv, 32, [(1, 0, 30), (3, 40, 70)])
    plan = KM.fastest_fa_plan(None, 16, 3, "libm")
    parts = []
    for c in range(3):
        lo, hi = n_kv * c // 3, n_kv * (c + 1) // 3
        kc = kk.view((Dk, hi - lo, 1, 1), kk.nb[1:], lo * kk.nb[1])
        vc = v.view((Dv, hi - lo, 1, 1), v.nb[1:], lo * v.nb[1])
        mc = mask.view((hi - lo, 32, 1, 1), mask.nb[1:], lo * mask.nb[0])
        parts.append(KM.flash_attn_ext_partial(q, kc, vc, mc, 0.125, plan=plan, n_threads=2))
    assert parts[0].storage().reshape(-1, Dv + 2)[1 * nh, Dv] == -np.inf  # row 1 (head 0) saw no cell of chunk 0
    want = KM.flash_attn_ext(q, kk, v, mask, 0.125, plan=plan, n_threads=2)
    ref = ref_fa(q, kk, v, mask, 0.125, algorithm="blocked", plan=plan)
    kt.assert_same_bytes(want.storage(), ref.storage(), 4, f"{type}: flash_attn_ext kernel vs reference")
    for n_threads in (1, 3):
        m = KM.fa_merge(parts[0], parts[1], False, kernel=kernel_name, n_threads=n_threads)
        out, buf = _guarded(want.ne)
        got = KM.fa_merge(m, parts[2], True, kernel=kernel_name, n_threads=n_threads, out=out)
        assert np.all(buf[-64:] == 0xA5)
        kt.assert_same_bytes(got.storage(), want.storage(), 4, f"{kernel_name} {type} threads={n_threads}")


def test_merge_rejects_bad_arguments(rng):
    a = _partial(rng, 16, 4, (), ())
    b = _partial(rng, 16, 4, (), ())
    with pytest.raises(ValueError, match="only be finalised"):
        KM.fa_merge(a, None, False)
    with pytest.raises(ValueError, match="same shape"):
        KM.fa_merge(a, _partial(rng, 16, 5, (), ()), True)
    with pytest.raises(ValueError, match="a type must be one of f32"):
        KM.fa_merge(Tensor.zeros("f16", (18, 4, 1, 1)), None, True)
    with pytest.raises(ValueError, match="contiguous partial"):
        KM.fa_merge(a.view((16, 4, 1, 1), a.nb[1:], 0), None, True)
    with pytest.raises(ValueError, match="contiguous partial"):
        KM.fa_merge(Tensor.zeros("f32", (2, 4, 1, 1)), None, True)
    with pytest.raises(TypeError, match="final must be a bool"):
        KM.fa_merge(a, b, 1)
    with pytest.raises(TypeError, match="Tensor"):
        KM.fa_merge(a, b.to_numpy(), True)
    with pytest.raises(ValueError, match=r"out must be f32 with ne \(16, 4, 1, 1\)"):
        KM.fa_merge(a, b, True, out=Tensor.zeros("f32", (18, 4, 1, 1)))
    with pytest.raises(ValueError, match="overlaps the input a"):
        KM.fa_merge(a, b, False, out=a)
    with pytest.raises(ValueError, match="n_threads"):
        KM.fa_merge(a, b, True, n_threads=0)
    with pytest.raises(Exception, match="computes flash_attn_ext"):
        KM.fa_merge(a, b, True, kernel="mlaref_flash_attn_ext_f16_f16__scalar_l16a1")
