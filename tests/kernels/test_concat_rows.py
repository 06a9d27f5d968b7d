"""concat_rows: the one-pass row concat kernel, and kernels.concat / kernels.repeat with out= and n_threads=."""

import importlib

import numpy as np
import pytest

from mlaref import reference as R
from mlaref.codegen import kernels as K
from mlaref.reference.tensor import Tensor

ref_concat = importlib.import_module("mlaref.reference.ops.concat")
ref_repeat = importlib.import_module("mlaref.reference.ops.repeat")

FAMILY = "concat_rows"


@pytest.mark.parametrize("stream", [0, 1])
def test_concat_rows_kernel(kernel_name, kt, rng, stream):
    """dst row (i1,i2,i3) = a row ++ b row at arbitrary byte strides of all three; the gaps stay untouched."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    _spec, fn, ffi = K.resolve("concat_rows", "bytes", None, "ref", kernel=kernel_name)
    for ra, rb, ne in [(34, 34, (3, 2, 2)), (1024, 128, (5, 3, 1)), (1, 7, (7, 1, 1)), (256, 128, (1, 1, 1)),
                       (18, 36, (4, 2, 3)), (0, 5, (2, 2, 1))]:
        def strides(row, pad):
            nb1 = row + pad
            return (nb1, nb1 * ne[0] + 3, (nb1 * ne[0] + 3) * ne[1] + 1)

        a_nb, b_nb = strides(ra, 7), strides(rb, 2)
        a = rng.integers(0, 256, size=a_nb[2] * ne[2] + 16, dtype=np.uint8)
        b = rng.integers(0, 256, size=b_nb[2] * ne[2] + 16, dtype=np.uint8)
        d_nb = strides(ra + rb, 5)
        total = d_nb[2] * ne[2]
        out = kt.Guarded(1, total, np.uint8)
        dst = out.array.reshape(-1)
        dst[...] = 0x5A
        fn(ffi.cast("uint8_t *", dst.ctypes.data), ffi.cast("const uint8_t *", a.ctypes.data),
           ffi.cast("const uint8_t *", b.ctypes.data), ra, rb, *ne, *a_nb, *b_nb, *d_nb, stream)
        out.check()
        want = np.full(total, 0x5A, dtype=np.uint8)
        for i3 in range(ne[2]):
            for i2 in range(ne[1]):
                for i1 in range(ne[0]):
                    d0 = i1 * d_nb[0] + i2 * d_nb[1] + i3 * d_nb[2]
                    a0 = i1 * a_nb[0] + i2 * a_nb[1] + i3 * a_nb[2]
                    b0 = i1 * b_nb[0] + i2 * b_nb[1] + i3 * b_nb[2]
                    want[d0:d0 + ra] = a[a0:a0 + ra]
                    want[d0 + ra:d0 + ra + rb] = b[b0:b0 + rb]
        kt.assert_same_bytes(dst, want, max(ra + rb, 1), f"{kernel_name} rows {ra}+{rb} ne {ne} stream {stream}")


STREAM_TEST_BYTES = 4 << 20  # an output several times the 4 KiB staging span and the L2


@pytest.mark.parametrize("ra,rb,pad", [(256, 128, 0), (250, 131, 3), (64, 8, 1)])
def test_concat_rows_streaming_output(kernel_name, kt, rng, ra, rb, pad):
    """A large output with ``stream`` (the x86 kernels write it with non-temporal stores): rows aligned to the
    vector width, rows straddling it (ragged heads and tails), rows shorter than a vector; gaps untouched."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    _spec, fn, ffi = K.resolve("concat_rows", "bytes", None, "ref", kernel=kernel_name)
    d_nb1 = ra + rb + pad
    ne1 = STREAM_TEST_BYTES // (ra + rb) + 3
    a = rng.integers(0, 256, size=(ne1, ra), dtype=np.uint8)
    b = rng.integers(0, 256, size=(ne1, rb + 1), dtype=np.uint8)  # a strided source
    total = d_nb1 * ne1
    out = kt.Guarded(1, total + 1, np.uint8)
    dst = out.array.reshape(-1)[1:]  # one byte past a 64-byte boundary
    dst[...] = 0x5A
    fn(ffi.cast("uint8_t *", dst.ctypes.data), ffi.cast("const uint8_t *", a.ctypes.data),
       ffi.cast("const uint8_t *", b.ctypes.data), ra, rb, ne1, 1, 1, ra, ra * ne1, ra * ne1,
       rb + 1, (rb + 1) * ne1, (rb + 1) * ne1, d_nb1, total, total, 1)
    out.check()
    want = np.full((ne1, d_nb1), 0x5A, dtype=np.uint8)
    want[:, :ra], want[:, ra:ra + rb] = a, b[:, :rb]
    kt.assert_same_bytes(dst, want.reshape(-1), d_nb1, f"{kernel_name} rows {ra}+{rb} x {ne1}")


def _mla_k_parts(rng, type_name, n_kv=5, heads=3):
    """k_nope (128 per head) and the rope part (64) of one f16/q8_0 cache row of 576, viewed in place."""
    cache = Tensor.from_numpy(rng.standard_normal((n_kv, 576)).astype(np.float32), type=type_name)
    row = cache.nb[1]
    rope = cache.view((64, n_kv, 1, 1), (cache.nb[0], row, row * n_kv, row * n_kv), R.get_type(type_name).row_size(512))
    k_nope = Tensor.from_numpy(rng.standard_normal((heads, n_kv, 128)).astype(np.float32), type=type_name)
    return cache, rope, k_nope


@pytest.mark.parametrize("type_name", ["f16", "q8_0"])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 7])
def test_mla_k_build_threads_and_out(type_name, n_threads, rng):
    """repeat(rope over heads) then concat(k_nope, rope) along dim 0: equal to the reference for every thread
    count, into fresh tensors and into caller buffers (``out=``) placed inside a larger poisoned buffer."""
    _cache, rope, k_nope = _mla_k_parts(rng, type_name)
    target = (64, rope.ne[1], k_nope.ne[2], 1)
    want_rep = ref_repeat.repeat(rope, target)
    got_rep = K.repeat(rope, target, n_threads=n_threads)
    assert np.array_equal(got_rep.raw(), want_rep.raw())
    want = ref_concat.concat(k_nope, want_rep, 0)
    got = K.concat(k_nope, got_rep, 0, n_threads=n_threads)
    assert got.ne == want.ne and np.array_equal(got.raw(), want.raw())

    big = np.full(want.nbytes() + 96, 0xA5, dtype=np.uint8)
    out = Tensor(type_name, want.ne, want.nb, big, 32)
    assert K.concat(k_nope, got_rep, 0, n_threads=n_threads, out=out) is out
    assert np.array_equal(out.raw(), want.raw())
    assert np.all(big[:32] == 0xA5) and np.all(big[32 + want.nbytes():] == 0xA5)
    rep_out = Tensor.empty(type_name, target)
    K.repeat(rope, target, n_threads=n_threads, out=rep_out)
    assert np.array_equal(rep_out.raw(), want_rep.raw())


@pytest.mark.parametrize("llc", [1 << 10, 1 << 40])
def test_mla_k_build_streamed_or_not(llc, rng, monkeypatch):
    """The ops choose streaming stores against the last-level cache size (a tiny cache: every op streams; a huge
    one: none does); the bytes are the reference's either way, for 1 and 2 threads."""
    from mlaref.codegen import cpu

    monkeypatch.setattr(cpu, "llc_bytes", lambda: llc)
    assert K.streams(1 << 20) == (llc == 1 << 10)
    _cache, rope, k_nope = _mla_k_parts(rng, "f16", n_kv=300, heads=5)
    target = (64, rope.ne[1], k_nope.ne[2], 1)
    want_rep = ref_repeat.repeat(rope, target)
    want = ref_concat.concat(k_nope, want_rep, 0)
    for t in (1, 2):
        rep = K.repeat(rope, target, n_threads=t)
        assert np.array_equal(rep.raw(), want_rep.raw())
        assert np.array_equal(K.concat(k_nope, rep, 0, n_threads=t).raw(), want.raw())
        assert np.array_equal(K.cpy(want, "f16").raw(), want.raw())


def test_repeat_tiles_split_over_threads(rng):
    """Tiles over dims 1-3 and a row repeat in ne0, spread over threads: the reference's bytes."""
    src = Tensor.from_numpy(rng.standard_normal((2, 3, 2, 64)).astype(np.float32), type="q8_0")
    target = (128, 4, 9, 4)
    want = ref_repeat.repeat(src, target)
    for t in (1, 2, 5):
        assert np.array_equal(K.repeat(src, target, n_threads=t).raw(), want.raw()), t


def test_out_on_reference_paths(rng):
    """f32 concat (the element path, any dim) runs the reference and still honours out=."""
    a = Tensor.from_numpy(rng.standard_normal((2, 3, 4)).astype(np.float32))
    b = Tensor.from_numpy(rng.standard_normal((2, 5, 4)).astype(np.float32))
    want = ref_concat.concat(a, b, 1)
    out = Tensor.empty("f32", want.ne)
    assert K.concat(a, b, 1, out=out) is out
    assert np.array_equal(out.raw(), want.raw())


def test_bad_out(rng):
    _cache, rope, k_nope = _mla_k_parts(rng, "f16")
    rep = K.repeat(rope, (64, rope.ne[1], k_nope.ne[2], 1))
    ne = (192, rope.ne[1], k_nope.ne[2], 1)
    with pytest.raises(ValueError, match="out must be a f16 tensor of ne"):
        K.concat(k_nope, rep, 0, out=Tensor.empty("f16", (191,) + ne[1:]))
    with pytest.raises(ValueError, match="out must be a f16 tensor"):
        K.concat(k_nope, rep, 0, out=Tensor.empty("q8_0", ne))
    with pytest.raises(TypeError, match="out must be a Tensor"):
        K.concat(k_nope, rep, 0, out=np.empty(10, np.uint8))
    ro = Tensor.empty("f16", ne)
    ro.data.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        K.concat(k_nope, rep, 0, out=ro)
    # out placed over a source's bytes
    shared = np.zeros(k_nope.nbytes() + Tensor.empty("f16", ne).nbytes(), np.uint8)
    a_in = Tensor("f16", k_nope.ne, k_nope.nb, shared, 0)
    a_in.data[:k_nope.nbytes()] = k_nope.raw().reshape(-1)
    over = Tensor("f16", ne, Tensor.empty("f16", ne).nb, shared, k_nope.nbytes() // 2)
    with pytest.raises(ValueError, match="out overlaps a"):
        K.concat(a_in, rep, 0, out=over)
    with pytest.raises(ValueError, match="n_threads"):
        K.repeat(rope, (64, rope.ne[1], 2, 1), n_threads=0)
    strided = Tensor("f16", ne, (2, 2 * 200, 2 * 200 * ne[1], 2 * 200 * ne[1] * ne[2]),
                     np.zeros(2 * 200 * ne[1] * ne[2], np.uint8), 0)
    with pytest.raises(ValueError, match="out must be contiguous"):
        K.concat(k_nope, rep, 0, out=strided)
