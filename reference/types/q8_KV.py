"""Q8_KV: int8 rows with one float32 scale and one int32 sum per row; ik_llama.cpp's KV-cache type (PR #208).

ik_llama.cpp only (``GGML_TYPE_Q8_KV = 151``, ggml.h@1140b4568 and @676f0e71b; the same number in the April 2026
snapshot, ggml/include/ggml.h:449). Upstream ggml and gguf-py have no such type, so no GGUF id. Added by PR #208,
commit 1140b4568; the quantizer, ``to_float`` and the type traits are the same at 676f0e71b and in the snapshot.

Row layout. Unlike the other formats, a row is not ``n/32`` copies of one block: ``type_traits[Q8_KV]`` says
``blck_size = 32``, ``type_size = 32`` and ``row_meta_size = 8`` (ggml.c@1140b4568, the snapshot's
ggml/src/ggml.c:1443-1454), and ``ggml_row_size`` is ``row_meta_size + type_size*n/blck_size``
(the snapshot's ggml.c:4758-4761), so a row of ``n`` values takes ``8 + n`` bytes:

======  =======  ========================================================================================
offset  bytes    field of a row of ``n`` values
======  =======  ========================================================================================
0       4        ``d``: float32 scale of the whole row
4       4        ``s``: int32, the (wrapping) sum of the row's quantized values
8       n        ``qs[n]``: int8 values, element j at byte 8 + j
======  =======  ========================================================================================

The flash-attention kernels read the same bytes as ``struct block_q8_KV<D> {float d; int s; int8_t qs[D];}``
(ggml/src/iqk/fa/iqk_fa_templates.h:191-195 of the snapshot). ``dtype`` below is the 32-byte body block
(``qs`` only); ``row_dtype(n)`` is the whole row.

Dequantization (``dequantize_row_q8_KV``, iqk_quantize.cpp@1140b4568; the snapshot's iqk_quantize.cpp:7944-7949):
``y[j] = d * qs[j]``, one float32 rounding (a float32 ``d`` times an int8 is not always exact). ``s`` is unused.

Quantization. ``from_float``, ``from_float_ref`` (``quantize_row_q8_KV_ref`` only calls ``quantize_row_q8_KV``) and
``quantize_q8_KV`` (row by row; the imatrix is ignored) all run ``iqk_quantize_row_q8_KV`` (snapshot
iqk_quantize.cpp:3741-3836, 7924-7942), whose branch is chosen at compile time:

* ``iqk`` (the ``__AVX2__`` branch, iqk_quantize.cpp:3745-3784; what every x86 build with AVX2 runs, so also
  ``ref`` and ``model`` here, and the snapshot's ``ik2026_ref`` / ``ik2026_x86`` / ``ik2026_model``):

  1. ``amax`` = the largest ``|x|`` of the **whole row** (``max_ps`` over 8 lanes, then ``hmax_f32_8``: a max,
     exact and order-free for non-NaN input).
  2. ``amax == 0``: ``d = 0``, ``s = 0``, ``qs = 0``; done.
  3. ``d = amax / 127.f`` (one float division), stored as float32; ``mul = 1/d`` (one float division, of the
     rounded ``d``: not ``127/amax``).
  4. ``v = cvtps_epi32(round_ps(mul * x, NEAREST))``: one float product, ties to even. A product that is not a
     finite int32 gives the integer indefinite ``-2**31``; that happens only when ``1/d`` overflows
     (``d < 1/FLT_MAX``, i.e. ``amax`` below about ``3.7e-37``), and then every value is ``-2**31``.
  5. ``s`` = the int32 sum of the **unsaturated** ``v`` (``_mm256_add_epi32``, then ``hsum_i32_8``: wrapping,
     order-free).
  6. ``qs`` = ``v`` saturated to int8 by the two ``packs``; the permute only undoes the packs' lane order.

  For finite input with a finite ``mul``, ``|mul * x| <= amax * mul <= 127 (1 + 2**-24)**3 < 127.5``, so the
  values lie in [-127, 127] and ``s`` is their plain sum (``|s| <= 127 n``). Hazard (tiny ``amax``): ``qs = -128``
  everywhere, ``s = n * -2**31 mod 2**32 = 0`` (``n`` is even), ``d`` tiny or 0: an inconsistent row, reproduced.
* ``scalar`` (the ``#else`` branch, iqk_quantize.cpp:3815-3835, built where neither AVX2 nor NEON is: a generic
  x86-64 build): the same ``amax`` (``std::max``), ``d`` and ``id = 1/d``, ``q = nearest_int(id*x)`` (the
  ``1.5*2**23`` trick, iqk_quantize.cpp:37-42: round half to even for ``|v| < 2**22``) stored into ``int8_t``,
  and ``s`` = the sum of the **stored** int8 values. For finite input with a finite ``id`` it writes the same bytes
  as ``iqk``. In the hazard ``id*x`` is +-inf or NaN, ``nearest_int`` of both is ``-2**22`` or 0, whose low byte
  is 0: ``qs = 0`` and ``s = 0``. Modelled as GCC compiles it for x86-64 without ``-mfma`` (nothing to contract).
  Not a public variant (no x86 build we run has it); ``Q8_KV().quantize_rows(x, "scalar", None)`` reaches it.
* The ``__ARM_NEON`` branch (iqk_quantize.cpp:3785-3814) rounds with ``vcvtnq_s32_f32`` (ties to even,
  saturating) and narrows with ``vmovn`` (truncating): the same bytes as ``iqk`` for finite ``mul``. Not modelled.

Dot product (the vec_dot pairing). ``vec_dot_type`` is q8_KV itself (ggml.c:1452 of the snapshot): src1 rows are
quantized to q8_KV too. The traits' ``vec_dot_q8_KV_q8_KV`` (iqk_quantize.cpp:7951-7962) only forwards to
``iqk_mul_mat(1, 1, n, ...)``, which on x86 declines every ``n`` that is not a multiple of 256
(``iqk_set_kernels_kquants``, iqk_gemm_kquants.cpp:2676-2689), after which the function returns **without writing
the result**; for ``n % 256 == 0`` its one-row call reaches ``mul_mat_q8_KV_q8_KV``'s ``GGML_ASSERT(nrc_x%4 == 0)``
and aborts. So nothing calls it for a single pair: q8_KV is multiplied by IQK's GEMM (``mul_mat_q8_KV_q8_KV``,
iqk_gemm_kquants.cpp:1935-2014, rows of x in fours) and by flash attention's ``iqk_gemm_q8kv_fa``. The AVX2 GEMM
computes, for an x row and a y row, the exact integer ``sumi = sum_j qx[j]*qy[j]`` (``maddubs`` on
``|qx|`` and ``sign(qy, qx)``, pair sums below 2**15 for values in [-127, 127]; the AVX512-VNNI build uses
``(qx + 127)*qy - 127*s_y`` instead, the same integer when ``s`` is the sum of ``qs``) and then
``result = f32(dx * dy) * f32(sumi)``: two float32 roundings (``f32(sumi)`` is exact while ``|sumi| < 2**24``,
e.g. every row of up to 1040 values). :func:`dot_rows` computes that.

Valid domain (what the quantizer writes and the kernels assume): ``d`` a finite non-negative float32; ``qs`` in
[-127, 127]; ``s = sum(qs)`` (int32). Dequantize is defined for every byte pattern.
"""

import numpy as np

from mlaref.reference.types._base import BlockFormat

F32 = np.float32
_INT32_MIN = -(2**31)
HEADER = np.dtype([("d", "<f4"), ("s", "<i4")])  # the 8 bytes of row metadata


def row_dtype(n: int) -> np.dtype:
    """The structured dtype of a whole row of ``n`` values: ``d`` (float32), ``s`` (int32), ``qs`` (int8 ``[n]``)."""
    return np.dtype([("d", "<f4"), ("s", "<i4"), ("qs", "i1", (n,))])


def _rows_view(data: np.ndarray) -> np.ndarray:
    """uint8 rows ``(n_rows, 8 + n)`` -> structured rows ``(n_rows,)`` of :func:`row_dtype`."""
    n_rows, nbytes = data.shape
    return np.ascontiguousarray(data).reshape(-1).view(row_dtype(nbytes - HEADER.itemsize)).reshape(n_rows)


def _scale(x):
    """Both branches' row scale: ``d = amax / 127`` and its float inverse ``1 / d`` (0 and 0 for an all-zero row)."""
    x = np.asarray(x, dtype=F32)
    amax = np.abs(x).max(axis=1)
    zero = amax == 0
    d = np.where(zero, F32(0), amax / F32(127)).astype(F32)
    with np.errstate(divide="ignore"):
        inv = np.where(zero, F32(0), F32(1) / np.where(zero, F32(1), d)).astype(F32)
    return x, d, inv


def iqk_fields(x: np.ndarray):
    """float32 rows ``(n_rows, n)`` -> ``(d, s, qs)`` as the AVX2 branch writes them (steps 1-6 of the module doc).

    ``d`` float32 ``(n_rows,)``, ``s`` int32 ``(n_rows,)``, ``qs`` int8 ``(n_rows, n)``; every float step one NumPy
    float32 operation (rounded once).
    """
    x, d, mul = _scale(x)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        v = np.rint((x * mul[:, None]).astype(F32))
        ok = np.isfinite(v) & (v >= -(2.0**31)) & (v < 2.0**31)
    v32 = np.where(ok, v, _INT32_MIN).astype(np.int64)
    s = ((v32.sum(axis=1) + 2**31) % 2**32 - 2**31).astype(np.int32)  # int32 wrap; exact in int64 first
    qs = np.clip(v32, -128, 127).astype(np.int8)
    return d, s, qs


def scalar_fields(x: np.ndarray):
    """float32 rows -> ``(d, s, qs)`` as the scalar ``#else`` branch writes them (see the module doc)."""
    x, d, inv = _scale(x)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        # nearest_int: the float sum with 1.5*2**23, its low 23 bits minus 2**22 (iqk_quantize.cpp:37-42)
        bits = ((x * inv[:, None]).astype(F32) + F32(12582912.0)).astype(F32).view(np.int32)
    q = ((bits & 0x007FFFFF) - 0x00400000).astype(np.int64)
    qs = ((q + 128) % 256 - 128).astype(np.int8)  # the store into int8_t keeps the low byte
    s = qs.astype(np.int64).sum(axis=1).astype(np.int32)  # |s| <= 128 n: no wrap for any real row
    return d, s, qs


def dot_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The IQK AVX2 GEMM on q8_KV rows: uint8 ``x`` ``(M, 8 + n)`` and ``y`` ``(N, 8 + n)`` -> float32 ``(M, N)``.

    ``out[i, j] = f32(f32(dx_i * dy_j) * f32(sumi))`` with ``sumi`` the exact integer dot product of the int8
    values (``mul_mat_q8_KV_q8_KV``, the module doc). ``sumi`` is computed in int64 and converted once; that is the
    C result wherever its int32 accumulators do not wrap (``|sumi| < 2**31``, every row of the valid domain with
    ``n < 133 000``). The ``maddubs`` sign trick is wrong on ``qs = -128``, outside the domain; this gives the
    exact product there.
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.uint8))
    y = np.atleast_2d(np.asarray(y, dtype=np.uint8))
    if x.shape[1] != y.shape[1] or x.shape[1] <= HEADER.itemsize:
        raise ValueError(f"dot_rows: rows of {x.shape[1]} and {y.shape[1]} bytes are not q8_KV rows of one length")
    rx, ry = _rows_view(x), _rows_view(y)
    sumi = rx["qs"].astype(np.int64) @ ry["qs"].astype(np.int64).T  # integers: exact in any order
    scale = (rx["d"][:, None] * ry["d"][None, :]).astype(F32)
    return (scale * sumi.astype(F32)).astype(F32)


class Q8_KV(BlockFormat):
    name = "q8_KV"
    ggml_type = 151  # GGML_TYPE_Q8_KV, ggml.h@1140b4568 (and @676f0e71b, and the 2026 snapshot)
    upstream = False
    block_size = 32
    type_size = 32
    row_meta_size = 8
    dtype = np.dtype([("qs", "i1", (32,))])  # a 32-value body block; the row header is HEADER
    vec_dot_type = "q8_KV"
    domain = "d a finite non-negative float32; qs in [-127, 127]; s = sum(qs) as int32"
    variants = {"ref": "iqk", "model": "iqk", "iqk": "iqk"}
    ik2026_variants = {"ik2026_ref": "iqk", "ik2026_x86": "iqk", "ik2026_model": "iqk"}

    def row_dtype(self, n: int) -> np.dtype:
        return row_dtype(n)

    def quantize_rows(self, x, variant, imatrix):
        if variant not in ("iqk", "scalar"):
            raise ValueError(f"q8_KV: unknown quantizer {variant!r}")
        n_rows, n = x.shape
        out = np.empty(n_rows, dtype=row_dtype(n))
        out["d"], out["s"], out["qs"] = (iqk_fields if variant == "iqk" else scalar_fields)(x)
        return out.view(np.uint8).reshape(n_rows, self.row_size(n))

    def dequantize_rows(self, data):
        rows = _rows_view(data)
        return (rows["d"][:, None] * rows["qs"].astype(F32)).astype(F32)

    def quantize_blocks(self, x, variant, weights):
        raise NotImplementedError(f"{self.name} has one scale per row, not per block; use quantize_rows")

    def dequantize_blocks(self, blocks):
        raise NotImplementedError(f"{self.name} has one scale per row, not per block; use dequantize_rows")

    def random_rows(self, rng, n_rows, n):
        """Random valid rows: ``d`` non-negative, ``qs`` in [-127, 127], ``s`` their sum."""
        out = np.empty(n_rows, dtype=row_dtype(n))
        out["qs"] = rng.integers(-127, 128, size=(n_rows, n), dtype=np.int8)
        out["d"] = np.abs(rng.standard_normal(n_rows)).astype(F32) * F32(0.01)
        out["s"] = out["qs"].astype(np.int64).sum(axis=1).astype(np.int32)
        return out.view(np.uint8).reshape(n_rows, self.row_size(n))

    def random_blocks(self, rng, n_blocks):
        raise NotImplementedError(f"{self.name} is laid out per row (an 8-byte header per row); use random_rows")


__all__ = ["Q8_KV", "HEADER", "row_dtype", "iqk_fields", "scalar_fields", "dot_rows"]
