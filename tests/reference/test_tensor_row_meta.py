"""Tensors of a type with row metadata (q8_KV: ``d``, ``s``, then ``n`` int8 per row; upstream facts §5a).

ik_llama.cpp sizes such rows with ``ggml_row_size = row_meta_size + type_size·n/blck_size`` and derives every stride,
``ggml_nbytes`` and ``ggml_is_contiguous_n`` from it (ggml/src/ggml.c:4724-4761, 4959-4979, 5446-5450 of the
ik-llama-cpp-python 0.1.5 snapshot). The expected strides and sizes below are those formulas worked by hand with
``row_meta_size = 8``; the expected values of the copies come from the row bytes read field by field (``d`` the
first float32, ``qs`` from byte 8), and flash attention is checked against float64 attention.
"""

import numpy as np
import pytest

from mlaref.reference import quantize
from mlaref.reference.graphs import ir
from mlaref.reference.ops.concat import concat
from mlaref.reference.ops.cpy import cast, cpy
from mlaref.reference.ops.fa_partial import flash_attn_ext_partial
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.ops.get_rows import get_rows
from mlaref.reference.ops.repeat import repeat
from mlaref.reference.tensor import Tensor, row_meta_size, row_size

F32 = np.float32


def _fields(rows: np.ndarray):
    """uint8 rows ``(R, 8 + n)`` -> (d float32 (R,), s int32 (R,), qs int8 (R, n)), by byte offset."""
    rows = np.ascontiguousarray(rows)
    d = rows[:, 0:4].copy().view("<f4")[:, 0]
    s = rows[:, 4:8].copy().view("<i4")[:, 0]
    return d, s, rows[:, 8:].view(np.int8)


def _nmse(ref, x) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.sum((ref - np.asarray(x, np.float64)) ** 2) / np.sum(ref ** 2))


# -- geometry: ggml_new_tensor_impl, ggml_nbytes, ggml_is_contiguous_n ------------------------------------------------

def test_strides_and_sizes_count_the_row_metadata():
    t = Tensor.empty("q8_KV", (576, 4, 3))
    assert (row_meta_size("q8_KV"), row_size("q8_KV", 576)) == (8, 584)
    assert t.nb == (32, 584, 584 * 4, 584 * 12) and t.nbytes() == 584 * 12 == t.data.size
    assert t.is_contiguous() and t.storage().shape == (1, 3, 4, 584)
    g = ir.new_tensor("q8_KV", (576, 2048))  # the IR's shape-only tensor: the same formulas
    assert g.nb == (32, 584, 584 * 2048, 584 * 2048) and g.nbytes == 584 * 2048 and g.is_contiguous()
    # every other row: whole rows, not contiguous, but contiguous_1 (rows may have any stride)
    every_other = t.view((576, 2, 3), (1168, 2336))
    assert every_other.nb == (32, 1168, 2336, 7008) and not every_other.is_contiguous()
    assert every_other.is_contiguous(1)
    assert every_other.nbytes() == 584 + 1168 + 2 * 2336  # span: one row plus the strides
    # element and block types keep their geometry (nb1 = blocks only)
    assert Tensor.empty("q8_0", (576, 2)).nb == (34, 612, 1224, 1224)
    assert ir.new_tensor("q8_0", (576, 2)).nb == (34, 612, 1224, 1224) and ir.row_meta_size("q8_0") == 0


def test_whole_row_views_read_their_rows_and_views_inside_a_row_are_refused(rng):
    x = rng.standard_normal((6, 64)).astype(F32)
    t = Tensor.from_numpy(x, "q8_KV")
    assert np.array_equal(t.raw().reshape(6, 72), quantize(x, "q8_KV"))
    v = t.view((64, 2), (72,), 3 * 72)  # rows 3 and 4
    d, _, qs = _fields(quantize(x, "q8_KV")[3:5])
    assert np.array_equal(v.to_numpy().reshape(2, 64), (d[:, None] * qs.astype(F32)).astype(F32))
    with pytest.raises(ValueError, match="q8_KV rows carry 8 bytes of metadata.*32 of a row's 64 values"):
        t.view((32, 6), (72,), 0)
    with pytest.raises(ValueError, match="q8_KV rows carry 8 bytes of metadata.*offset 40 is not a multiple"):
        t.view((64, 1), (72,), 40)
    with pytest.raises(ValueError, match="q8_KV rows carry 8 bytes.*blocks of a row must be packed"):
        Tensor("q8_KV", (64, 2), (64, 72, 144, 144), t.data)
    with pytest.raises(ValueError, match="q8_KV rows carry 8 bytes.*dimension 0"):
        t.transpose()
    with pytest.raises(ValueError, match="q8_KV rows carry 8 bytes.*ne\\[0\\] 64 cannot become 128"):
        t.reshape(128, 3)
    assert t.reshape(64, 3, 2).nb == (32, 72, 216, 432)  # whole rows regrouped: allowed
    gt = ir.new_tensor("q8_KV", (576, 16), name="cache")
    assert ir.view_2d(gt, 576, 4, gt.nb[1], 584 * 8).nb[1] == 584
    with pytest.raises(ValueError, match="view of 'cache': q8_KV rows carry 8 bytes of metadata"):
        ir.view_2d(gt, 512, 16, gt.nb[1], 0)  # V as K's first 512 columns
    with pytest.raises(ValueError, match=r"offset 1024 \(row stride 584\) starts or ends inside a row"):
        ir.view_2d(gt, 576, 1, gt.nb[1], 1024)
    for bad in (lambda: ir.transpose(gt), lambda: ir.concat(gt, gt, 0), lambda: ir.repeat(gt, (1152, 16)),
                lambda: ir.permute(gt, 1, 0, 2, 3)):
        with pytest.raises(ValueError, match="q8_KV rows carry 8 bytes of metadata"):
            bad()
    assert ir.repeat(gt, (576, 32)).ne[:2] == (576, 32)  # whole rows repeated: allowed


# -- the ops on whole rows -------------------------------------------------------------------------------------------

def test_cache_store_quantizes_each_row_into_its_slot(rng):
    """cpy f32 -> q8_KV into a view of rows 5..8 of a cache (the KV store): each row's bytes are q8_KV's quantizer of
    that row, d = amax/127 as float32, and the rows around the view keep their bytes."""
    cache = Tensor.empty("q8_KV", (96, 12))
    cache.data[:] = rng.integers(0, 256, cache.data.size, dtype=np.uint8)
    before = cache.data.copy()
    x = rng.standard_normal((4, 96)).astype(F32)
    dst = cache.view((96, 4), (cache.nb[1],), 5 * cache.nb[1])
    assert cpy(Tensor.from_numpy(x), dst) is dst
    rows = cache.raw().reshape(12, 104)
    assert np.array_equal(rows[5:9], quantize(x, "q8_KV", variant="iqk"))
    d, s, qs = _fields(rows[5:9])
    assert np.array_equal(d, (np.abs(x).max(axis=1) / F32(127)).astype(F32))
    assert np.array_equal(s, qs.astype(np.int32).sum(axis=1)) and np.abs(qs).max() == 127
    assert np.array_equal(cache.data[: 5 * 104], before[: 5 * 104])
    assert np.array_equal(cache.data[9 * 104:], before[9 * 104:])


def test_cast_to_f32_is_d_times_q_per_whole_row(rng):
    rows = np.stack([rng.standard_normal(64).astype(F32) * F32(10 ** e) for e in (-3, 0, 2)])
    t = Tensor.from_bytes(quantize(rows, "q8_KV"), "q8_KV", (64, 3))
    d, _, qs = _fields(t.raw().reshape(3, 72))
    out = cast(t, "f32")
    assert out.nb == (4, 256, 768, 768)
    assert np.array_equal(out.to_numpy().reshape(3, 64), (d[:, None] * qs.astype(F32)).astype(F32))
    assert _nmse(rows, out.to_numpy().reshape(3, 64)) < 1e-4  # half a step of amax/127 per value
    picked = get_rows(t, Tensor.from_numpy(np.array([2, 0], np.int32)))  # ggml_get_rows: to_float of whole rows
    assert np.array_equal(picked.to_numpy().reshape(2, 64), out.to_numpy().reshape(3, 64)[[2, 0]])
    assert np.array_equal(cpy(t, "q8_KV").raw(), t.raw())  # the same type: whole rows' bytes


def test_other_conversions_and_row_cutting_ops_are_refused(rng):
    t = Tensor.from_numpy(rng.standard_normal((2, 64)).astype(F32), "q8_KV")
    with pytest.raises(TypeError, match="q8_KV tensor can be copied only to f32 or q8_KV, not f16"):
        cast(t, "f16")
    strided = Tensor.empty("q8_KV", (64, 4)).view((64, 2), (144,))
    with pytest.raises(ValueError, match="q8_KV destination must be contiguous"):
        cpy(Tensor.from_numpy(np.ones((2, 64), F32)), strided)
    with pytest.raises(ValueError, match="q8_KV rows carry 8 bytes of metadata"):
        concat(t, t, 1)
    with pytest.raises(ValueError, match="q8_KV rows carry 8 bytes of metadata in front, so a row tiled along dim 0"):
        repeat(t, (128, 2))
    assert np.array_equal(repeat(t, (64, 4)).raw().reshape(4, 72), np.tile(t.raw().reshape(2, 72), (2, 1)))


# -- flash attention over q8_KV K and V ------------------------------------------------------------------------------

def _attention64(q, k, v, mask, scale):
    """float64 softmax(scale·q·kᵀ + mask)·v per head: q (H, nq, Dk), k (H, n_kv, Dk), v (H, n_kv, Dv) -> (nq, H, Dv)."""
    s = np.einsum("hqd,hkd->hqk", q.astype(np.float64), k.astype(np.float64)) * scale + mask[None, : q.shape[1]]
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,hkd->qhd", p, v.astype(np.float64))


@pytest.mark.parametrize("algorithm", ["generic", "blocked"])
def test_flash_attn_q8_KV_exact_rows_agree_with_float64(rng, algorithm):
    """Integer rows with amax 127 quantize exactly (d = 1, qs = the values), so K·Q is the exact integer dot and V the
    integers: what is left is float32 softmax rounding. Bound: NMSE < 1e-12 against float64."""
    H, nq, nkv, Dk, Dv = 2, 5, 40, 64, 32

    def ints(*shape):
        a = rng.integers(-127, 128, size=shape).astype(F32)
        a.reshape(-1, shape[-1])[:, 0] = 127  # amax 127 in every row
        return a

    q, kf, vf = ints(H, nq, Dk), ints(H, nkv, Dk), ints(H, nkv, Dv)
    k, v = cast(Tensor.from_numpy(kf), "q8_KV"), cast(Tensor.from_numpy(vf), "q8_KV")
    assert np.array_equal(k.to_numpy()[0], kf) and np.array_equal(v.to_numpy()[0], vf)
    mask = np.zeros((32, nkv), F32)
    mask[:, 30:] = -np.inf
    scale = 2.0 ** -14  # scores of a few units: a soft softmax
    out = flash_attn_ext(Tensor.from_numpy(q), k, v, Tensor.from_numpy(mask, "f16"), scale, algorithm=algorithm)
    assert _nmse(_attention64(q, kf, vf, mask, scale), out.to_numpy()[0]) < 1e-12


@pytest.mark.parametrize("algorithm", ["generic", "blocked"])
def test_flash_attn_q8_KV_random_rows_nmse(rng, algorithm):
    """Dk 192 / Dv 128 (DeepSeek's prompt-path heads). NMSE bounds against float64: < 2e-4 with the dequantized K and
    V (only Q's q8_KV rounding is left; measured 4.7e-5), < 5e-4 with the f32 K and V before quantization
    (measured 1.3e-4; ggml's test-backend-ops bound for flash_attn_ext is 5e-4)."""
    H, nq, nkv, Dk, Dv = 2, 8, 256, 192, 128
    q = rng.standard_normal((H, nq, Dk)).astype(F32)
    kf, vf = rng.standard_normal((H, nkv, Dk)).astype(F32), rng.standard_normal((H, nkv, Dv)).astype(F32)
    k, v = cast(Tensor.from_numpy(kf), "q8_KV"), cast(Tensor.from_numpy(vf), "q8_KV")
    mask = np.zeros((32, nkv), F32)
    mask[:, 200:] = -np.inf
    scale = float(1 / np.sqrt(Dk))
    out = flash_attn_ext(Tensor.from_numpy(q), k, v, Tensor.from_numpy(mask, "f16"), scale,
                         algorithm=algorithm).to_numpy()[0]
    assert _nmse(_attention64(q, k.to_numpy()[0], v.to_numpy()[0], mask, scale), out) < 2e-4
    assert _nmse(_attention64(q, kf, vf, mask, scale), out) < 5e-4


def test_flash_attn_q8_KV_refused_where_not_modelled(rng):
    q = Tensor.from_numpy(rng.standard_normal((1, 4, 64)).astype(F32))
    k = cast(Tensor.from_numpy(rng.standard_normal((1, 32, 64)).astype(F32)), "q8_KV")
    v = cast(Tensor.from_numpy(rng.standard_normal((1, 32, 64)).astype(F32)), "q8_KV")
    mask = Tensor.from_numpy(np.zeros((32, 32), F32), "f16")
    for alg in ("tiled", "iqk2026"):
        with pytest.raises(ValueError, match=f"algorithm='{alg}' does not take q8_KV / q8_KV"):
            flash_attn_ext(q, k, v, mask, 0.125, algorithm=alg)
    with pytest.raises(TypeError, match="k must be of type f16 or q8_0 or f32, got q8_KV"):
        flash_attn_ext_partial(q, k, v, mask, 0.125)
