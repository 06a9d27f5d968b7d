"""The per-call fast paths of codegen/kernels/rows.py keep their meaning: cached dispatch, reused threads, row views.

Dispatch decisions and resolved C functions are cached per process; these tests change the state a cache must
see (``dispatch.forced``, ``isa=``, ``MLAREF_ISA``, ``MLAREF_DISABLE_ISA``) after a cached call and check that the
next call follows it, and that results stay the bytes of the reference. No timing is asserted.
"""

from __future__ import annotations

import importlib
import os
import threading

import numpy as np
import pytest

from mlaref import reference as R
from mlaref.codegen import cpu, dispatch
from mlaref.codegen.kernels import pool as pool
from mlaref.codegen import kernels as K
from mlaref.reference.tensor import Tensor

ref_cpy = importlib.import_module("mlaref.reference.ops.cpy")
ref_concat = importlib.import_module("mlaref.reference.ops.concat")
ref_repeat = importlib.import_module("mlaref.reference.ops.repeat")


def _best(family="dequantize_row", type_x="q8_0"):
    return K.resolve(family, type_x, None, "ref")[0].isa


def _x(rng, rows=5, n=256):
    return (rng.standard_normal((rows, n)) * 3).astype(np.float32)


def test_cached_dispatch_follows_forced_context(rng):
    if _best() == "scalar":
        pytest.skip("only the scalar dequantize_row q8_0 kernel runs here (no AVX2/AVX-512)")
    data = R.quantize(_x(rng), "q8_0")
    want = R.dequantize(data, "q8_0")
    best = _best()
    assert np.array_equal(K.dequantize(data, "q8_0").view(np.uint8), want.view(np.uint8))
    with dispatch.forced("scalar"):
        assert _best() == "scalar"
        assert dispatch.choose("dequantize_row", "q8_0", None, "ref")[0].isa == "scalar"
        assert np.array_equal(K.dequantize(data, "q8_0").view(np.uint8), want.view(np.uint8))
    assert _best() == best


def test_cached_dispatch_follows_isa_argument():
    assert K.resolve("dequantize_row", "q8_0", None, "ref", isa="scalar")[0].isa == "scalar"
    assert K.resolve("dequantize_row", "q8_0", None, "ref")[0].isa == _best()
    spec = K.resolve("dequantize_row", "q8_0", None, "ref", kernel="mlaref_dequantize_row_q8_0__scalar_ref")[0]
    assert spec.name == "mlaref_dequantize_row_q8_0__scalar_ref"


def test_cached_dispatch_follows_environment(monkeypatch, rng):
    best = _best()
    if best == "scalar":
        pytest.skip("only the scalar dequantize_row q8_0 kernel runs here (no AVX2/AVX-512)")
    monkeypatch.setenv("MLAREF_DISABLE_ISA", best)
    assert _best() != best
    monkeypatch.setenv("MLAREF_DISABLE_ISA", "")
    assert _best() == best
    monkeypatch.setenv("MLAREF_ISA", "scalar")
    assert _best() == "scalar"
    x = _x(rng)
    assert np.array_equal(K.quantize(x, "q8_0", variant="x86"), R.quantize(x, "q8_0", variant="x86"))
    monkeypatch.delenv("MLAREF_ISA")
    assert _best() == best


def test_failures_are_not_cached(monkeypatch):
    """A forced ISA the CPU lacks raises on every call, before and after a successful call."""
    other = "neon" if cpu.host_arch_is_x86() else "avx2"
    for _ in range(2):
        with pytest.raises(dispatch.DispatchError, match="lacks"):
            with dispatch.forced(other):
                K.resolve("dequantize_row", "q8_0", None, "ref")
        assert K.resolve("dequantize_row", "q8_0", None, "ref")[0].isa == _best()
    monkeypatch.setenv("MLAREF_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown ISA"):
        K.resolve("dequantize_row", "q8_0", None, "ref")


def test_cache_clear_then_same_choice():
    first = dispatch.choose("quantize_row", "q8_0", None, "x86")
    dispatch.cache_clear()
    again = dispatch.choose("quantize_row", "q8_0", None, "x86")
    assert first[0] == again[0] and first[1] is again[1]


def test_thread_pool_is_reused_and_bytes_do_not_change(rng):
    x = _x(rng, rows=37, n=576)
    one = K.quantize(x, "q8_0", variant="x86")
    assert np.array_equal(K.quantize(x, "q8_0", variant="x86", n_threads=3), one)
    started = pool.workers()
    assert started >= 2
    assert np.array_equal(K.quantize(x, "q8_0", variant="x86", n_threads=2), one)
    assert pool.workers() == started
    assert np.array_equal(one, R.quantize(x, "q8_0", variant="x86"))


def test_pool_works_in_a_forked_child(rng):
    """A child of fork() has none of the parent's pool workers; its threaded calls start fresh ones."""
    x = _x(rng, rows=16, n=256)
    want = R.quantize(x, "q8_0")
    K.quantize(x, "q8_0", n_threads=2)  # the parent's pool is running
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if the threaded call gives the reference bytes
        ok = False
        try:
            ok = np.array_equal(K.quantize(x, "q8_0", n_threads=2), want)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_threaded_calls_from_many_threads(rng):
    """Several Python threads calling at once: one is served by the C pool, the others find it busy and run
    their parts in turn on their own thread; every call gets the reference bytes."""
    x = _x(rng, rows=16, n=512)
    want = R.quantize(x, "q8_0", variant="x86")
    got = [None] * 4

    def work(i):
        for _ in range(20):
            got[i] = K.quantize(x, "q8_0", variant="x86", n_threads=2 + i % 3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(g is not None and np.array_equal(g, want) for g in got)


def test_out_argument_with_row_stride(rng):
    x = _x(rng, rows=6, n=128)
    want = R.quantize(x, "q8_0", variant="x86")
    big = np.zeros((6, want.shape[1] + 10), dtype=np.uint8)
    out = big[:, :want.shape[1]]
    K.quantize(x, "q8_0", variant="x86", out=out)
    assert np.array_equal(out, want) and not big[:, want.shape[1]:].any()


def test_non_contiguous_input_rows(rng):
    x = _x(rng, rows=8, n=512)[::2, :256]
    assert np.array_equal(K.quantize(x, "q8_0"), R.quantize(np.ascontiguousarray(x), "q8_0"))
    data = R.quantize(_x(rng, rows=8, n=256), "q8_0")[1::3]
    assert np.array_equal(K.dequantize(data, "q8_0").view(np.uint8),
                          R.dequantize(np.ascontiguousarray(data), "q8_0").view(np.uint8))


@pytest.mark.parametrize("dst_type", ["q8_0", "q4_0"])
def test_cpy_of_a_strided_view_matches_the_reference(dst_type, rng):
    """cpy reads the rows of a view (row stride > row bytes, heads at their own stride) without gathering
    them row by row; the bytes equal the reference cpy of the same view."""
    full = Tensor.from_numpy(_x(rng, rows=24, n=576))
    row = full.nb[1]
    view = full.view((512, 4, 3, 1), (4, 2 * row, 8 * row, 24 * row), 64 * 4)
    got = K.cpy(view, dst_type)
    want = ref_cpy.cpy(view, dst_type)
    assert np.array_equal(got.raw(), want.raw())
    back = K.cpy(got, "f32")
    assert np.array_equal(back.raw(), ref_cpy.cpy(want, "f32").raw())


def test_repeat_and_concat_mla_shapes(rng):
    """The MLA K build: the rope part of cache rows repeated over heads, concatenated after k_nope."""
    n, heads = 7, 3
    cache = Tensor.from_numpy(rng.standard_normal((n, 576)).astype(np.float16))
    row = cache.nb[1]
    rope = cache.view((64, n, 1, 1), (2, row, row * n, row * n), 2 * 512)
    k_nope = Tensor.from_numpy(rng.standard_normal((heads, n, 128)).astype(np.float16))
    rep = K.repeat(rope, (64, n, heads, 1))
    assert np.array_equal(rep.raw(), ref_repeat.repeat(rope, (64, n, heads, 1)).raw())
    assert np.array_equal(K.concat(k_nope, rep, 0).raw(), ref_concat.concat(k_nope, rep, 0).raw())


def test_ggml_vec_dot_job_of_the_benchmark_equals_ggml(ggml, rng):
    """The pool's loop over ggml's vec_dot (the benchmark's ggml contender) gives ggml's own value for every
    (x row, y row) pair."""
    from mlaref.codegen.bench import kernels as B

    x = R.quantize(_x(rng, rows=3, n=128), "q8_0")
    y = R.quantize(_x(rng, rows=2, n=128), "q8_0", variant="x86")
    vd = ggml.lib().ggml_get_type_traits_cpu(ggml.ggml_type("q8_0")).contents.vec_dot
    out = np.full((3, 2), np.nan, dtype=np.float32)
    pool.run([pool.job("ggml_vec_dot", B._fn_addr(vd), pool.address(x), x.strides[0], 3, pool.address(y),
                       y.strides[0], 2, 128, pool.address(out), out.strides[0])])
    want = np.array([[ggml.vec_dot("q8_0", x[i], y[j], 128) for j in range(2)] for i in range(3)], np.float32)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


def test_compare_kernels_rows(ggml):
    from mlaref.codegen.bench import kernels as B

    rows = B.compare_kernels(types=["q8_0"], n_rows=4, n=64, threads=(1, 2), warmup=0, repeat=1)
    fams = {(r["family"], r["what"], r["plan"], r["n_threads"]) for r in rows}
    assert {("quantize", "q8_0", "x86", 1), ("quantize", "q8_0", "ref", 2), ("dequantize", "q8_0", "ref", 1),
            ("vec_dot", "q8_0.q8_0", "ggml_x86_avx2", 2)} <= fams
    for r in rows:
        if r["family"] in ("quantize", "dequantize", "vec_dot") and r["plan"] != "iqk" and "_x4" not in r["what"]:
            assert r["ggml"] is not None and r["vs_ggml"] > 0, r
    assert "vs ggml" in B.format_table(rows)
