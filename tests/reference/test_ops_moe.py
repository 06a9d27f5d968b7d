"""The MoE FFN ops (unary, fused_mul_unary, argsort, mul_mat_id, multi_add) against upstream ggml and their definitions.

Bit-exact (equal bytes) against ggml-python's CPU back-end, with the build's vector exp (``simd`` =
``ggml_peer.build().simd``), and against upstream built at each level this CPU runs: unary SILU / GELU / RELU,
argsort with ``algorithm="std_sort"`` (ties and NaN included, also on libstdc++'s heapsort fallback), argsort
``"exchange"`` where values are distinct, mul_mat_id under plan ``ggml_x86_avx512`` for every weight type, and
fused_mul_unary SILU / RELU (equal to upstream's ``mul(unary(a), b)``). ik_llama.cpp-only parts are checked
against hand-worked vectors and float64 math: the exchange sort's tie order, multi_add's in-order float sum,
ik's SIMD GELU (NMSE bound 1e-12 against float64 gelu; measured about 2e-15).
"""

import numpy as np
import pytest

from mlaref.codegen.peers import ggml_ops as ggml_ops


from mlaref.codegen.peers import build as peer_build
from mlaref.reference import fp, quantize
from mlaref.reference.compare import nmse
from mlaref.reference.graphs import executor, ir
from mlaref.reference.ops import argsort, fused_mul_unary, mul_mat, mul_mat_id, multi_add, unary
from mlaref.reference.ops.argsort import std_sort_indices
from mlaref.reference.ops.fused_mul_unary import v_gelu_avx512_ik
from mlaref.reference.ops.mul_mat import VEC_DOT_TYPE
from mlaref.reference.ops.unary import gelu_f32, gelu_table_lookup
from mlaref.reference.ops.vexp import SIMD
from mlaref.reference.tensor import Tensor

NMSE_SILU = 1e-12  # f32 silu vs float64; v_expf is within 2 ulp
NMSE_GELU_IK = 1e-12  # ik's SIMD gelu (tanh through v_expf) vs float64 tanh gelu; measured ~2e-15
NMSE_GELU_TABLE = 1e-5  # upstream's f16 table: the key and the entry are rounded to f16


def _same_bytes(x: Tensor, y: Tensor):
    assert x.type == y.type and x.ne == y.ne
    diff = x.raw() != y.raw()
    assert not diff.any(), f"{int(diff.sum())} differing bytes"


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 88.0, -88.0, 100.0, -100.0, 1e-40, -1e-40, 3e38, -3e38,
                    87.5, -87.5, 104.0, 9.99, 10.0, -10.0, -9.99], np.float32)


def _activations(rng, rows, n):
    x = (rng.standard_normal((rows, n)) * 6).astype(np.float32)
    flat = x.reshape(-1)
    k = min(flat.size, SPECIAL.size)
    flat[rng.permutation(flat.size)[:k]] = SPECIAL[:k]  # specials land in SIMD chunks and in tails
    return x


# -- unary -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 15, 16, 17, 48, 100])
@pytest.mark.parametrize("op", ["SILU", "GELU", "RELU"])
def test_unary_matches_ggml(ggml_lib, ggml, rng, n, op):
    fn = {"SILU": ggml_lib.ggml_silu, "GELU": ggml_lib.ggml_gelu, "RELU": ggml_lib.ggml_relu}[op]
    a = Tensor.from_numpy(_activations(rng, 12, n).reshape(2, 6, n))
    _same_bytes(unary(a, op, simd=ggml.build().simd), ggml_ops.run(lambda ctx, x: fn(ctx, x), a, n_threads=3))


@pytest.mark.parametrize("op", ["SILU", "GELU"])
def test_unary_strided_rows_match_ggml(ggml_lib, ggml, rng, op):
    """Rows 40 floats apart, 33 used: the SIMD chunks start at each row (not at a flat index)."""
    fn = {"SILU": ggml_lib.ggml_silu, "GELU": ggml_lib.ggml_gelu}[op]
    base = Tensor.from_numpy((rng.standard_normal((3, 5, 40)) * 4).astype(np.float32))
    a = base.view((33, 5, 3), (base.nb[1], base.nb[2]), 4 * 3)
    assert not a.is_contiguous()
    _same_bytes(unary(a, op, simd=ggml.build().simd), ggml_ops.run(lambda ctx, x: fn(ctx, x), a))


# The levels whose SILU (chunk width, v_expf) or GELU table (FMA contraction) differ.
SIMD_LEVELS = ["generic", "avx", "avx2", "avx512"]


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_silu_matches_ggml_at_each_level(rng, level, ggml_level):
    """Upstream's SILU built at ``level`` equals ``unary(a, "SILU", simd=builds.level(level).simd)`` on rows with
    and without tails, special values, and |x| in [80, 140] (v_expf's |n| > 126 and |n| > 192 branches on both
    signs); the variants with another chunk width or v_expf differ somewhere."""
    simd = ggml_level(level).simd
    cases = []
    for n in (15, 16, 17, 100):
        x = _activations(rng, 24, n)
        x[12:] = rng.uniform(80, 140, (12, n)).astype(np.float32) * rng.choice([-1, 1], (12, n)).astype(np.float32)
        cases.append(Tensor.from_numpy(x.reshape(2, 12, n)))
    want = peer_build.call_many(level, [("mlaref.codegen.peers.ggml_ops:unary", (a, "SILU"), {}) for a in cases])
    for a, w in zip(cases, want):
        _same_bytes(unary(a, "SILU", simd=simd), w)
    for other in SIMD:
        if other != simd and {other, simd} != {"sse2", "sse2_avx"}:  # those two share v_expf and width
            assert any(unary(a, "SILU", simd=other).raw().tobytes() != w.raw().tobytes() for a, w in zip(cases, want))


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_gelu_table_matches_ggml_at_each_level(level, ggml_level):
    """All 65536 f16 keys: builds with FMA contract ``1 + A*x*x`` in the table's gelu, builds without do not; one
    entry tells them apart."""
    simd = ggml_level(level).simd
    x = fp.f16_to_f32(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)).reshape(256, 256)
    a = Tensor.from_numpy(x)
    want = peer_build.call(level, "mlaref.codegen.peers.ggml_ops:unary", a, "GELU")
    _same_bytes(unary(a, "GELU", simd=simd), want)
    other = "sse2" if simd in ("avx512", "avx2") else "avx2"
    assert unary(a, "GELU", simd=other).raw().tobytes() != want.raw().tobytes()


def test_gelu_every_f16_key_matches_ggml(ggml_lib, ggml):
    """All 65536 f16 values (the table's keys, NaN and Inf included) plus f32 values between them."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x = fp.f16_to_f32(h).reshape(256, 256)
    a = Tensor.from_numpy(x)
    simd = ggml.build().simd
    _same_bytes(unary(a, "GELU", simd=simd), ggml_ops.run(lambda ctx, t: ggml_lib.ggml_gelu(ctx, t), a))
    mid = (x * np.float32(1.0003)).astype(np.float32)  # f32 values that round to a neighbouring key
    b = Tensor.from_numpy(mid)
    _same_bytes(unary(b, "GELU", simd=simd), ggml_ops.run(lambda ctx, t: ggml_lib.ggml_gelu(ctx, t), b))


def test_gelu_table_needs_gcc_contraction(ggml_lib):
    """Without the fmaf of ``1 + A*x*x`` (GCC's GNU-mode contraction) at least one table entry differs."""
    x = fp.f16_to_f32(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16))
    x = x[np.isfinite(x) & (np.abs(x) < 10)]
    want = ggml_ops.run(lambda ctx, t: ggml_lib.ggml_gelu(ctx, t), Tensor.from_numpy(x[None])).to_numpy().reshape(-1)
    plain = fp.f16_to_f32(fp.f32_to_f16_soft(gelu_f32(x, contract=False)))
    assert (plain.view(np.uint32) != want.view(np.uint32)).sum() >= 1
    assert np.array_equal(gelu_table_lookup(x).view(np.uint32), want.view(np.uint32))


def test_unary_nmse_against_float64(rng):
    x = (rng.standard_normal((4, 300)) * 5).astype(np.float32)
    xd = x.astype(np.float64)
    silu = unary(Tensor.from_numpy(x), "SILU").to_numpy()[0, 0]
    assert nmse(silu, xd / (1 + np.exp(-xd))) < NMSE_SILU
    gelu_ref = 0.5 * xd * (1 + np.tanh(np.sqrt(2 / np.pi) * xd * (1 + 0.044715 * xd * xd)))
    assert nmse(unary(Tensor.from_numpy(x), "GELU").to_numpy()[0, 0], gelu_ref) < NMSE_GELU_TABLE
    relu = unary(Tensor.from_numpy(np.array([-0.0, 0.0, np.nan, -1.0, 2.5], np.float32)), "RELU").to_numpy()
    assert relu.reshape(-1).view(np.uint32).tolist() == [0, 0, 0, 0, np.float32(2.5).view(np.uint32)]


def test_unary_bad_inputs():
    a = Tensor.zeros("f32", (16, 2))
    with pytest.raises(ValueError, match="unary: op must be one of SILU, GELU, RELU, got 'TANH'"):
        unary(a, "TANH")
    with pytest.raises(TypeError, match="unary: op must be a str"):
        unary(a, 3)
    with pytest.raises(TypeError, match="unary: a must be of type f32, got f16"):
        unary(Tensor.zeros("f16", (16, 2)), "SILU")
    with pytest.raises(ValueError, match="unary: the elements of each row of a must be contiguous"):
        unary(a.transpose(), "SILU")
    with pytest.raises(TypeError, match="unary: a must be an mlaref Tensor"):
        unary(np.zeros((2, 16), np.float32), "SILU")
    with pytest.raises(ValueError, match="unary: simd must be one of avx512, avx2, sse2_fma, sse2_avx, sse2, neon "):
        unary(a, "SILU", simd="avx3")


# -- fused_mul_unary -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 16, 37, 64])
@pytest.mark.parametrize("op", ["SILU", "RELU"])
def test_fused_mul_unary_equals_upstream_mul_of_unary(ggml_lib, ggml, rng, n, op):
    """ik's fused SILU / RELU compute exactly upstream's ``mul(unary(a), b)`` (same routines, one more product)."""
    fn = {"SILU": ggml_lib.ggml_silu, "RELU": ggml_lib.ggml_relu}[op]
    a = Tensor.from_numpy(_activations(rng, 6, n).reshape(2, 3, n))
    b = Tensor.from_numpy((rng.standard_normal((2, 3, n)) * 2).astype(np.float32))
    want = ggml_ops.run(lambda ctx, x, y: ggml_lib.ggml_mul(ctx, fn(ctx, x), y), a, b, n_threads=2)
    _same_bytes(fused_mul_unary(a, b, op, simd=ggml.build().simd), want)


def test_fused_mul_unary_gelu_ik(ggml_lib, rng):
    """GELU: the 16-chunks take ik's SIMD gelu (NMSE bound vs float64), the tail upstream's table (bit-exact)."""
    n = 40  # chunks [0, 32), tail [32, 40)
    x = (rng.standard_normal((8, n)) * 3).astype(np.float32)
    y = (rng.standard_normal((8, n))).astype(np.float32)
    a, b = Tensor.from_numpy(x), Tensor.from_numpy(y)
    got = fused_mul_unary(a, b, "GELU").to_numpy()[0, 0]
    up = ggml_ops.run(lambda ctx, p, q: ggml_lib.ggml_mul(ctx, ggml_lib.ggml_gelu(ctx, p), q), a, b).to_numpy()[0, 0]
    assert np.array_equal(got[:, 32:].view(np.uint32), up[:, 32:].view(np.uint32))
    xd = x.astype(np.float64)
    ref = 0.5 * xd * (1 + np.tanh(np.sqrt(2 / np.pi) * xd * (1 + 0.044715 * xd * xd))) * y
    assert nmse(got[:, :32], ref[:, :32]) < NMSE_GELU_IK
    # large |x|: the blend to 1 above arg 30 and v_expf's flush to 0 below -104 give x and 0 exactly
    v = v_gelu_avx512_ik(np.array([12.0, 50.0, -12.0, -50.0, 0.0], np.float32))
    assert v.tolist() == [12.0, 50.0, 0.0, 0.0, 0.0]


def test_fused_mul_unary_on_moe_shape(ggml_lib, ggml, rng):
    """[1408, 6, T] gate and up (the MoE experts, upstream facts §3.3) at T = 3: 1408 = 88 chunks of 16, no tail."""
    a = Tensor.from_numpy((rng.standard_normal((3, 6, 1408)) * 2).astype(np.float32))
    b = Tensor.from_numpy(rng.standard_normal((3, 6, 1408)).astype(np.float32))
    want = ggml_ops.run(lambda ctx, x, y: ggml_lib.ggml_mul(ctx, ggml_lib.ggml_silu(ctx, x), y), a, b, n_threads=4)
    _same_bytes(fused_mul_unary(a, b, "SILU", simd=ggml.build().simd), want)


def test_fused_mul_unary_bad_inputs():
    a = Tensor.zeros("f32", (16, 4))
    with pytest.raises(ValueError, match=r"fused_mul_unary: a and b must have the same shape, got \[16, 4, 1, 1\] "
                                         r"and \[16, 2, 1, 1\]"):
        fused_mul_unary(a, Tensor.zeros("f32", (16, 2)))
    with pytest.raises(ValueError, match="fused_mul_unary: op must be one of SILU, GELU, RELU, got 'SWIGLU'"):
        fused_mul_unary(a, a, "SWIGLU")
    with pytest.raises(ValueError, match="fused_mul_unary: simd must be one of avx512, avx2, sse2_fma, sse2_avx, "):
        fused_mul_unary(a, a, "SILU", simd="AVX2")
    with pytest.raises(NotImplementedError, match="fused_mul_unary: GELU is modelled for ik's AVX-512 build only"):
        fused_mul_unary(a, a, "GELU", simd="avx2")
    with pytest.raises(TypeError, match="fused_mul_unary: b must be of type f32, got f16"):
        fused_mul_unary(a, Tensor.zeros("f16", (16, 4)))
    gappy = Tensor.zeros("f32", (16, 4, 2)).permute(0, 2, 1, 3)  # [16, 2, 4] with dims 1 and 2 swapped
    with pytest.raises(ValueError, match="fused_mul_unary: a must have packed rows and packed higher dimensions"):
        fused_mul_unary(gappy, Tensor.zeros("f32", (16, 2, 4)))


# -- argsort ---------------------------------------------------------------------------------------------
def _rows(rng, kind, r, n):
    if kind == "ties":
        return rng.integers(0, 4, (r, n)).astype(np.float32)
    x = rng.standard_normal((r, n)).astype(np.float32)
    if kind == "nan":
        x[rng.random(x.shape) < 0.1] = np.nan
        x[rng.random(x.shape) < 0.1] = -0.0
        x[rng.random(x.shape) < 0.1] = 0.0
    return x


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 64, 100, 257])
@pytest.mark.parametrize("kind", ["ties", "distinct", "nan"])
def test_argsort_std_sort_matches_ggml(ggml_lib, rng, n, kind):
    a = Tensor.from_numpy(_rows(rng, kind, 12, n).reshape(3, 4, n))
    for order, o in (("asc", ggml_lib.GGML_SORT_ORDER_ASC), ("desc", ggml_lib.GGML_SORT_ORDER_DESC)):
        want = ggml_ops.run(lambda ctx, t: ggml_lib.ggml_argsort(ctx, t, o), a, n_threads=2)
        _same_bytes(argsort(a, order, "std_sort"), want)


def _median_of_three_killer(n):
    """McIlroy's adversary ("A killer adversary for quicksort", 1999) run against the std::sort model: values
    fixed lazily so that every partition is lopsided, which drives introsort into its heapsort fallback."""
    gas, val, state = n, [n] * n, {"solid": 0, "cand": -1}

    class Lazy:
        def __init__(self, i):
            self.i = i

        def __lt__(self, other):
            x, y = self.i, other.i
            if val[x] == gas and val[y] == gas:
                z = x if x == state["cand"] else y
                val[z], state["solid"] = state["solid"], state["solid"] + 1
            if val[x] == gas:
                state["cand"] = x
            elif val[y] == gas:
                state["cand"] = y
            return val[x] < val[y]

    std_sort_indices([Lazy(i) for i in range(n)], False)
    return np.array(val, np.float32)


@pytest.mark.parametrize("n", [40, 64, 200])
def test_argsort_std_sort_heapsort_fallback_matches_ggml(ggml_lib, n):
    v = np.floor(_median_of_three_killer(n) / 2)  # pairs of equal values: ties inside the heap-sorted range
    for order, o, x in (("asc", ggml_lib.GGML_SORT_ORDER_ASC, v), ("desc", ggml_lib.GGML_SORT_ORDER_DESC, -v)):
        x = x.astype(np.float32)
        stats = {}
        std_sort_indices(x.tolist(), order == "desc", stats)
        assert stats.get("heapsorts", 0) >= 1 and len(set(x.tolist())) < n
        a = Tensor.from_numpy(x[None])
        _same_bytes(argsort(a, order, "std_sort"), ggml_ops.run(lambda ctx, t: ggml_lib.ggml_argsort(ctx, t, o), a))


def test_argsort_exchange_matches_ggml_without_ties(ggml_lib, rng):
    """The router's top-k input, [64 experts, 64 tokens] of soft-maxed logits: distinct values, so ik's exchange
    sort and upstream's std::sort give the same permutation."""
    x = rng.standard_normal((64, 64)).astype(np.float32)
    assert all(len(set(r.tolist())) == 64 for r in x)
    a = Tensor.from_numpy(x)
    for order, o in (("asc", ggml_lib.GGML_SORT_ORDER_ASC), ("desc", ggml_lib.GGML_SORT_ORDER_DESC)):
        _same_bytes(argsort(a, order), ggml_ops.run(lambda ctx, t: ggml_lib.ggml_argsort(ctx, t, o), a))


def test_argsort_tie_orders_hand_checked(ggml_lib):
    """ik's exchange sort is not stable; std::sort on <= 16 values is insertion sort, which is."""
    def run(vals, order, algorithm):
        return argsort(Tensor.from_numpy(np.array([vals], np.float32)), order, algorithm).to_numpy().reshape(-1)

    assert run([1, 1, 0], "asc", "exchange").tolist() == [2, 1, 0]
    assert run([0, 0, 1], "desc", "exchange").tolist() == [2, 1, 0]
    assert run([np.nan, 1, 0], "asc", "exchange").tolist() == [0, 2, 1]  # NaN compares false: stays first
    assert run([1, 1, 0], "asc", "std_sort").tolist() == [2, 0, 1]
    a = Tensor.from_numpy(np.array([[1, 1, 0]], np.float32))
    want = ggml_ops.run(lambda ctx, t: ggml_lib.ggml_argsort(ctx, t, ggml_lib.GGML_SORT_ORDER_ASC), a)
    assert want.to_numpy().reshape(-1).tolist() == [2, 0, 1]


def test_argsort_exchange_sorts_rows_with_ties(rng):
    x = rng.integers(0, 5, (50, 33)).astype(np.float32)
    for order in ("asc", "desc"):
        idx = argsort(Tensor.from_numpy(x), order).to_numpy()[0, 0]
        assert (np.sort(idx, axis=1) == np.arange(33)).all()  # a permutation
        v = np.take_along_axis(x, idx, axis=1)
        steps = np.diff(v, axis=1)
        assert (steps >= 0).all() if order == "asc" else (steps <= 0).all()


def test_argsort_bad_inputs():
    a = Tensor.zeros("f32", (8, 2))
    with pytest.raises(ValueError, match="argsort: order must be 'asc' or 'desc', got 'up'"):
        argsort(a, "up")
    with pytest.raises(ValueError, match="argsort: algorithm must be one of exchange, std_sort, got 'qsort'"):
        argsort(a, "asc", "qsort")
    with pytest.raises(TypeError, match="argsort: a must be of type f32, got i32"):
        argsort(Tensor.zeros("i32", (8, 2)))
    with pytest.raises(ValueError, match="argsort: the elements of each row of a must be contiguous"):
        argsort(a.transpose())


# -- mul_mat_id ------------------------------------------------------------------------------------------
WEIGHTS = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q4_K", "q6_K"]


def _experts(rng, n_exp, M, K, wt):
    return Tensor.from_numpy((rng.standard_normal((n_exp, M, K)) * 0.1).astype(np.float32), wt)


def _ids(rng, n_exp, n_used, T):
    return Tensor.from_numpy(np.stack([rng.permutation(n_exp)[:n_used] for _ in range(T)]).astype(np.int32))


@pytest.mark.parametrize("n_b", [1, 3])
@pytest.mark.parametrize("wt", WEIGHTS)
def test_mul_mat_id_matches_ggml(ggml_lib, rng, wt, n_b, peer_plan):
    """5 experts of [K, 20], 3 used per token, 7 tokens; b with one row per token (broadcast) or one per slot."""
    K = 256 if wt in ("q4_K", "q6_K") else 64
    a = _experts(rng, 5, 20, K, wt)
    b = Tensor.from_numpy(rng.standard_normal((7, n_b, K)).astype(np.float32))
    ids = _ids(rng, 5, 3, 7)
    want = ggml_ops.run(lambda ctx, x, y, z: ggml_lib.ggml_mul_mat_id(ctx, x, y, z), a, b, ids, n_threads=3)
    _same_bytes(mul_mat_id(a, b, ids, plan=peer_plan), want)


@pytest.mark.parametrize("wt", ["q8_0", "q4_K"])
def test_mul_mat_id_src1_in_vec_dot_type_and_repeated_experts(ggml_lib, rng, wt, peer_plan):
    """src1 already quantized (upstream's own from_float), and one expert twice in a token's list."""
    K = 256
    vdt = VEC_DOT_TYPE[wt]
    a = _experts(rng, 4, 24, K, wt)
    bf = rng.standard_normal((5, 2, K)).astype(np.float32)
    b = Tensor.from_bytes(quantize(bf, vdt, variant="x86"), vdt, (K, 2, 5))
    ids = Tensor.from_numpy(np.array([[0, 0], [3, 1], [2, 2], [1, 3], [3, 3]], np.int32))
    want = ggml_ops.run(lambda ctx, x, y, z: ggml_lib.ggml_mul_mat_id(ctx, x, y, z), a, b, ids)
    _same_bytes(mul_mat_id(a, b, ids, plan=peer_plan), want)


def test_mul_mat_id_moe_chain_on_facts_shapes(ggml_lib, rng, peer_plan):
    """The MoE FFN of upstream facts §3.3 scaled down (2048 -> 64, 1408 -> 96, 64 experts -> 8, 512 tokens -> 5):
    gate/up [64, 96, 8] x ffn_norm [64, 1, 5] -> [96, 6, 5]; down [96, 64, 8] x [96, 6, 5] -> [64, 6, 5]."""
    up, gate = _experts(rng, 8, 96, 64, "q4_0"), _experts(rng, 8, 96, 64, "q8_0")
    down = _experts(rng, 8, 64, 96, "iq4_nl")
    x = Tensor.from_numpy(rng.standard_normal((5, 1, 64)).astype(np.float32))
    ids = _ids(rng, 8, 6, 5)
    run = ggml_ops.run

    def ggml_chain(ctx, u, gt, d, xx, i):
        h = ggml_lib.ggml_mul(ctx, ggml_lib.ggml_silu(ctx, ggml_lib.ggml_mul_mat_id(ctx, gt, xx, i)), ggml_lib.ggml_mul_mat_id(ctx, u, xx, i))
        return ggml_lib.ggml_mul_mat_id(ctx, d, h, i)

    want = run(ggml_chain, up, gate, down, x, ids, n_threads=2)
    p = peer_plan
    h = fused_mul_unary(mul_mat_id(gate, x, ids, plan=p), mul_mat_id(up, x, ids, plan=p), "SILU")
    assert h.ne == (96, 6, 5, 1)
    got = mul_mat_id(down, h, ids, plan=p)
    assert got.ne == (64, 6, 5, 1)
    _same_bytes(got, want)


def test_mul_mat_id_is_mul_mat_per_slot(rng):
    """dst[:, i, t] equals mul_mat of expert ids[i, t] with b row (i % n_b, t), under another plan too."""
    a = _experts(rng, 4, 10, 64, "q4_0")
    b = Tensor.from_numpy(rng.standard_normal((3, 2, 64)).astype(np.float32))
    sel = np.array([[1, 3], [0, 1], [2, 2]], np.int32)
    got = mul_mat_id(a, b, Tensor.from_numpy(sel), plan="mlaref_l8a2").to_numpy()[0]
    for t in range(3):
        for i in range(2):
            w = a.view((64, 10), (a.nb[1],), int(sel[t, i]) * a.nb[2])
            row = Tensor.from_numpy(b.to_numpy()[0, t, i][None])
            ref = mul_mat(w, row, plan="mlaref_l8a2").to_numpy().reshape(-1)
            assert np.array_equal(got[t, i].view(np.uint32), ref.view(np.uint32))


def test_mul_mat_id_bad_inputs():
    a = Tensor.zeros("f32", (32, 4, 3))
    b = Tensor.zeros("f32", (32, 1, 2))
    ok = Tensor.from_numpy(np.array([[0, 1], [2, 0]], np.int32))
    assert mul_mat_id(a, b, ok).ne == (4, 2, 2, 1)
    with pytest.raises(ValueError, match=r"mul_mat_id: ids\[1, 0\] = 3 is outside \[0, 3\) \(as.ne\[2\]\)"):
        mul_mat_id(a, b, Tensor.from_numpy(np.array([[0, 3], [2, 0]], np.int32)))
    with pytest.raises(ValueError, match=r"mul_mat_id: ids.ne\[1\] \(3\) must equal b.ne\[2\] \(2\)"):
        mul_mat_id(a, b, Tensor.from_numpy(np.zeros((3, 2), np.int32)))
    with pytest.raises(ValueError, match=r"mul_mat_id: ids.ne\[0\] \(3\) must be a multiple of b.ne\[1\] \(2\)"):
        mul_mat_id(a, Tensor.zeros("f32", (32, 2, 2)), Tensor.from_numpy(np.zeros((2, 3), np.int32)))
    with pytest.raises(TypeError, match="mul_mat_id: ids must be of type i32, got f32"):
        mul_mat_id(a, b, Tensor.zeros("f32", (2, 2)))
    with pytest.raises(ValueError, match=r"mul_mat_id: as.ne\[0\] \(32\) must equal b.ne\[0\] \(16\)"):
        mul_mat_id(a, Tensor.zeros("f32", (16, 1, 2)), ok)


# -- multi_add -------------------------------------------------------------------------------------------
def _expert_view(e: Tensor) -> Tensor:
    """llm_build_moe_ffn's view of the weighted experts [ne0, n, T]: [ne0, T] with nb1 = e.nb[2]."""
    return e.view((e.ne[0], e.ne[2]), (e.nb[2],), 0)


def test_multi_add_sums_in_order_from_zero():
    """((0 + x0) + x1) + x2 in float32: 1e8 + 1 rounds back to 1e8, and 0 + (-0) is +0."""
    vals = np.zeros((2, 3, 4), np.float32)  # [T=2][n=3][ne0=4]
    vals[0, :, 0] = [1e8, 1.0, -1e8]  # in order: 0 (an exact sum would be 1)
    vals[0, :, 1] = [1.0, 1e8, -1e8]  # in order: 0 as well (1 + 1e8 = 1e8)
    vals[0, :, 2] = [-0.0, -0.0, -0.0]  # +0 from the memset
    vals[1, :, 3] = [0.5, 0.25, 0.125]
    out = multi_add(_expert_view(Tensor.from_numpy(vals)), 3).to_numpy()[0, 0]
    assert out[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert out[0].view(np.uint32)[2] == 0  # +0, not -0
    assert out[1].tolist() == [0.0, 0.0, 0.0, 0.875]


def test_multi_add_equals_upstream_add_chain(ggml_lib, rng):
    """Without -0 the sum from 0 equals upstream's ``add(add(add(x0, x1), x2) ...)`` on the expert views."""
    e = Tensor.from_numpy((rng.standard_normal((5, 6, 64)) * 3).astype(np.float32))  # [64, 6 experts, 5 tokens]

    def chain(ctx, t):
        views = [ggml_lib.ggml_view_2d(ctx, t, 64, 5, e.nb[2], j * 64 * 4) for j in range(6)]
        acc = views[0]
        for v in views[1:]:
            acc = ggml_lib.ggml_add(ctx, acc, v)
        return acc

    _same_bytes(multi_add(_expert_view(e), 6), ggml_ops.run(chain, e))


def test_multi_add_bad_inputs():
    e = Tensor.zeros("f32", (8, 3, 4))
    a = _expert_view(e)
    assert multi_add(a, 3).ne == (8, 4, 1, 1)
    with pytest.raises(ValueError, match="multi_add: n_experts must be >= 1, got 0"):
        multi_add(a, 0)
    with pytest.raises(TypeError, match="multi_add: n_experts must be an int, got float"):
        multi_add(a, 2.0)
    with pytest.raises(ValueError, match=r"multi_add: a.nb\[1\] \(96\) must be >= n_experts\*ne0\*4 \(128\)"):
        multi_add(a, 4)
    with pytest.raises(ValueError, match=r"multi_add: a must be 2-d \(ne\[2\] == ne\[3\] == 1\)"):
        multi_add(e, 1)
    last = e.view((8, 1), (e.nb[2],), 3 * e.nb[2])  # the last token's row: 3 sub-rows fit, 4 do not
    with pytest.raises(ValueError, match="multi_add: the 4 sub-rows of the last row end at byte 416, past"):
        multi_add(last, 4)


# -- the executor runs these ops -------------------------------------------------------------------------
def test_executor_dispatches_to_the_moe_ops(rng):
    x = rng.standard_normal((3, 16)).astype(np.float32)
    leaf = ir.new_tensor("f32", (16, 3))
    node = ir.argsort(leaf, descending=True)
    got = executor.REFERENCE_OPS["ARGSORT"](node, Tensor.from_numpy(x), **executor.DEFAULT_OPTIONS["ARGSORT"])
    assert np.array_equal(got.to_numpy()[0, 0], np.argsort(-x, axis=1, kind="stable"))
    node = ir.fused_mul_unary(leaf, leaf, "SILU")
    a, b = Tensor.from_numpy(x), Tensor.from_numpy(x[::-1].copy())
    _same_bytes(executor.REFERENCE_OPS["FUSED_MUL_UNARY"](node, a, b), fused_mul_unary(a, b, "SILU"))
    node = ir.multi_add(leaf, 1)
    assert np.array_equal(executor.REFERENCE_OPS["MULTI_ADD"](node, a).to_numpy(), a.to_numpy())


# -- deepseek2.build_graph(weight_types=...) (the hook from_gguf needs; lead: move to tests/graphs if preferred) --
def test_build_graph_takes_weight_types_per_name():
    from mlaref.reference.graphs import deepseek2  # noqa: PLC0415
    from mlaref.reference.graphs.synthetic import tiny_hparams  # noqa: PLC0415

    hp = tiny_hparams(2)
    types = {n: t.type for n, t in deepseek2.build_graph(hp, 256, n_tokens=32, weight_type="q8_0").weights.items()}
    assert types["token_embd.weight"] == "q8_0"
    mixed = dict(types, **{"token_embd.weight": "f16"})
    got = deepseek2.build_graph(hp, 256, n_tokens=32, weight_types=mixed).weights
    assert {n: t.type for n, t in got.items()} == mixed
    del mixed["token_embd.weight"]
    with pytest.raises(ValueError, match="weight_types: the graph needs weight 'token_embd.weight'"):
        deepseek2.build_graph(hp, 256, n_tokens=32, weight_types=mixed)
    with pytest.raises(TypeError, match="weight_types must be a dict"):
        deepseek2.build_graph(hp, 256, n_tokens=32, weight_types=[("token_embd.weight", "f16")])
