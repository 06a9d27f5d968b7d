"""Inputs of the mul_mat and flash_attn_ext kernel tests, shared by the x86 and the NEON (qemu) test files.

The test files import it by name: pyproject.toml puts tests/kernels on pytest's ``pythonpath`` (test modules are
imported with ``--import-mode=importlib`` and cannot import one another).
"""

import numpy as np

from mlaref import reference as R
from mlaref.reference.tensor import Tensor

__all__ = ["fa_kv", "fa_mask", "fa_q", "mm_tensor", "mm_values", "serial_tie_pair"]


def mm_values(rng, rows: int, n: int) -> np.ndarray:
    """``rows`` x ``n`` normal float32 values, each row scaled by a power of two in [2^-3, 2^3]."""
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x *= np.float32(2.0) ** rng.integers(-3, 4, size=(rows, 1)).astype(np.float32)
    return x


def mm_tensor(values: np.ndarray, type: str, ne, row_len: int | None = None) -> Tensor:
    """A tensor of ``type`` holding ``values`` (rows, n); with ``row_len`` > n the rows are a strided view into
    rows of ``row_len`` values (the KV-cache layout: first n of each row). q8_0 rows are quantized as an x86 ggml
    build does."""
    rows, n = values.shape
    full = values if row_len is None else np.concatenate(
        [values, np.ones((rows, row_len - n), np.float32)], axis=1)
    if type == "f32":
        data = np.ascontiguousarray(full).view(np.uint8)
    elif type == "q8_0":
        data = R.quantize(full, type, variant="x86")
    else:
        data = R.quantize(full, type)
    data = np.ascontiguousarray(data).reshape(rows, -1)
    base = Tensor.from_bytes(data, type, (full.shape[1], rows, 1, 1))
    t = Tensor.from_bytes(data, type, (full.shape[1],) + tuple(ne[1:]))
    if row_len is None:
        return t
    return base.view(tuple(ne), (t.nb[0], t.nb[1], t.nb[1] * ne[1], t.nb[1] * ne[1] * ne[2]))


def fa_kv(rng, type: str, ne) -> Tensor:
    """K or V of shape ``ne`` in ``type`` (f16, or q8_0 quantized as an x86 ggml build does), normal values."""
    rows = int(np.prod(ne[1:]))
    x = rng.standard_normal((rows, ne[0])).astype(np.float32)
    data = R.quantize(x, type, variant="x86") if type == "q8_0" else R.quantize(x, type)
    return Tensor.from_bytes(np.ascontiguousarray(data).reshape(rows, -1), type, ne)


def fa_q(rng, Dk, nq, nh, s=0.3) -> Tensor:
    """f32 Q [Dk, nq, nh, 1] of normal values times ``s``."""
    return Tensor.from_numpy((rng.standard_normal((1, nh, nq, Dk)) * s).astype(np.float32))


def fa_mask(n_kv: int, rows: int, masked=()) -> Tensor:
    """An f16 mask [n_kv, rows] of zeros, with -inf over columns [lo, hi) of each (row, lo, hi) in ``masked``."""
    m = np.zeros((rows, n_kv), np.float16)
    for r, lo, hi in masked:
        m[r, lo:hi] = -np.inf
    return Tensor.from_numpy(m.reshape(1, 1, rows, n_kv), "f16")


def serial_tie_pair() -> tuple[Tensor, Tensor]:
    """A hand-built q8_0 row pair (src0, src1: one row of 3 blocks each) that tells the block-serial order from the
    lane orders: blocks 0, 1, 2 with dx*dy = 2**11, 2**-13, 2**-13 and one product 1 each (block 0 at element 0,
    blocks 1 and 2 at element 4). Serially each 2**-13 is a tie that rounds to even: 2**11; kept in one lane
    until the fold (l8a1, l16a1) they give 2**11 + 2**-12, the float64 truth."""
    def row(blocks):
        out = b""
        for d, at in blocks:
            qs = np.zeros(32, np.int8)
            qs[at] = 1
            out += np.float16(d).tobytes() + qs.tobytes()
        return np.frombuffer(out, np.uint8).reshape(1, -1)

    a = Tensor.from_bytes(row([(2.0 ** 6, 0), (2.0 ** -7, 4), (2.0 ** -7, 4)]), "q8_0", (96, 1, 1, 1))
    b = Tensor.from_bytes(row([(2.0 ** 5, 0), (2.0 ** -6, 4), (2.0 ** -6, 4)]), "q8_0", (96, 1, 1, 1))
    return a, b


def guarded_f32(ne) -> tuple[Tensor, np.ndarray]:
    """A contiguous f32 output of shape ``ne``, NaN-poisoned (0xFF bytes), followed by 64 guard bytes of 0xA5; returns
    the tensor and its whole buffer (check ``buf[-64:] == 0xA5`` after the call)."""
    n = int(np.prod(ne)) * 4
    buf = np.full(n + 64, 0xA5, np.uint8)
    buf[:n] = 0xFF
    return Tensor("f32", ne, (4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2]), buf), buf
