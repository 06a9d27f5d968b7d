"""The tensor model against ggml's own tensors (ggml-python) and against NumPy's strided views."""


import numpy as np
import pytest

from mlaref.reference import get_type, quantize
from mlaref.reference.tensor import Tensor, row_size


@pytest.fixture
def gctx(ggml):
    g = ggml.lib()
    ctx = g.ggml_init(g.ggml_init_params(mem_size=16 << 20, mem_buffer=None, no_alloc=True))
    yield g, ctx
    g.ggml_free(ctx)


def _geom(gt):
    c = gt.contents
    return tuple(int(c.ne[i]) for i in range(4)), tuple(int(c.nb[i]) for i in range(4))


def _same(g, gt, t):
    ne, nb = _geom(gt)
    assert (ne, nb) == (t.ne, t.nb)
    assert int(g.ggml_nbytes(gt)) == t.nbytes()
    assert bool(g.ggml_is_contiguous(gt)) == t.is_contiguous()
    assert int(g.ggml_nrows(gt)) == t.nrows()


@pytest.mark.parametrize("type_,ne", [("f32", (576, 7, 3, 2)), ("f16", (192, 5, 16, 1)), ("q8_0", (576, 4, 3, 2))])
def test_strides_match_ggml(gctx, ggml, type_, ne):
    g, ctx = gctx
    gt = g.ggml_new_tensor_4d(ctx, ggml.ggml_type(type_), *ne)
    t = Tensor.empty(type_, ne)
    _same(g, gt, t)
    if type_ != "q8_0":  # a transposed block type has no meaning
        _same(g, g.ggml_transpose(ctx, gt), t.transpose())
    _same(g, g.ggml_permute(ctx, gt, 0, 2, 1, 3), t.permute(0, 2, 1, 3))
    _same(g, g.ggml_permute(ctx, gt, 0, 3, 2, 1), t.permute(0, 3, 2, 1))
    rs = row_size(type_, 64)
    # the graph's k_rope view: [64, ne2, ne1] rows of 64 values at byte offset row_size(512 values) ... here 64
    v = g.ggml_view_3d(ctx, gt, 64, ne[1], ne[2], t.nb[1], t.nb[2], rs)
    _same(g, v, t.view((64, ne[1], ne[2]), (t.nb[1], t.nb[2]), rs))
    r = g.ggml_reshape_2d(ctx, gt, ne[0] * ne[1], ne[2] * ne[3])
    _same(g, r, t.reshape(ne[0] * ne[1], ne[2] * ne[3]))


def test_permute_matches_ggml_for_all_orders(gctx, ggml):
    import itertools

    g, ctx = gctx
    gt = g.ggml_new_tensor_4d(ctx, ggml.ggml_type("f32"), 5, 4, 3, 2)
    t = Tensor.empty("f32", (5, 4, 3, 2))
    for axes in itertools.permutations(range(4)):
        _same(g, g.ggml_permute(ctx, gt, *axes), t.permute(*axes))


def test_graph_views_strides():
    # Upstream facts §3.3: kv_rope_compresseed [576, 512] f32; k_rope view [64, 1, 512] nb1 = nb2 = 2304 off 2048;
    # q [3072, 512] viewed as q_rope [64, 16, 512] nb1 = 768, nb2 = 12288, off 512; permute(0,2,1,3) of q_concat.
    kv = Tensor.empty("f32", (576, 512))
    kr = kv.view((64, 1, 512), (2304, 2304), 2048)
    assert kr.nb == (4, 2304, 2304, 2304 * 512) and kr.offset == 2048
    q = Tensor.empty("f32", (3072, 512))
    qr = q.view((64, 16, 512), (768, 12288), 512)
    assert qr.nb[:3] == (4, 768, 12288)
    qc = Tensor.empty("f32", (192, 16, 512)).permute(0, 2, 1, 3)
    assert qc.ne[:3] == (192, 512, 16) and qc.nb[:3] == (4, 12288, 768)
    cache = Tensor.empty("q8_0", (576, 1024))
    rope_part = cache.view((64, 1024, 1), (cache.nb[1], cache.nb[1]), row_size("q8_0", 512))
    assert rope_part.offset == 544 and rope_part.row_size() == 68 and not rope_part.is_contiguous()


def test_writes_through_views_reach_the_base():
    base = Tensor.from_numpy(np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8))
    v = base.view((4, 3, 2), (32, 96), 8)  # columns 2..5 of every row
    v.storage()[...] = -1
    got = base.to_numpy()[0]
    want = np.arange(48, dtype=np.float32).reshape(2, 3, 8)
    want[:, :, 2:6] = -1
    assert np.array_equal(got, want)
    p = base.permute(1, 0, 2, 3)  # a transposed view, written element by element
    p.storage()[0, 1, 2, 0] = 99  # element (i0=0, i1=2, i2=1) of p = base (i0=2, i1=0, i2=1)
    assert base.to_numpy()[0, 1, 0, 2] == 99
    r = base.row(2, 1)
    r[:4] = np.frombuffer(np.float32(7).tobytes(), dtype=np.uint8)
    assert base.to_numpy()[0, 1, 2, 0] == 7


def test_to_numpy_follows_permuted_views(rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    t = Tensor.from_numpy(x)
    for axes in [(0, 2, 1, 3), (1, 0, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)]:
        p = t.permute(*axes)
        # ggml dim i of t goes to dim axes[i]; NumPy axis 3 - i
        np_axes = [0] * 4
        for i, a in enumerate(axes):
            np_axes[3 - a] = 3 - i
        assert np.array_equal(p.to_numpy(), x.transpose(np_axes))
        assert np.array_equal(p.copy().to_numpy(), x.transpose(np_axes))
        assert p.copy().is_contiguous()


def test_from_numpy_encodings(rng):
    x = (rng.standard_normal((4, 64)) * 3).astype(np.float32)
    h = Tensor.from_numpy(x, "f16")
    assert np.array_equal(h.storage()[0, 0], x.astype(np.float16).view(np.uint16))  # NumPy's own RNE cast
    b = Tensor.from_numpy(x, "bf16")
    u = x.view(np.uint32).astype(np.uint64)
    assert np.array_equal(b.storage()[0, 0], ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16))
    q = Tensor.from_numpy(x, "q8_0")
    assert q.nb == (34, 68, 272, 272)
    assert np.array_equal(q.raw()[0, 0], quantize(x, "q8_0"))
    i = Tensor.from_numpy(np.array([[1, -2, 3]], dtype=np.int32))
    assert i.type == "i32" and i.nb == (4, 12, 12, 12) and np.array_equal(i.to_numpy()[0, 0], [[1, -2, 3]])
    assert np.array_equal(Tensor.from_bytes(q.raw(), "q8_0", q.ne).data, q.data)
    assert get_type("q8_0").row_size(64) == q.row_size() == 68


def test_is_contiguous_ignores_unit_dims_like_ggml(gctx, ggml):
    g, ctx = gctx
    gt = g.ggml_new_tensor_4d(ctx, ggml.ggml_type("f32"), 8, 1, 5, 1)
    t = Tensor.empty("f32", (8, 1, 5, 1))
    _same(g, g.ggml_permute(ctx, gt, 0, 3, 2, 1), t.permute(0, 3, 2, 1))
    assert t.permute(0, 3, 2, 1).is_contiguous()


def test_bad_inputs():
    t = Tensor.empty("f32", (8, 4))
    with pytest.raises(ValueError, match="needs bytes .* but the buffer holds 128 bytes"):
        t.view((8, 4), (32,), 4)
    with pytest.raises(ValueError, match="reshape: the tensor must be contiguous"):
        t.transpose().reshape(32)
    with pytest.raises(ValueError, match="reshape: .* has 32 elements"):
        t.reshape(5, 7)
    with pytest.raises(ValueError, match="permute: the axes must be a permutation"):
        t.permute(0, 0, 1, 2)
    with pytest.raises(ValueError, match="from_bytes: .* holds 128 bytes, got 100"):
        Tensor.from_bytes(np.zeros(100, np.uint8), "f32", (8, 4))
    with pytest.raises(ValueError, match="row: the elements of a row must be contiguous"):
        t.transpose().row(0)
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        Tensor.empty("q8_0", (40, 2))
    with pytest.raises(TypeError, match="arr must be float32, float16 or int32"):
        Tensor.from_numpy(np.zeros(3, np.float64))
    with pytest.raises(IndexError, match="i1 = 4 is outside"):
        t.row(4)
    with pytest.raises(ValueError, match="unknown tensor type"):
        Tensor.empty("q9_9", (32,))



def test_empty_data_is_cache_line_aligned():
    """Tensor.empty places its data on a 64-byte boundary, as ggml's CPU buffers place tensors (the streaming
    row copies rely on it for aligned rows)."""
    for ne in [(1,), (34, 3), (576, 7, 2), (192, 4096)]:
        t = Tensor.empty("f16", ne)
        assert t.data.ctypes.data % 64 == 0 and t.data.size == t.nbytes(), ne
