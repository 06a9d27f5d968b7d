"""NEON mul_mat, flash_attn_ext(_partial) and fa_merge kernels, cross-compiled and run under qemu-aarch64.

The same cases as the x86 kernels (test_mul_mat_kernels.py, test_flash_attn_kernels.py), on smaller shapes
where they allow it (qemu is slow): ragged last steps, odd 32-block and super-block pairs, src0 broadcast, strided
src1 and src0 views, 2 x 2 tile edges and column blocks, masks with -inf rows and -0.0 entries, softcap, every
exp, kv_chunks, q8_0 K/V, (192, 128) and (576, 512) with V a view of K. Bit-exact means equal float32 bytes.

A kernel is one thread's part. The arguments of each part are those :mod:`mlaref.codegen.kernels.mm` hands the
thread pool for the same call (taken from its jobs for the scalar kernel of the type pair), so the split into 1
or 3 parts is the one a 3-thread call makes; the parts run one after another under qemu on the same buffers.
Outputs are NaN-poisoned with guard bytes after them. Tests skip, naming the missing tool, without
aarch64-linux-gnu-gcc or qemu-aarch64.
"""

import zlib

import numpy as np
import pytest
from kernel_inputs import fa_kv as _kv
from kernel_inputs import fa_mask as _mask
from kernel_inputs import fa_q as _q
from kernel_inputs import mm_tensor as _tensor
from kernel_inputs import mm_values as _values

from mlaref.codegen import build, catalog
from mlaref.codegen.kernels import mm as KM
from mlaref.codegen.kernels import pool
from mlaref.reference.ops.fa_partial import fa_merge as ref_merge
from mlaref.reference.ops.fa_partial import flash_attn_ext_partial as ref_partial
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext as ref_fa
from mlaref.reference.ops.mul_mat import MulMat_253
from mlaref.reference.tensor import Tensor

FAMILY = "mul_mat"  # kernel_name parameters; the flash_attn_ext kernels are few, each test below runs them all
NATIVE_ONLY = False
ISAS = ("neon", "neondot")
_REF_CACHE: dict = {}


def _scalar_twin(name: str) -> str:
    s = catalog.by_name()[name]
    return catalog.by_key()[(s.family, s.type_x, s.type_y, s.plan)]["scalar"].name


def _run_neon(name: str, jobs, inputs, out: Tensor) -> list[int]:
    """Run the pool ``jobs`` (built for the scalar twin) with kernel ``name`` under qemu: pointer words become the
    inputs' bytes (from each tensor's first byte) and the output buffer; returns the kernels' return values."""
    n_in = len(inputs)
    blobs, calls = [], []
    for t in inputs:
        blobs.append(None if t is None else t.data[t.offset:].tobytes())
    for row in jobs:
        args = row[2:]
        for t, w in zip(inputs, args[:n_in]):
            assert w == (0 if t is None else pool.address(t.data) + t.offset)
        assert args[n_in] == pool.address(out.data) + out.offset
        n_args = {"mul_mat": 20, "flash_attn_ext": 35, "flash_attn_ext_partial": 35,
                  "fa_merge": 7}[catalog.by_name()[name].family]
        calls.append(args[n_in + 1:n_args])
    rcs, after = build.run_cross_kernel(name, blobs, out.data[out.offset:].tobytes(), calls)
    out.data[out.offset:] = np.frombuffer(after, np.uint8)
    return rcs


def _guarded_out(ne) -> tuple[Tensor, np.ndarray]:
    """A NaN-poisoned contiguous f32 output followed by 64 guard bytes."""
    n = int(np.prod(ne)) * 4
    buf = np.full(n + 64, 0xA5, np.uint8)
    buf[:n] = 0xFF
    return Tensor("f32", ne, (4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2]), buf), buf


# -- mul_mat -----------------------------------------------------------------------------------------------------


def _mm_cases(tx: str, ty: str):
    """(K, a.ne, b.ne, src1 row length, src0 row length): a ragged last step (37 elements: 2 steps + 5; 3 blocks:
    an odd pair; 3 super-blocks), src0 broadcast (r2 = 2; r2 = r3 = 2), strided src1 and src0 views; 5, 7 and
    9 rows and columns leave 2 x 2 tile edges."""
    block = tx not in ("f32", "f16", "bf16") or ty == "q8_0"
    k_tail, k_real = (96, 192) if block else (37, 200)
    if tx in ("q4_K", "q6_K"):
        k_tail, k_real = 768, 512
    a_pad = 256 if tx in ("q4_K", "q6_K") else 64
    return [
        (k_tail, (k_tail, 7, 1, 1), (k_tail, 9, 2, 1), None, None),
        (k_real, (k_real, 5, 2, 1), (k_real, 3, 2, 2), None, None),
        (k_real, (k_real, 6, 1, 1), (k_real, 5, 1, 1), k_real + 64, k_real + a_pad),
    ]


def _mm_ref(tx, ty, case):
    key = ("mm", tx, ty, case)
    if key not in _REF_CACHE:
        K, ane, bne, row_len, a_row_len = _mm_cases(tx, ty)[case]
        r = np.random.default_rng(zlib.crc32(repr(key).encode()))
        a = _tensor(_values(r, int(np.prod(ane[1:])), K), tx, ane, a_row_len)
        b = _tensor(_values(r, int(np.prod(bne[1:])), K), ty, bne, row_len)
        _REF_CACHE[key] = (a, b, MulMat_253(plan="mlaref_l16a1", variant="x86")(a, b))
    return _REF_CACHE[key]


def _neon_mul_mat(name, a, b, want, n_threads, kt, what):
    out, buf = _guarded_out(want.ne)
    jobs = KM.mul_mat_jobs(a, b, out, kernel=_scalar_twin(name), n_threads=n_threads)
    assert _run_neon(name, jobs, [a, b], out) == [0] * len(jobs)
    assert np.all(buf[-64:] == 0xA5), f"{name}: the kernel wrote past the output"
    kt.assert_same_bytes(out.storage(), want.storage(), 4, f"{name} {what} parts={len(jobs)} (qemu-aarch64)")


def test_neon_mul_mat_bit_exact(kernel_name, driver, kt):
    k = kt.manifest_kernels()[kernel_name]
    for case in range(3):
        a, b, want = _mm_ref(k["type_x"], k["type_y"], case)
        for n_threads in (1, 3):
            _neon_mul_mat(kernel_name, a, b, want, n_threads, kt, f"case {case} a{a.ne} b{b.ne}")


@pytest.mark.parametrize("tx, ty", [("f16", "f16"), ("f32", "bf16"), ("q8_0", "q8_0"), ("iq4_nl", "f16"),
                                    ("q5_1", "f32"), ("q4_K", "f16")])
def test_neon_mul_mat_tile_edges(tx, ty, driver, kt):
    """Register and cache tiles at their edges: 5 rows (two 2 x 2 row pairs and a lone row), 261 src1 columns (the
    128- and 256-column blocks and a lone last column), a ragged last step, a strided src1."""
    block = tx not in ("f32", "f16", "bf16") or ty == "q8_0"
    K = 512 if tx == "q4_K" else (96 if block else 40)
    r = np.random.default_rng(zlib.crc32(repr(("edges", tx, ty)).encode()))
    a = _tensor(_values(r, 5, K), tx, (K, 5, 1, 1))
    b = _tensor(_values(r, 261, K), ty, (K, 261, 1, 1), row_len=K + 32)
    want = MulMat_253(plan="mlaref_l16a1", variant="x86")(a, b)
    for isa in ISAS:
        name = catalog.by_key()[("mul_mat", tx, ty, "l16a1")].get(isa)
        if name is not None:
            _neon_mul_mat(name.name, a, b, want, 1, kt, "edges")


def test_neon_mul_mat_q8_0_src1_holding_minus_128(driver, kt, rng):
    """Outside the valid domain: a q8_0 src1 value of -128. NEON's widening products (and sdot) multiply true
    integers, so both NEON kernels give the reference's bytes, like scalar and avx512vnni."""
    K = 64
    a = _tensor(_values(rng, 6, K), "q8_0", (K, 6, 1, 1))
    b = _tensor(_values(rng, 5, K), "q8_0", (K, 5, 1, 1))
    raw = b.storage()[0, 0]
    raw[1, 2:34] = 0x80
    raw[3, 40] = 0x80
    want = MulMat_253(plan="mlaref_l16a1")(a, b)
    for isa in ISAS:
        _neon_mul_mat(f"mlaref_mul_mat_q8_0_q8_0__{isa}_l16a1", a, b, want, 1, kt, "-128 in src1")


# -- flash_attn_ext ----------------------------------------------------------------------------------------------


# (Dk, Dv, nq, nh, nhk, n_kv, plan, scale, softcap, masked rows (row, lo, hi), -0.0 entry, q_block), as the x86
# test's CASES: a first KV block fully masked for one row, softcap, K/V head broadcast, every exp (a scale of 10
# reaches the v_expf paths for |n| > 126 and > 192), kv_chunks 1-3, n_kv off the k_step grid, (Dk, Dv) = (192,
# 128), (128, 128), (576, 512); and the tile edges: a ragged Dk / Dv tail (100 / 40), an odd q8_0 block pair
# (Dk 96), V a view of K (576 / 512)
CASES = [
    (192, 128, 5, 2, 2, 70, KM.fa_plan(16, 1, "libm"), 0.125, 0.0, [(1, 10, 40), (2, 0, 64)], True, 2),
    (192, 128, 5, 2, 2, 70, KM.fa_plan(32, 3, "v_expf_avx512"), 0.125, 30.0, [(1, 10, 40), (2, 0, 64)], True, 2),
    (192, 128, 4, 2, 1, 67, KM.fa_plan(64, 2, "v_expf_avx2"), 0.125, 0.0, None, False, 3),
    (128, 128, 3, 1, 1, 33, KM.fa_plan(64, 1, "libm"), 0.125, 0.0, [(0, 0, 32)], False, 2),
    (192, 128, 3, 1, 1, 48, KM.fa_plan(48, 1, "v_expf_avx2"), 10.0, 0.0, None, False, 2),
    (192, 128, 3, 1, 1, 48, KM.fa_plan(48, 1, "v_expf_avx512"), 10.0, 0.0, None, False, 2),
    (100, 40, 7, 1, 1, 50, KM.fa_plan(16, 1, "libm"), 0.1, 0.0, [(3, 0, 16), (4, 20, 50)], True, 4),
    (96, 64, 9, 1, 1, 70, KM.fa_plan(32, 1, "v_expf_avx2"), 0.1, 0.0, [(0, 32, 64)], False, 4),
    (576, 512, 3, 2, 1, 40, KM.fa_plan(16, 2, "v_expf_avx2"), 0.1, 0.0, [(1, 3, 9)], False, 2),
]


def _fa_case(type: str, i: int):
    key = ("fa", type, i)
    if key not in _REF_CACHE:
        Dk, Dv, nq, nh, nhk, n_kv, plan, scale, softcap, masked, negzero, q_block = CASES[i]
        rng = np.random.default_rng(1000 + i + (7 if type == "q8_0" else 0))
        q = _q(rng, Dk, nq, nh)
        k = _kv(rng, type, (Dk, n_kv, nhk, 1))
        v = k.view((Dv, n_kv, nhk, 1), k.nb[1:], 0) if Dk == 576 else _kv(rng, type, (Dv, n_kv, nhk, 1))
        mask = None
        if masked is not None:
            mask = _mask(n_kv, 32, masked)
            if negzero:
                mask.storage()[0, 0, 3, 5] = 0x8000  # -0.0 masks the entry too
        want = ref_fa(q, k, v, mask, scale, 0.0, softcap, algorithm="blocked", plan=plan)
        _REF_CACHE[key] = (q, k, v, mask, plan, scale, softcap, q_block, want)
    return _REF_CACHE[key]


def _neon_fa(name, q, k, v, mask, scale, softcap, plan, q_block, n_threads):
    out, buf = _guarded_out((v.ne[0], q.ne[2], q.ne[1], q.ne[3]))
    jobs = KM.flash_attn_jobs(q, k, v, mask, scale, 0.0, softcap, out=out, plan=plan, kernel=_scalar_twin(name),
                              n_threads=n_threads, q_block=q_block)
    rcs = _run_neon(name, jobs, [q, k, v, mask], out)
    assert np.all(buf[-64:] == 0xA5), f"{name}: the kernel wrote past the output"
    return out, rcs


@pytest.mark.parametrize("case", range(len(CASES)))
def test_neon_flash_attn_bit_exact(case, driver, kt):
    Dk, Dv = CASES[case][:2]
    for name, k in sorted(kt.manifest_kernels("flash_attn_ext").items()):
        if k["isa"] not in ISAS or (k["type_x"] == "q8_0" and (Dk % 32 or Dv % 32)):
            continue  # a q8_0 row is whole 32-value blocks (the x86 test checks that ragged ones are refused)
        q, kk, v, mask, plan, scale, softcap, q_block, want = _fa_case(k["type_x"], case)
        for n_threads in (1, 3):
            out, rcs = _neon_fa(name, q, kk, v, mask, scale, softcap, plan, q_block, n_threads)
            assert rcs == [0] * len(rcs), f"{name}: masked rows reported {rcs}"
            kt.assert_same_bytes(out.storage(), want.storage(), 4,
                                 f"{name} case {case} plan {plan.name} parts={len(rcs)} (qemu-aarch64)")


def test_neon_flash_attn_fully_masked_row_counted(driver):
    """A query row with every KV entry masked: the kernel returns the number of such rows (iqk asserts S > 0;
    the Python wrapper raises on it), here 1 from the part that holds the row."""
    rng = np.random.default_rng(5)
    q = _q(rng, 192, 3, 1)
    for isa in ISAS:
        for t in ("f16", "q8_0"):
            name = catalog.by_key()[("flash_attn_ext", t, t, "l16a1")].get(isa)
            if name is None:
                continue
            k, v = _kv(rng, t, (192, 40, 1, 1)), _kv(rng, t, (128, 40, 1, 1))
            _, rcs = _neon_fa(name.name, q, k, v, _mask(40, 32, [(1, 0, 40)]), 0.125, 0.0, KM.FA_PLAN, 1, 3)
            assert rcs == [0, 1, 0], f"{name.name}: {rcs}"


# -- flash_attn_ext_partial and fa_merge (the chunked variant) ----------------------------------------------------


@pytest.mark.parametrize("case", [0, 2, 7, 8])
def test_neon_flash_attn_partial_bit_exact(case, driver, kt):
    """The partial kernels on the flash_attn_ext cases (softcap 0; kv_chunks plays no part): acc, M, S of every
    row as reference/ops/fa_partial.py, 1 and 3 parts; case 0 adds a row whose every cell is masked (M = -inf)."""
    Dk, Dv, n_kv, plan, scale, q_block = (CASES[case][i] for i in (0, 1, 5, 6, 7, 11))
    for name, k in sorted(kt.manifest_kernels("flash_attn_ext_partial").items()):
        if k["isa"] not in ISAS or (k["type_x"] == "q8_0" and (Dk % 32 or Dv % 32)):
            continue
        q, kk, v, mask = _fa_case(k["type_x"], case)[:4]
        if case == 0:
            mask = _mask(n_kv, 32, [(1, 10, 40), (2, 0, n_kv)])
        want = ref_partial(q, kk, v, mask, scale, plan=plan)
        for n_threads in (1, 3):
            out, buf = _guarded_out(want.ne)
            jobs = KM.flash_attn_partial_jobs(q, kk, v, mask, scale, out=out, plan=plan, kernel=_scalar_twin(name),
                                              n_threads=n_threads, q_block=q_block)
            assert _run_neon(name, jobs, [q, kk, v, mask], out) == [0] * len(jobs)
            assert np.all(buf[-64:] == 0xA5), f"{name}: the kernel wrote past the output"
            kt.assert_same_bytes(out.storage(), want.storage(), 4, f"{name} case {case} parts={len(jobs)} (qemu)")


def test_neon_fa_merge_bit_exact(driver, kt, rng):
    """fa_merge on NEON: Dv 17 and 128 (vector tails), M = -inf rows on either and both sides, kept partial,
    final, and a single partial finalised, 1 and 3 parts."""
    name = "mlaref_fa_merge_f32__neon_libm"
    for Dv in (17, 128):
        x = [rng.standard_normal((6, Dv + 2)).astype(np.float32) for _ in range(2)]
        for i, dead in enumerate(((1, 3), (2, 3))):
            x[i][:, Dv + 1] = np.abs(x[i][:, Dv + 1]) + 1
            for r in dead:
                x[i][r] = 0
                x[i][r, Dv] = -np.inf
        a, b = (Tensor.from_numpy(t.reshape(1, 1, 6, Dv + 2)) for t in x)
        for bb, final in ((b, False), (b, True), (None, True)):
            want = ref_merge(a, bb, final)
            for n_threads in (1, 3):
                out, buf = _guarded_out(want.ne)
                jobs = KM.fa_merge_jobs(a, bb, final, out=out, kernel=_scalar_twin(name), n_threads=n_threads)
                assert _run_neon(name, jobs, [a, bb], out) == [0] * len(jobs)
                assert np.all(buf[-64:] == 0xA5), f"{name}: the kernel wrote past the output"
                kt.assert_same_bytes(out.storage(), want.storage(), 4, f"{name} Dv={Dv} final={final} (qemu)")


def test_run_cross_kernel_rejects_bad_arguments():
    """Checked before anything is built or run: a family the mm driver does not take, a wrong number of inputs,
    a kernel of another architecture than the driver's."""
    with pytest.raises(ValueError, match="not vec_dot"):
        build.run_cross_kernel("mlaref_vec_dot_q8_0_q8_0__neon_l8a1", [b"", b""], b"", [[]])
    with pytest.raises(ValueError, match="4 input buffers"):
        build.run_cross_kernel("mlaref_flash_attn_ext_f16_f16__neon_l16a1", [b"", b""], b"", [[]])
    with pytest.raises(ValueError, match="the qemu driver holds the aarch64 ones"):
        build.run_cross_kernel("mlaref_mul_mat_f16_f16__scalar_l16a1", [b"", b""], b"", [[]])
