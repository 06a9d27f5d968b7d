"""Data-movement ops (concat, repeat, cpy/cast/dup, get_rows) against upstream ggml and hand-built bytes.

Bit-exact means equal bytes. Upstream ggml (ggml-python) is the oracle where it implements the same semantics;
the #253 row paths that upstream lacks (concat of block types, repeat of block types) are checked against bytes
assembled here with plain slicing, following the memcpy rule stated in each test.
"""

import numpy as np
import pytest

from mlaref.codegen.peers import ggml_ops as ggml_ops
from mlaref.reference import fp, get_type, quantize, registry
from mlaref.reference.ops import cast, concat, cpy, dup, get_rows, repeat
from mlaref.reference.ops.concat import Concat_253, Concat_pre253
from mlaref.reference.ops.repeat import Repeat_253, Repeat_pre253
from mlaref.reference.tensor import Tensor, row_size


def _same_bytes(x: Tensor, y: Tensor):
    assert x.type == y.type and x.ne == y.ne
    assert np.array_equal(x.raw(), y.raw())


def _f32(rng, *shape, scale=1.0):
    return Tensor.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))


def _blocks(rng, type_, ne):
    """A contiguous tensor of random blocks from the format's valid domain."""
    t = Tensor.empty(type_, ne)
    fmt = get_type(type_)
    t.data[:] = fmt.random_blocks(rng, t.data.size // fmt.type_size).view(np.uint8).reshape(-1)
    return t


# -- concat ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_concat_f32_all_dims_match_ggml(ggml, rng, dim):
    ne_a = [6, 5, 4, 3]
    ne_b = list(ne_a)
    ne_b[dim] = 2 + dim
    a = _f32(rng, *reversed(ne_a))
    b = _f32(rng, *reversed(ne_b))
    _same_bytes(concat(a, b, dim), ggml_ops.concat(a, b, dim))
    _same_bytes(concat(a, b, dim), ggml_ops.concat(a, b, dim, n_threads=3))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_concat_f32_permuted_and_strided_inputs_match_ggml(ggml, rng, dim):
    # a: a permuted view (the q_rope permute pattern); b: a strided view into a wider buffer at an offset.
    a = _f32(rng, 7, 5, 8).permute(0, 2, 1, 3)  # ne [8, 7, 5]
    wide = _f32(rng, 9, 11, 24)
    ne_b = [8, 7, 5]
    ne_b[dim] = 3
    b = wide.view(tuple(ne_b), (wide.nb[1], wide.nb[2]), 12 + wide.nb[1])
    if dim != 0:
        b = wide.view(tuple(ne_b), (wide.nb[1], wide.nb[2]), 12)
    _same_bytes(concat(a, b, dim), ggml_ops.concat(a, b, dim))


def test_concat_graph_q_concat_matches_ggml(ggml, rng):
    # q_concat = concat(q_nope view [128, 16, T], q_rope [64, 16, T], 0) of upstream facts §3.3 (q2, q4, q5), T = 24.
    q = _f32(rng, 24, 3072)
    q_nope = q.view((128, 16, 24), (768, 12288), 0)
    q_rope = _f32(rng, 24, 16, 64)
    _same_bytes(concat(q_nope, q_rope, 0), ggml_ops.concat(q_nope, q_rope, 0, n_threads=4))


def test_concat_two_views_of_one_buffer_match_ggml(ggml, rng):
    # k_nope / v style: two views of one kv_f32 buffer [4096, n] at offsets 0 and 512 B (upstream facts §3.3 #13, #15)
    kv = _f32(rng, 6, 4096)
    k_nope = kv.view((128, 6, 16), (16384, 1024), 0)
    v = kv.view((128, 6, 16), (16384, 1024), 512)
    _same_bytes(concat(k_nope, v, 0), ggml_ops.concat(k_nope, v, 0))
    _same_bytes(concat(k_nope, v, 2), ggml_ops.concat(k_nope, v, 2))


def test_concat_keeps_nan_payloads_and_i32(ggml, rng):
    bits = rng.integers(0, 2**32, size=(3, 16), dtype=np.uint64).astype(np.uint32)
    bits[:, ::3] = 0x7F800001 + np.arange(6, dtype=np.uint32)[None, :]  # signalling NaNs with payloads
    a = Tensor.from_bytes(bits.view(np.uint8), "f32", (16, 3))
    b = _f32(rng, 3, 4)
    _same_bytes(concat(a, b, 0), ggml_ops.concat(a, b, 0))
    i = Tensor.from_numpy(rng.integers(-1000, 1000, (2, 3, 5)).astype(np.int32))
    j = Tensor.from_numpy(rng.integers(-1000, 1000, (2, 4, 5)).astype(np.int32))
    _same_bytes(concat(i, j, 1), ggml_ops.concat(i, j, 1))


def test_concat_f16_dim0_equals_upstream_element_path(ggml, rng):
    # Upstream copies f16 element by element; #253 copies rows: the same bytes for packed rows.
    a = Tensor.from_numpy(rng.standard_normal((4, 16, 128)).astype(np.float32), "f16")
    b = Tensor.from_numpy(rng.standard_normal((4, 16, 64)).astype(np.float32), "f16")
    _same_bytes(concat(a, b, 0), ggml_ops.concat(a, b, 0))


@pytest.mark.parametrize("type_", ["q8_0", "f16"])
def test_concat_any_rows_of_the_cache(rng, type_):
    # k = concat(k_nope [128, n_kv, 16], repeat(kv_cache_rope [64, n_kv, 1]), 0) (upstream facts §3.3 #14-#19). The
    # rope part is a view of the cache rows (576 values each) at byte offset row_size(512).
    n_kv, heads = 12, 16
    cache = _blocks(rng, "q8_0", (576, n_kv)) if type_ == "q8_0" else Tensor.from_numpy(
        rng.standard_normal((n_kv, 576)).astype(np.float32), "f16")
    rs = cache.nb[1]
    k_rope_src = cache.view((64, n_kv, 1), (rs, rs * n_kv), row_size(type_, 512))
    k_rope = repeat(k_rope_src, (64, n_kv, heads))
    k_nope = _blocks(rng, "q8_0", (128, n_kv, heads)) if type_ == "q8_0" else Tensor.from_numpy(
        rng.standard_normal((heads, n_kv, 128)).astype(np.float32), "f16")
    k = concat(k_nope, k_rope, 0)
    assert k.ne == (192, n_kv, heads, 1) and k.is_contiguous()
    # memcpy rule: dst row (i1, i2) = k_nope row (i1, i2) bytes, then cache row i1's bytes from row_size(512).
    r_nope, r_rope = row_size(type_, 128), row_size(type_, 64)
    cache_bytes = cache.data.reshape(n_kv, rs)
    nope_bytes = k_nope.data.reshape(heads, n_kv, r_nope)
    want = np.concatenate(
        [nope_bytes, np.broadcast_to(cache_bytes[None, :, row_size(type_, 512):], (heads, n_kv, r_rope))], axis=-1
    )
    assert np.array_equal(k.data.reshape(heads, n_kv, r_nope + r_rope), want)


def test_concat_block_types_from_the_registry(rng):
    for name, fmt in registry().items():
        if not fmt.is_quantized or fmt.type_size == 0:
            continue
        bs = fmt.block_size
        if fmt.row_meta_size:
            # q8_KV: each row starts with its own scale and sum, so joining rows' bytes is not a concat (ik_llama.cpp's
            # concat refuses the row-memcpy path for such types since #2232): refused, naming the metadata
            a = Tensor.from_bytes(fmt.random_rows(rng, 6, 2 * bs), name, (2 * bs, 3, 2))
            b = Tensor.from_bytes(fmt.random_rows(rng, 6, bs), name, (bs, 3, 2))
            with pytest.raises(ValueError, match="rows carry 8 bytes of metadata"):
                concat(a, b, 0)
            continue
        a, b = _blocks(rng, name, (2 * bs, 3, 2)), _blocks(rng, name, (bs, 3, 2))
        got = concat(a, b, 0).data.reshape(2, 3, -1)
        want = np.concatenate([a.data.reshape(2, 3, -1), b.data.reshape(2, 3, -1)], axis=-1)
        assert np.array_equal(got, want), name


def test_concat_versions():
    a, b = Tensor.zeros("q8_0", (32, 2)), Tensor.zeros("q8_0", (64, 2))
    assert Concat_253.eval(a, b, 0).ne == (96, 2, 1, 1)
    with pytest.raises(TypeError, match="before PR #253 only f32 and i32"):
        Concat_pre253.eval(a, b, 0)
    h = Tensor.zeros("f16", (8, 2))
    with pytest.raises(TypeError, match="before PR #253 only f32 and i32 can be concatenated, got f16"):
        Concat_pre253.eval(h, h, 0)
    f = Tensor.from_numpy(np.ones((2, 3), np.float32))
    assert np.array_equal(Concat_pre253.eval(f, f, 1).to_numpy(), np.ones((1, 1, 4, 3), np.float32))


def test_concat_bad_inputs():
    f = Tensor.zeros("f32", (8, 2))
    with pytest.raises(TypeError, match="concat: a and b must have the same type, got f32 and f16"):
        concat(f, Tensor.zeros("f16", (8, 2)), 0)
    with pytest.raises(ValueError, match=r"concat: a and b must agree in ne\[1\] \(dim is 0\), got 2 and 3"):
        concat(f, Tensor.zeros("f32", (8, 3)), 0)
    with pytest.raises(ValueError, match="concat: dim must be an integer in 0..3, got 4"):
        concat(f, f, 4)
    q = Tensor.zeros("q8_0", (32, 2))
    with pytest.raises(ValueError, match="concat: q8_0 tensors can be concatenated along dim 0 only"):
        concat(q, q, 1)
    with pytest.raises(ValueError, match=r"concat: a must have 4-byte elements in a row \(nb\[0\] == 4, got 32\)"):
        concat(f.transpose(), f.transpose(), 1)
    h = Tensor.zeros("f16", (8, 2)).transpose()
    with pytest.raises(ValueError, match="the elements of each row of a must be contiguous"):
        concat(h, h, 0)
    with pytest.raises(TypeError, match="concat: b must be an mlaref Tensor"):
        concat(f, np.zeros((2, 8), np.float32), 0)


# -- repeat ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("src_ne,dst_ne", [((64, 1, 9), (64, 16, 9)), ((5, 3, 1, 2), (10, 6, 4, 2)), ((7,), (21, 4))])
def test_repeat_matches_ggml(ggml, rng, type_, src_ne, dst_ne):
    a = Tensor.from_numpy(rng.standard_normal(tuple(reversed(src_ne))).astype(np.float32), type_)
    _same_bytes(repeat(a, dst_ne), ggml_ops.repeat(a, dst_ne))


def test_repeat_i32_and_strided_rows_match_ggml(ggml, rng):
    i = Tensor.from_numpy(rng.integers(-9, 9, (2, 3)).astype(np.int32))
    _same_bytes(repeat(i, (6, 4, 2)), ggml_ops.repeat(i, (6, 4, 2)))
    # the old sub-branch's repeat of the f32 rope view [64, 1, n_kv] with nb1 = nb2 = 2304
    # (upstream facts §3.3 #16', #17')
    kv = _f32(rng, 10, 576)
    view = kv.view((64, 1, 10), (2304, 2304), 2048)
    _same_bytes(repeat(view, (64, 16, 10)), ggml_ops.repeat(view, (64, 16, 10)))


def test_repeat_any_q8_0_rows(rng):
    # repeat_any: dst row (i1, i2, i3) = src row (i1 % ne01, i2 % ne02, i3 % ne03), row_size(ne00) bytes,
    # written ne0 / ne00 times one after the other.
    src = _blocks(rng, "q8_0", (64, 3, 1, 2))
    dst = repeat(src, (128, 6, 4, 2))
    rows = src.data.reshape(2, 1, 3, 68)
    want = np.empty((2, 4, 6, 136), np.uint8)
    for i3 in range(2):
        for i2 in range(4):
            for i1 in range(6):
                r = rows[i3 % 2, i2 % 1, i1 % 3]
                want[i3, i2, i1] = np.concatenate([r, r])
    assert np.array_equal(dst.data.reshape(want.shape), want)
    # the cache's rope view: 2 blocks (68 B) of each cell into 16 heads
    cache = _blocks(rng, "q8_0", (576, 5))
    view = cache.view((64, 5, 1), (612, 612 * 5), 544)
    k_rope = repeat(view, (64, 5, 16))
    assert np.array_equal(k_rope.data.reshape(16, 5, 68), np.broadcast_to(cache.data.reshape(5, 612)[:, 544:], (16, 5, 68)))


def test_repeat_versions():
    q = Tensor.zeros("q8_0", (32, 1))
    assert Repeat_253.eval(q, (64, 2)).ne == (64, 2, 1, 1)
    with pytest.raises(TypeError, match="before PR #253 only f32, i32, f16 and bf16 can be repeated, got q8_0"):
        Repeat_pre253.eval(q, (64, 2))
    f = Tensor.from_numpy(np.arange(3, dtype=np.float32))
    assert np.array_equal(Repeat_pre253.eval(f, (6, 2)).to_numpy()[0, 0], np.tile(np.arange(3, dtype=np.float32), (2, 2)))


def test_repeat_bad_inputs():
    f = Tensor.zeros("f32", (4, 3))
    with pytest.raises(ValueError, match=r"repeat: target ne\[1\] = 4 is not a multiple of src ne\[1\] = 3"):
        repeat(f, (8, 4))
    with pytest.raises(ValueError, match="the elements of each row of src must be contiguous"):
        repeat(f.transpose(), (3, 8))
    with pytest.raises(TypeError, match="repeat: b must be a Tensor or a shape"):
        repeat(f, "big")
    with pytest.raises(TypeError, match="repeat: src must be an mlaref Tensor"):
        repeat(np.zeros(3), (6,))
    with pytest.raises(ValueError, match=r"repeat: target ne\[0\] = 48 is not a multiple of src ne\[0\] = 32"):
        repeat(Tensor.zeros("q8_0", (32, 1)), (48, 1))


# -- cpy / cast / dup -----------------------------------------------------------------------------------


@pytest.mark.parametrize("src_t,dst_t", [("f32", "f16"), ("f16", "f32"), ("f32", "bf16"), ("bf16", "f32"),
                                         ("f16", "bf16"), ("bf16", "f16"), ("f32", "f32"), ("f16", "f16")])
def test_cast_element_types_match_ggml(ggml, rng, src_t, dst_t):
    x = (rng.standard_normal((3, 5, 67)) * np.exp(rng.uniform(-12, 12, (3, 5, 67)))).astype(np.float32)
    x[0, 0, :6] = [np.inf, -np.inf, 0.0, -0.0, 65519.0, 65520.0]
    x[0, 1, :4] = [1e-40, -3e-39, 6e-8, 2.98e-8]  # f32 and f16 subnormals / f16 underflow
    a = Tensor.from_numpy(x, src_t)
    _same_bytes(cast(a, dst_t), ggml_ops.cast(a, dst_t))
    _same_bytes(cast(a, dst_t), ggml_ops.cast(a, dst_t, n_threads=3))


def test_cast_nan_payloads_match_ggml(ggml, rng):
    bits = np.array([0x7F800001, 0xFFC00000, 0x7FBFFFFF, 0x7FC02000, 0xFF812345, 0x7F800000] * 6, np.uint32)
    a = Tensor.from_bytes(bits.view(np.uint8), "f32", (36,))
    # ggml-python's CPU code converts with the portable rule (NaN -> sign | 0x7E00); a build with F16C (such as
    # ik_llama.cpp with -march=native) keeps the top payload bits: the default.
    _same_bytes(cast(a, "f16", f16_soft=True), ggml_ops.cast(a, "f16"))
    f16c = cast(a, "f16").storage()[0, 0, 0]
    assert [int(v) for v in f16c[:6]] == [0x7E00, 0xFE00, 0x7FFF, 0x7E01, 0xFE09, 0x7C00]
    _same_bytes(cast(a, "bf16"), ggml_ops.cast(a, "bf16"))
    h = Tensor.from_bytes(np.array([0x7C01, 0xFE00, 0x7D55, 0xFC00] * 4, np.uint16).view(np.uint8), "f16", (16,))
    _same_bytes(cast(h, "f32"), ggml_ops.cast(h, "f32"))


def test_cpy_permuted_source_and_other_shape_match_ggml(ggml, rng):
    a = _f32(rng, 4, 6, 10, scale=100).permute(1, 0, 2, 3)  # non-contiguous: the per-element path
    _same_bytes(cast(a, "f16"), ggml_ops.cast(a, "f16"))
    _same_bytes(cast(a, "bf16"), ggml_ops.cast(a, "bf16"))
    _same_bytes(dup(a), ggml_ops.dup(a))
    # ggml_cpy into a tensor of another shape: values in logical order
    b = _f32(rng, 6, 8)
    for t in ("f16", "f32"):
        _same_bytes(cpy(b, Tensor.zeros(t, (12, 4))), ggml_ops.cpy(b, Tensor.zeros(t, (12, 4))))


def test_cpy_into_a_transposed_destination_matches_ggml(ggml, rng):
    # the TG path's kv_cache_trans = cont(transpose(view)): here cpy into a transposed f16/f32 destination
    a = _f32(rng, 6, 8)
    for t in ("f16", "f32", "bf16"):
        dst = Tensor.zeros(t, (6, 8)).transpose()  # ne [8, 6], nb0 = 12 or 24 bytes
        want = ggml_ops.cpy(a, dst)
        got = cpy(a, dst)
        assert got is dst and np.array_equal(got.raw(), want.raw())


def test_cpy_into_a_cache_view_touches_only_the_view(ggml, rng):
    # The cache store (upstream facts §3.3 #9-#10): cpy(kvr [576, T] f32, view of rows kv_head..kv_head+T-1 of kv_l).
    for type_ in ("f16", "q8_0"):
        kvr = _f32(rng, 8, 576)
        cache = Tensor.from_bytes(np.full(row_size(type_, 576) * 20, 0xA5, np.uint8), type_, (576, 20))
        view = cache.view((576, 8), (cache.nb[1],), 5 * cache.nb[1])
        cpy(kvr, view)
        rows = cache.data.reshape(20, -1)
        assert (rows[:5] == 0xA5).all() and (rows[13:] == 0xA5).all()
        assert np.array_equal(rows[5:13], ggml_ops.cast(kvr, type_).data.reshape(8, -1))


def test_cast_f32_to_q8_0_variants(ggml, rng):
    x = (rng.standard_normal((16, 576)) * 0.1).astype(np.float32)
    # blocks with amax = 127 (so 127/amax = 1/(amax/127) = 1) and exact .5 ties: x86 rounds to even, ref away.
    x[0, :32] = np.arange(32, dtype=np.float32) - 15.5
    x[0, 0] = 127.0
    a = Tensor.from_numpy(x)
    x86 = cast(a, "q8_0")
    _same_bytes(x86, ggml_ops.cast(a, "q8_0"))  # ggml's CPU from_float is the x86 variant
    _same_bytes(x86, ggml_ops.cast(a, "q8_0", n_threads=4))
    ref = cast(a, "q8_0", variant="ref")
    assert np.array_equal(ref.data.reshape(16, -1), ggml.from_float_ref("q8_0", x))
    assert not np.array_equal(ref.data, x86.data)
    q = x86.data.reshape(16, -1)[0, 2:34].view(np.int8)
    assert q[1] == -14 and ref.data.reshape(16, -1)[0, 2:34].view(np.int8)[1] == -15  # -14.5: even vs away


def test_cast_f16_to_q8_0_and_back_match_ggml(ggml, rng):
    h = Tensor.from_numpy(rng.standard_normal((4, 3, 192)).astype(np.float32), "f16")
    q = cast(h, "q8_0")
    _same_bytes(q, ggml_ops.cast(h, "q8_0"))
    _same_bytes(cast(q, "f32"), ggml_ops.cast(q, "f32"))
    # quant -> f32 for every registered block type upstream ggml also dequantizes
    for name in ("q4_0", "q4_K", "q6_K", "q8_0"):
        if name in registry():
            t = _blocks(rng, name, (256, 3))
            _same_bytes(cast(t, "f32"), ggml_ops.cast(t, "f32"))


def test_cast_f32_to_bf16_simd_row_model():
    # ggml_fp32_to_bf16_row with AVX512-BF16 flushes subnormals in full 32-chunks of a row, not in the tail.
    x = np.full((2, 40), 1e-39, np.float32)
    a = Tensor.from_numpy(x)
    got = cast(a, "bf16", bf16_simd=True).storage()[0, 0]
    assert (got[:, :32] == 0).all()
    assert (got[:, 32:] == fp.f32_to_bf16(np.float32(1e-39))).all() and got[0, 39] != 0
    assert (cast(a, "bf16").storage() != 0).all()  # scalar rule: rounds subnormals like other values


def test_cpy_bad_inputs():
    f = Tensor.zeros("f32", (64, 2))
    with pytest.raises(ValueError, match=r"cpy: src and dst must hold the same number of elements, got 128"):
        cpy(f, Tensor.zeros("f16", (64, 3)))
    with pytest.raises(TypeError, match="cpy: a q8_0 tensor can be copied only to f32 or q8_0, not f16"):
        cast(Tensor.zeros("q8_0", (64, 2)), "f16")
    with pytest.raises(ValueError, match="cpy: src rows of 48 values cannot be quantized to q8_0: ne"):
        cpy(Tensor.zeros("f32", (48, 2)), Tensor.zeros("q8_0", (96, 1)))
    with pytest.raises(ValueError, match="cpy: variant applies to a float -> block-type conversion only"):
        cast(f, "f16", variant="x86")
    with pytest.raises(ValueError, match="cpy: q8_0 has no quantize variant 'iqk'"):
        cast(f, "q8_0", variant="iqk")
    with pytest.raises(TypeError, match=r"cpy: i32 copies only to i32 \(got i32 -> f32\)"):
        cast(Tensor.zeros("i32", (4,)), "f32")
    with pytest.raises(ValueError, match="cpy: a q8_0 destination must be contiguous"):
        cpy(Tensor.zeros("f32", (32, 2)), Tensor.zeros("q8_0", (32, 8)).view((32, 2), (68,), 0))
    with pytest.raises(ValueError, match="cpy: bf16_simd applies to f32 -> bf16 only"):
        cast(f, "f16", bf16_simd=True)
    with pytest.raises(TypeError, match="cast: type must be a type name, got 1"):
        cast(f, 1)
    with pytest.raises(TypeError, match="dup: a must be an mlaref Tensor"):
        dup(f.data)
    with pytest.raises(ValueError, match="cpy: f16_soft applies to f32/bf16 -> f16 only"):
        cast(f, "bf16", f16_soft=True)


# -- get_rows -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_K", "q6_K"])
def test_get_rows_matches_ggml(ggml, rng, type_):
    if type_ not in registry() and type_ not in ("f32", "f16", "bf16"):
        pytest.skip(f"{type_} is not registered yet")
    if get_type(type_).is_quantized:
        a = _blocks(rng, type_, (256, 11, 3, 2))
    else:
        a = Tensor.from_numpy(rng.standard_normal((2, 3, 11, 256)).astype(np.float32), type_)
    rows = Tensor.from_numpy(rng.integers(0, 11, (2, 3, 7)).astype(np.int32))
    _same_bytes(get_rows(a, rows), ggml_ops.get_rows(a, rows))


def test_get_rows_token_embedding_values(rng):
    # inp_embd = get_rows(tok_embd [2048, vocab] q8_0, inp_tokens [T]): each row is the dequantized table row.
    x = rng.standard_normal((50, 64)).astype(np.float32)
    table = Tensor.from_bytes(quantize(x, "q8_0"), "q8_0", (64, 50))
    idx = np.array([3, 3, 49, 0, 17], np.int32)
    got = get_rows(table, Tensor.from_numpy(idx)).to_numpy()[0, 0]
    blocks = quantize(x, "q8_0").reshape(50, 2, 34)
    d = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)  # NumPy's f16 -> f32 is exact
    qs = blocks[:, :, 2:].view(np.int8).astype(np.float32)
    want = (qs * d).reshape(50, 64)[idx]
    assert np.array_equal(got, want)


def test_get_rows_bad_inputs():
    a = Tensor.zeros("f32", (8, 5))
    with pytest.raises(ValueError, match=r"get_rows: row index 5 is outside \[0, 5\)"):
        get_rows(a, Tensor.from_numpy(np.array([1, 5], np.int32)))
    with pytest.raises(TypeError, match="get_rows: rows must be of type i32, got f32"):
        get_rows(a, Tensor.zeros("f32", (2,)))
    with pytest.raises(ValueError, match=r"get_rows: rows must have shape \[n, a.ne\[2\], a.ne\[3\], 1\]"):
        get_rows(a, Tensor.zeros("i32", (2, 3)))
    with pytest.raises(ValueError, match="the elements of each row of a must be contiguous"):
        get_rows(a.transpose(), Tensor.zeros("i32", (2,)))
