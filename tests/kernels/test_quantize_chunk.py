"""quantize_chunk kernels (the model quantizers of iq4_nl, q4_K and q6_K) against mlaref.reference.quantize(variant=
"model") with and without an imatrix, and against upstream ggml's ``ggml_quantize_chunk`` on the conformance cases:
bit-exact, guarded, strided, independent of the thread count."""

import numpy as np
import pytest

from mlaref import reference as R
from mlaref.codegen import cpu
from mlaref.codegen import kernels as K
from mlaref.codegen.conform import caseset
from mlaref.codegen.conform.inputs import make_inputs

FAMILY = "quantize_chunk"


def _imatrices(rng, n: int) -> dict:
    """None; all ones (with an imatrix the weights are qw*sqrt(sigma2 + x^2), not the None path's, and q4_K switches
    solvers: the kernels must not mix them up); random with exact zeros (zero-weight groups: the D = 0, suml2 = 0
    and 0/0 paths); huge (the sums overflow)."""
    return {
        "none": None,
        "ones": np.ones(n, np.float32),
        "zeros20": (rng.random(n) * (rng.random(n) > 0.2)).astype(np.float32),
        "huge": (rng.random(n) * np.float32(1e30)).astype(np.float32),
    }


def _edge_rows(kt, rng, n: int) -> np.ndarray:
    """Rows of ``n`` values that are hard cases for the searches: the shared quantizer inputs (scales 1e-3..1e3, an
    all-zero block, .5 ties, equal magnitudes of both signs, a 1e-6 row), all-equal rows, all-zero, values below the
    1e-15 group threshold and subnormal ones, huge ones (x*x overflows to inf), mixed magnitudes, a lone nonzero,
    heavy tails and a one-sided uniform."""
    rows = list(kt.quant_inputs(rng, 6, n))
    rows += [np.full(n, 0.75, np.float32), np.full(n, -3.0e3, np.float32), np.zeros(n, np.float32)]
    rows += [(rng.standard_normal(n) * 1e-16).astype(np.float32), (rng.standard_normal(n) * 1e-40).astype(np.float32)]
    rows.append((rng.standard_normal(n) * 1e25).astype(np.float32))
    mixed = rng.standard_normal(n).astype(np.float32)
    mixed[::7] *= np.float32(1e20)
    mixed[3::11] = 0
    rows.append(mixed)
    lone = np.zeros(n, np.float32)
    lone[n // 3] = -2.5
    rows.append(lone)
    rows.append(rng.standard_t(2, size=n).astype(np.float32))
    rows.append(rng.uniform(-1, 3, size=n).astype(np.float32))
    return np.stack(rows)


def _check(kt, kernel_name, fmt, x, im, label, n_threads=1):
    """The kernel's bytes (strided input, guarded output) equal the reference's."""
    n_rows, n = x.shape
    x_big = np.full((n_rows, n + 3), np.nan, dtype=np.float32)
    x_big[:, :n] = x
    with np.errstate(all="ignore"):
        want = R.quantize(x, fmt.name, variant="model", imatrix=im)
    out = kt.Guarded(n_rows, want.shape[1], np.uint8)
    K.quantize(x_big[:, :n], fmt.name, variant="model", imatrix=im, kernel=kernel_name, n_threads=n_threads,
               out=out.array)  # strided rows; the NaN padding must never be read
    out.check()
    kt.assert_same_bytes(out.array, want, fmt.type_size, f"{kernel_name} {label}")


@pytest.mark.parametrize("n_rows", [1, 3, 8])
def test_quantize_chunk_random_rows(kernel_name, kt, rng, n_rows):
    """Random rows at scales 1e-4..1e3, several row lengths, every imatrix."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    fmt = kt.require_reference(k["type_x"])
    for n in kt.row_sizes(fmt.block_size)[:4]:
        x = (rng.standard_normal((n_rows, n)) * np.float32(10.0) ** rng.integers(-4, 4, size=(n_rows, 1)))
        for label, im in _imatrices(rng, n).items():
            _check(kt, kernel_name, fmt, x.astype(np.float32), im, f"n={n} rows={n_rows} imatrix={label}")


def test_quantize_chunk_edge_rows(kernel_name, kt, rng):
    """Zeros, all-equal rows, tiny/subnormal and huge values, lone nonzeros, heavy tails; every imatrix."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    fmt = kt.require_reference(k["type_x"])
    n = 2 * max(256, fmt.block_size)
    x = _edge_rows(kt, rng, n)
    for label, im in _imatrices(rng, n).items():
        _check(kt, kernel_name, fmt, x, im, f"edge rows imatrix={label}")


def test_quantize_chunk_threads(kernel_name, kt, rng):
    """3 threads on 7 rows give the one-thread bytes (each row is one thread's)."""
    k = kt.manifest_kernels()[kernel_name]
    kt.require_isa(k["isa"])
    fmt = kt.require_reference(k["type_x"])
    x = rng.standard_normal((7, 512)).astype(np.float32)
    im = rng.random(512).astype(np.float32)
    _check(kt, kernel_name, fmt, x, im, "7 rows on 3 threads", n_threads=3)


def _model_cases():
    return [c for c in caseset.default_cases()
            if c.op == "quantize" and c.params["variant"] == "model" and c.params["type"] in ("iq4_nl", "q4_K", "q6_K")]


@pytest.mark.ggml
@pytest.mark.parametrize("case", _model_cases(), ids=lambda c: c.id)
def test_quantize_chunk_matches_ggml_on_conformance_cases(ggml, kt, case):
    """Every ISA's kernel gives the bytes of upstream ggml's ggml_quantize_chunk on the conformance-case inputs, and
    on the edge rows above."""
    t = case.params["type"]
    fmt = R.get_type(t)
    inp = make_inputs(case.inputs)
    x, im = inp["x"], inp.get("imatrix")
    edge = _edge_rows(kt, np.random.default_rng(7), x.shape[1])
    names = [n for n, k in kt.manifest_kernels(FAMILY).items() if k["type_x"] == t and cpu.supported(k["isa"])]
    assert names
    for rows, what in ((x, "case inputs"), (edge, "edge rows")):
        theirs = ggml.quantize_chunk(t, rows, im)
        for name in names:
            got = K.quantize(rows, t, variant="model", imatrix=im, kernel=name)
            kt.assert_same_bytes(got, theirs, fmt.type_size, f"{case.id} {what}: {name} vs ggml_quantize_chunk")


def test_quantize_chunk_rejects_bad_imatrix(rng):
    """Bad importance matrices raise before C runs; other variants and types take none."""
    x = rng.standard_normal((2, 256)).astype(np.float32)
    with pytest.raises(TypeError, match="imatrix: dtype must be float32"):
        K.quantize(x, "q4_K", variant="model", imatrix=np.ones(256, np.float64))
    with pytest.raises(ValueError, match=r"imatrix: must have shape \(256,\)"):
        K.quantize(x, "q6_K", variant="model", imatrix=np.ones(255, np.float32))
    with pytest.raises(ValueError, match=r"imatrix: must have shape \(256,\)"):
        K.quantize(x, "iq4_nl", variant="model", imatrix=np.ones((2, 256), np.float32))
    with pytest.raises(TypeError, match="imatrix: expected a NumPy array"):
        K.quantize(x, "q4_K", variant="model", imatrix=[1.0] * 256)
    with pytest.raises(K.DispatchError, match="no kernel takes an imatrix"):
        K.quantize(x, "iq4_nl", variant="ref", imatrix=np.ones(256, np.float32))
    with pytest.raises(K.DispatchError, match="no kernel takes an imatrix"):
        K.quantize(x, "q4_0", variant="model", imatrix=np.ones(256, np.float32))
    out = np.empty((2, 144), np.uint8)
    im = np.ones(256, np.float32)
    with pytest.raises(ValueError, match="out"):
        K.quantize(x, "q4_K", variant="model", imatrix=im, out=out.reshape(-1)[:0].reshape(0, 144))


def test_quantize_chunk_strided_imatrix_and_model_dispatch(rng):
    """A strided imatrix is read as its values; variant='model' dispatches to a quantize_chunk kernel."""
    x = rng.standard_normal((3, 512)).astype(np.float32)
    wide = rng.random(1024).astype(np.float32)
    im = wide[::2]
    want = R.quantize(x, "q4_K", variant="model", imatrix=np.ascontiguousarray(im))
    assert np.array_equal(K.quantize(x, "q4_K", variant="model", imatrix=im), want)
    spec = K.resolve("quantize_chunk", "q6_K", None, "model")[0]
    assert spec.family == "quantize_chunk" and spec.plan == "model"


def test_iq4_nl_best_index_is_a_midpoint_count():
    """The fact the avx2 iq4_nl kernel's branch-free search rests on: ggml's best_index (``x - a < b - x`` on rounded
    differences, reproduced by the reference) equals the number of midpoints (a + b)/2 that x is not below, on the
    4097 floats centred on every midpoint, on the table values and on random floats of the whole range."""
    from mlaref.reference.types.iq4_nl import KVALUES, best_index

    kv = KVALUES.astype(np.float32)
    mids = (kv[:-1] + kv[1:]) / np.float32(2)
    probes = [kv, np.random.default_rng(3).uniform(-140, 130, 200000).astype(np.float32)]
    for m in mids:
        up, down = [m], [m]
        for _ in range(2048):
            up.append(np.nextafter(up[-1], np.float32(np.inf)))
            down.append(np.nextafter(down[-1], np.float32(-np.inf)))
        probes.append(np.array(up + down, np.float32))
    v = np.concatenate(probes)
    count = (v[:, None] >= mids[None, :]).sum(axis=1)
    assert np.array_equal(best_index(v).astype(np.int64), count)
