"""copy_rows: the strided row-copy kernel, and concat / repeat / cpy built on it against mlaref.reference.ops."""

import importlib

import numpy as np
import pytest

from mlaref import reference as R
from mlaref.codegen import kernels as K

FAMILY = "copy_rows"


@pytest.mark.parametrize("stream", [0, 1])
def test_copy_rows_kernel(kernel_name, kt, rng, stream):
    """dst row (i1,i2,i3) = n_rep copies of src row (i1,i2,i3) at arbitrary byte strides; gaps untouched; the
    same bytes with and without streaming stores (``stream``), and for rows back to back on both sides."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    spec, fn, ffi = K.resolve("copy_rows", "bytes", None, "ref", kernel=kernel_name)
    for row_bytes, n_rep, ne, gap in [(34, 1, (3, 2, 2), 7), (68, 16, (2, 3, 1), 7), (1, 5, (7, 1, 1), 7),
                                      (1152, 1, (1, 1, 1), 7), (18, 3, (4, 2, 3), 7), (40, 1, (5, 2, 2), 0),
                                      (600, 1, (3, 2, 1), 0)]:
        s_nb1 = row_bytes + gap  # gap 0 and n_rep 1: back-to-back rows on both sides, copied as one run
        s_nb = (s_nb1, s_nb1 * ne[0] + 3, (s_nb1 * ne[0] + 3) * ne[1] + 1)
        src = rng.integers(0, 256, size=s_nb[2] * ne[2] + 16, dtype=np.uint8)
        d_nb1 = row_bytes * n_rep + (5 if gap else 0)
        d_nb = (d_nb1, d_nb1 * ne[0] + 2, (d_nb1 * ne[0] + 2) * ne[1])
        total = d_nb[2] * ne[2]
        out = kt.Guarded(1, total, np.uint8)
        dst = out.array.reshape(-1)
        dst[...] = 0x5A
        fn(ffi.cast("uint8_t *", dst.ctypes.data), ffi.cast("const uint8_t *", src.ctypes.data), row_bytes, n_rep,
           *ne, *s_nb, *d_nb, stream)
        out.check()
        want = np.full(total, 0x5A, dtype=np.uint8)
        for i3 in range(ne[2]):
            for i2 in range(ne[1]):
                for i1 in range(ne[0]):
                    s0 = i1 * s_nb[0] + i2 * s_nb[1] + i3 * s_nb[2]
                    d0 = i1 * d_nb[0] + i2 * d_nb[1] + i3 * d_nb[2]
                    for r in range(n_rep):
                        want[d0 + r * row_bytes : d0 + (r + 1) * row_bytes] = src[s0 : s0 + row_bytes]
        kt.assert_same_bytes(dst, want, max(row_bytes, 1),
                             f"{kernel_name} rows {row_bytes}x{n_rep} ne {ne} gap {gap} stream {stream}")


@pytest.mark.parametrize("row_bytes,n_rep,ne2", [(1152, 1, 1), (130, 3, 1), (128, 1, 16)])
def test_copy_rows_streaming_output(kernel_name, kt, rng, row_bytes, n_rep, ne2):
    """A large output with ``stream`` (non-temporal stores on x86, through the staging span): MLA cache rows,
    ragged repeated rows, the rope part broadcast over 16 heads; the destination starts one byte past a 64-byte
    boundary, so every row has a ragged head."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    spec, fn, ffi = K.resolve("copy_rows", "bytes", None, "ref", kernel=kernel_name)
    ne1 = (4 << 20) // (row_bytes * n_rep * ne2) + 5
    s_nb1 = row_bytes + 64
    src = rng.integers(0, 256, size=(ne1, s_nb1), dtype=np.uint8)
    d_nb1 = row_bytes * n_rep + 1
    total = d_nb1 * ne1 * ne2
    out = kt.Guarded(1, total + 1, np.uint8)
    dst = out.array.reshape(-1)[1:]
    dst[...] = 0x5A
    fn(ffi.cast("uint8_t *", dst.ctypes.data), ffi.cast("const uint8_t *", src.ctypes.data), row_bytes, n_rep,
       ne1, ne2, 1, s_nb1, 0, 0, d_nb1, d_nb1 * ne1, total, 1)
    out.check()
    want = np.full((ne2, ne1, d_nb1), 0x5A, dtype=np.uint8)
    want[:, :, :row_bytes * n_rep] = np.tile(src[:, :row_bytes], (1, n_rep))[None]
    kt.assert_same_bytes(dst, want.reshape(-1), d_nb1, f"{kernel_name} rows {row_bytes}x{n_rep} heads {ne2}")


@pytest.mark.parametrize("stream", [0, 1])
def test_copy_rows_broadcast_over_dim2(kernel_name, kt, rng, stream):
    """A source stride of 0 in dim 2 (repeat over heads) takes the blocked order: 1, 64 +- 1 and 130 rows (blocks
    and a tail), rows of 3, 128 (inline chunks), 520 (memcpy) bytes; every head gets the same rows."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    spec, fn, ffi = K.resolve("copy_rows", "bytes", None, "ref", kernel=kernel_name)
    for row_bytes, ne1, ne2 in [(128, 130, 3), (3, 63, 2), (128, 65, 16), (520, 64, 2), (128, 1, 5)]:
        s_nb1 = row_bytes + 1024  # a strided view: the rope part of a 576-wide cache row
        src = rng.integers(0, 256, size=s_nb1 * ne1, dtype=np.uint8)
        d_nb = (row_bytes, row_bytes * ne1, row_bytes * ne1 * ne2)
        out = kt.Guarded(1, d_nb[2], np.uint8)
        dst = out.array.reshape(-1)
        fn(ffi.cast("uint8_t *", dst.ctypes.data), ffi.cast("const uint8_t *", src.ctypes.data), row_bytes, 1,
           ne1, ne2, 1, s_nb1, 0, 0, *d_nb, stream)
        out.check()
        rows = src.reshape(ne1, s_nb1)[:, :row_bytes]
        want = np.broadcast_to(rows, (ne2, ne1, row_bytes)).reshape(-1)
        kt.assert_same_bytes(dst, want, row_bytes,
                             f"{kernel_name} broadcast {row_bytes} B x {ne1} rows x {ne2} stream {stream}")


def _tensor_api():
    try:
        concat = importlib.import_module("mlaref.reference.ops.concat")
        cpy = importlib.import_module("mlaref.reference.ops.cpy")
        repeat = importlib.import_module("mlaref.reference.ops.repeat")
        from mlaref.reference.tensor import Tensor
    except ImportError as exc:  # pragma: no cover - the tensor model is another helper's file
        pytest.skip(f"mlaref.reference.tensor / ops not available ({exc})")
    return Tensor, concat, repeat, cpy


@pytest.mark.parametrize("type_name", ["q8_0", "f16", "q4_0", "iq4_nl", "q6_K"])
def test_concat_dim0_mla_rows(type_name, rng):
    """The FlashMLA-2 cache row: 512 latent values ++ 64 rope values per (cell, head), as concat_any does it."""
    Tensor, concat, _, _ = _tensor_api()
    bs = R.get_type(type_name).block_size
    n_a, n_b = (512, 64) if bs <= 64 else (512, 256)
    a = Tensor.from_numpy(rng.standard_normal((2, 3, n_a)).astype(np.float32), type=type_name)
    b = Tensor.from_numpy(rng.standard_normal((2, 3, n_b)).astype(np.float32), type=type_name)
    want = concat.concat(a, b, 0)
    got = K.concat(a, b, 0)
    assert got.ne == want.ne and got.type == want.type
    assert np.array_equal(got.raw(), want.raw())


@pytest.mark.parametrize("type_name", ["q8_0", "f16", "bf16", "q4_K"])
def test_repeat_rows(type_name, rng):
    """repeat_any: the 2 rope blocks of a cell copied into 16 heads, and tiling over dims 1-3."""
    Tensor, _, repeat, _ = _tensor_api()
    bs = R.get_type(type_name).block_size
    n0 = 64 if bs <= 64 else 256
    src = Tensor.from_numpy(rng.standard_normal((1, 2, 3, n0)).astype(np.float32), type=type_name)
    for target in [(n0 * 16, 3, 2, 1), (n0, 6, 4, 2), (n0 * 2, 3, 2, 3)]:
        want = repeat.repeat(src, target)
        got = K.repeat(src, target)
        assert got.ne == want.ne
        assert np.array_equal(got.raw(), want.raw()), target


@pytest.mark.parametrize("src_type,dst_type", [("q8_0", "q8_0"), ("f16", "f16"), ("f32", "q8_0"), ("f16", "q8_0"),
                                               ("q8_0", "f32"), ("q4_K", "f32"), ("f32", "f16")])
def test_cpy(src_type, dst_type, rng):
    Tensor, _, _, cpy = _tensor_api()
    src = Tensor.from_numpy(rng.standard_normal((2, 4, 256)).astype(np.float32), type=src_type)
    want = cpy.cpy(src, dst_type)
    got = K.cpy(src, dst_type, n_threads=2)
    assert got.type == want.type and got.ne == want.ne
    assert np.array_equal(got.raw(), want.raw())
