"""cast_rows kernels (ggml_cast / ggml_cpy with f32 on one side, over strided 3-D rows) against the reference cpy."""

import numpy as np
import pytest

from mlaref import reference as R
from mlaref.codegen import kernels as K
from mlaref.codegen.kernels import pool
from mlaref.codegen.kernels import rows
from mlaref.reference.ops.cpy import cpy as ref_cpy
from mlaref.reference.tensor import Tensor

FAMILY = "cast_rows"
GUARD = 0xA5


def _specials(rng, n_rows: int, n: int) -> np.ndarray:
    """Normal values at several scales, f16 subnormals, ties of f16 rounding, +-inf, NaN, +-0, f16 overflow."""
    x = rng.standard_normal((n_rows, n)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-6, 5, size=(n_rows, 1)).astype(np.float32)
    flat = x.reshape(-1)
    extra = np.array([np.inf, -np.inf, 0.0, -0.0, 65520.0, -65504.0, 1e-7, 6e-8, 1.0 + 2.0 ** -11,
                      1.0 + 3 * 2.0 ** -11, 2.0 ** -24, 3e38], dtype=np.float32)
    flat[:extra.size] = extra[:flat.size]
    if flat.size > extra.size:
        flat[extra.size] = np.nan
    return x


def _strided_source(x: np.ndarray, type_name: str, ne, pad_bytes: int) -> Tensor:
    """A ``[n, ne1, ne2]`` tensor of ``type_name`` holding the rows of ``x`` (``(ne2, ne1, n)``), with gaps between
    rows and dims 1 and 2 swapped in memory (as the K/V views of kv_f32: a head's row every n_head rows)."""
    n, ne1, ne2 = ne
    enc = Tensor.from_numpy(x.reshape(-1, n), type_name)
    row = enc.row_size()
    dense = enc.data[enc.offset: enc.offset + row * ne1 * ne2].reshape(ne2, ne1, row)
    nb2 = row + pad_bytes
    nb1 = nb2 * ne2
    buf = np.full(nb1 * ne1 + 64, GUARD, dtype=np.uint8)
    for i2 in range(ne2):
        for i1 in range(ne1):
            buf[i1 * nb1 + i2 * nb2: i1 * nb1 + i2 * nb2 + row] = dense[i2, i1]
    return Tensor(type_name, (n, ne1, ne2, 1), (enc.nb[0], nb1, nb2, nb1 * ne1), buf, 0)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_cast_rows(kernel_name, kt, rng, n_threads):
    """Every kernel on strided 3-D sources, MLA rows (576, 192, 128) and block tails: the reference cpy's bytes
    (f16 / bf16 with inf, NaN, subnormals and rounding ties), guard bytes after the destination untouched, the
    same bytes for every thread count."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    tx, ty = k["type_x"], k["type_y"]
    block = max(R.get_type(tx).block_size, R.get_type(ty).block_size, 1)
    for n, ne1, ne2 in [(576, 3, 2), (192, 5, 3), (128, 7, 2), (block, 1, 1), (3 * max(block, 11), 2, 5)]:
        # q8_0 of a block holding inf or NaN is no defined value (its scale is inf): finite quantizer inputs there
        x = (kt.quant_inputs(rng, ne1 * ne2, n) if "q8_0" in (tx, ty) else _specials(rng, ne1 * ne2, n))
        x = x.reshape(ne2, ne1, n)
        src = _strided_source(x, tx, (n, ne1, ne2), pad_bytes=8)
        want = ref_cpy(src, Tensor.empty(ty, src.ne))
        total = want.nbytes()
        buf = np.full(total + 64, GUARD, dtype=np.uint8)
        dst = Tensor(ty, want.ne, want.nb, buf, 0)
        pool.run(rows.cast_jobs(src, dst, kernel=kernel_name, n_threads=n_threads))
        assert np.all(buf[total:] == GUARD), f"{kernel_name}: wrote past the destination"
        kt.assert_same_bytes(buf[:total], want.raw(), R.get_type(ty).type_size, f"{kernel_name} n={n}")


def test_cpy_runs_float_casts_on_the_kernel(rng):
    """kernels.cpy: f32 <-> f16 / bf16 on cast_rows (a strided f32 view: the reference's bytes)."""
    x = rng.standard_normal((4, 6, 192)).astype(np.float32)
    base = Tensor.from_numpy(x)
    view = Tensor("f32", (128, 6, 4, 1), base.nb, base.data, base.offset + 4 * 64)
    for ty in ("f16", "bf16"):
        got = K.cpy(view, ty, n_threads=2)
        assert np.array_equal(got.raw(), ref_cpy(view, ty).raw()), ty
        back = K.cpy(got, "f32")
        assert np.array_equal(back.raw(), ref_cpy(got, "f32").raw()), ty


def test_cast_jobs_refuse_bad_arguments(rng):
    a = Tensor.from_numpy(rng.standard_normal((4, 64)).astype(np.float32))
    with pytest.raises(ValueError, match="no cast_rows kernel for f16 -> q8_0"):
        rows.cast_jobs(Tensor.empty("f16", a.ne), Tensor.empty("q8_0", a.ne))
    with pytest.raises(ValueError, match="one shape"):
        rows.cast_jobs(a, Tensor.empty("f16", (32, 8)))
    odd = Tensor("f32", (32, 4, 1, 1), (4, 129, 516, 516), np.zeros(600, np.uint8), 0)
    with pytest.raises(ValueError, match="4-byte aligned"):
        rows.cast_jobs(odd, Tensor.empty("f16", odd.ne))
    with pytest.raises(ValueError, match="out overlaps|overlaps"):
        rows.cast_jobs(a, Tensor("f16", a.ne, Tensor.empty("f16", a.ne).nb, a.data, 0))
    ro = Tensor.empty("f16", a.ne)
    ro.data.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        rows.cast_jobs(a, ro)


def test_run_steps_checks_its_arrays():
    jobs = pool.jobs_array([pool.job("memcpy", 0, 0, 0, 0)])
    with pytest.raises(ValueError, match="take all"):
        pool.run_steps(jobs, np.array([2], np.int32))
    with pytest.raises(ValueError, match="int32"):
        pool.run_steps(jobs, np.array([1], np.int64))
    bad = jobs.copy()
    bad[0, 0] = 99
    with pytest.raises(ValueError, match="unknown kind"):
        pool.run_steps(bad, np.array([1], np.int32))


def test_cast_jobs_walk_the_source_rows_in_memory_order():
    """The K/V cast of the MLA layer (kv_f32's view ``[128, n_kv, 16]``: nb1 a 16 KB cell row, nb2 a head's 1 KB
    in it): the kernel's innermost dim is the head, its outermost the (absent) dim 3, and the destination's
    strides move along; split over threads by cells."""
    n_kv, heads = 8, 4
    kv = Tensor.zeros("f32", (2 * 128 * heads, n_kv, 1, 1))
    view = Tensor("f32", (128, n_kv, heads, 1), (4, kv.nb[1], 256 * 4, kv.nb[1] * n_kv), kv.data, 128 * 4)
    dst = Tensor.empty("f16", view.ne)
    (one,) = rows.cast_jobs(view, dst)
    ne, s_nb, d_nb = one[5:8], one[8:11], one[11:14]
    assert ne == [heads, n_kv, 1] and s_nb == [1024, kv.nb[1], kv.nb[1] * n_kv]
    assert d_nb == [dst.nb[2], dst.nb[1], dst.nb[3]]
    two = rows.cast_jobs(view, dst, n_threads=2)
    assert [j[5:8] for j in two] == [[heads, n_kv // 2, 1]] * 2
    assert two[1][3] - two[0][3] == kv.nb[1] * n_kv // 2  # the second job starts at the middle cell
