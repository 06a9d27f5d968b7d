"""Bad input to mlaref.codegen.kernels raises a Python exception before any pointer reaches C; a hypothesis run
throws >= 10^4 random malformed calls at the kernels and none crashes the process."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlaref import reference as R
from mlaref.codegen import kernels as K

X = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
Q = R.quantize(X, "q8_0")


def _ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


BAD = [
    ("x float64", lambda: K.quantize(X.astype(np.float64), "q8_0"), TypeError, "dtype"),
    ("x int", lambda: K.quantize(np.zeros((2, 32), np.int32), "q8_0"), TypeError, "dtype"),
    ("x not a multiple", lambda: K.quantize(X[:, :40], "q8_0"), ValueError, "multiple of 32"),
    ("x scalar", lambda: K.quantize(np.float32(1), "q8_0"), ValueError, "at least one dimension"),
    ("x negative strides", lambda: K.quantize(X[:, ::-1], "q8_0"), ValueError, "negative strides"),
    ("x rows reversed", lambda: K.quantize(X[::-1], "q8_0"), ValueError, "negative strides"),
    ("x not an array", lambda: K.quantize("abc", "q8_0"), TypeError, "NumPy array"),
    ("unknown type", lambda: K.quantize(X, "q9_0"), ValueError, "no kernels for"),
    ("type not str", lambda: K.quantize(X, 8), TypeError, "type"),
    ("unknown variant", lambda: K.quantize(X, "q8_0", variant="fast"), ValueError, "variant"),
    ("imatrix", lambda: K.quantize(X, "q8_0", variant="model", imatrix=np.ones(64, np.float32)), LookupError, "imatrix"),
    ("data float", lambda: K.dequantize(X, "q8_0"), TypeError, "uint8"),
    ("data bad length", lambda: K.dequantize(Q[:, :35], "q8_0"), ValueError, "multiple of 34"),
    ("data empty", lambda: K.dequantize(np.zeros((0, 34), np.uint8), "q8_0"), ValueError, "no rows"),
    ("out read-only", lambda: K.quantize(X, "q8_0", out=_ro(np.empty_like(Q))), ValueError, "read-only"),
    ("out wrong dtype", lambda: K.quantize(X, "q8_0", out=np.empty(Q.shape, np.int8)), TypeError, "dtype"),
    ("out wrong shape", lambda: K.quantize(X, "q8_0", out=np.empty((4, 70), np.uint8)), ValueError, "shape"),
    ("out negative strides", lambda: K.dequantize(Q, "q8_0", out=np.empty((4, 64), np.float32)[::-1]), ValueError,
     "negative"),
    ("out self-overlapping", lambda: K.dequantize(
        Q, "q8_0", out=np.lib.stride_tricks.as_strided(np.empty(64, np.float32), (4, 64), (0, 4))), ValueError,
     "overlap"),
    ("out misaligned", lambda: K.dequantize(Q, "q8_0", out=np.empty(4 * 64 * 4 + 1, np.uint8)[1:].view(np.float32)
                                            .reshape(4, 64)), ValueError, "aligned"),
    ("out non-contiguous last axis", lambda: K.dequantize(Q, "q8_0", out=np.empty((4, 128), np.float32)[:, ::2]),
     ValueError, "contiguous"),
    ("threads 0", lambda: K.quantize(X, "q8_0", n_threads=0), ValueError, "n_threads"),
    ("threads absurd", lambda: K.quantize(X, "q8_0", n_threads=10**9), ValueError, "n_threads"),
    ("threads float", lambda: K.quantize(X, "q8_0", n_threads=2.0), TypeError, "n_threads"),
    ("kernel mismatch", lambda: K.quantize(X, "q8_0", kernel="mlaref_quantize_row_q4_0__scalar_ref"), ValueError,
     "computes"),
    ("kernel unknown", lambda: K.quantize(X, "q8_0", kernel="mlaref_quantize_row_q8_0__scalar_fast"), LookupError,
     "not in the catalog"),
    ("convert block mismatch", lambda: K.convert(R.quantize(X, "f16"), "f16", "q8_K"), ValueError, "block size"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_raises(case):
    _, call, exc, match = case
    with pytest.raises(exc, match=match):
        call()


def test_overlap_of_input_and_output_is_refused():
    buf = np.zeros(4 * 64 * 4 + 4 * 34 + 64, dtype=np.uint8)
    data = buf[: 4 * 34].reshape(4, 34)
    data[:] = R.quantize(np.ones((4, 32), np.float32), "q8_0")
    out = buf[64 : 64 + 4 * 32 * 4].view(np.float32).reshape(4, 32)  # starts inside data
    with pytest.raises(ValueError, match="overlaps the input"):
        K.dequantize(data, "q8_0", out=out)


_TYPES = ["q8_0", "q4_0", "f16", "q8_K", "iq4_nl", "q8_1_x4", "bf16", "zz"]
_DTYPES = [np.float32, np.float64, np.uint8, np.int8, np.float16, np.int32]


@st.composite
def _arrays(draw):
    dtype = draw(st.sampled_from(_DTYPES))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 40), min_size=ndim, max_size=ndim)))
    a = np.zeros(shape, dtype=dtype)
    if ndim and draw(st.booleans()):
        axis = draw(st.integers(0, ndim - 1))
        step = draw(st.sampled_from([-1, 2, -2]))
        a = np.swapaxes(np.swapaxes(a, 0, axis)[::step], 0, axis)
    if draw(st.booleans()):
        a.flags.writeable = False
    return a


@settings(max_examples=2500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(a=_arrays(), out=st.one_of(st.none(), _arrays()), t=st.sampled_from(_TYPES), t2=st.sampled_from(_TYPES),
       n=st.one_of(st.integers(-2, 300), st.floats(allow_nan=True), st.none()))
def test_random_malformed_calls_never_crash(a, out, t, t2, n):
    """Four calls per example (quantize, dequantize, convert, a random thread count): >= 10^4 calls in all."""
    for call in (lambda: K.quantize(a, t, out=out),
                 lambda: K.dequantize(a, t, out=out),
                 lambda: K.convert(a, t, t2, out=out),
                 lambda: K.dequantize(a, t, n_threads=n)):
        try:
            call()
        except (TypeError, ValueError, LookupError):
            pass
