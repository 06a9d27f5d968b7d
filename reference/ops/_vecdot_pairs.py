"""The integer side of every vec_dot pair: block decoding into exact integers and scales.

For a pair ``x.y`` of 32-element block types, ``decode_x`` / ``decode_y`` turn rows of bytes into

* ``q``: integer values per element (int16; ``(rows, n_blocks, 32)``), element j of a block at index j;
* ``d``: the block scale as float32 ``(rows, n_blocks)``;
* ``m`` (x of q4_1/q5_1) / ``s`` (y of q8_1): the offset terms of the ``m*s`` correction, float32.

The block layouts are ggml-common.h's (``block_q4_0`` ...), decoded here from the raw bytes so the op does not
depend on how a format module lays out its structured dtype:

=======  =====  =========================================================  ===============================
type     bytes  fields in order                                            integer value of element j
=======  =====  =========================================================  ===============================
q4_0     18     d f16; qs[16]                                              nib(j) - 8
q4_1     20     d f16, m f16; qs[16]                                       nib(j)              (+ m term)
q5_0     22     d f16; qh u32 (bit j = bit 4 of element j); qs[16]         nib(j) + 16*bit_j - 16
q5_1     24     d f16, m f16; qh u32; qs[16]                               nib(j) + 16*bit_j   (+ m term)
q8_0     34     d f16; qs[32] int8                                         qs[j]
q8_1     36     d f16, s f16 (= f16(d * sum q)); qs[32] int8               qs[j]
iq4_nl   18     d f16; qs[16] (indices into kvalues_iq4nl)                 kvalues[nib(j)]
=======  =====  =========================================================  ===============================

``nib(j)`` is the low nibble of byte j for j < 16 and the high nibble of byte j - 16 otherwise. The
interleaved ``q8_0_x4`` (136 B per 4 blocks: d[4]; qs[128]) and ``q8_1_x4`` (144 B: d[4], s[4]; qs[128]) hold
the last ``n_blocks % 4`` blocks of a row as plain q8_0 / q8_1 (iqk_quantize.cpp@676f0e71b).
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import fp
from mlaref.reference.types import get_type

__all__ = ["BLOCK_PAIRS", "ELEMENT_TYPES", "KQUANT_PAIRS", "KVALUES_IQ4NL", "TYPE_SIZE", "decode_x", "decode_y",
           "decode_kquant", "decode_q8_K"]

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int16)

ELEMENT_TYPES = ("f32", "f16", "bf16")

# bytes per block from the format registry (per 4 blocks for the x4 layouts, whose rows interleave 4 blocks)
TYPE_SIZE = {t: get_type(t).type_size * (4 if t.endswith("_x4") else 1)
             for t in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "iq4_nl", "q8_0_x4", "q8_1_x4", "q4_K", "q6_K",
                       "q8_K")}

# 256-element super-blocks with a q8_K y (ggml-common.h):
#   q4_K  144 B: d f16, dmin f16, scales[12] (8 6-bit scales and mins), qs[128]; value = d*sc_j*q - dmin*m_j,
#         q in [0, 15]; sub-block j = elements 32j..32j+31; qs chunk c: byte 32c+l holds 64c+l (low) and
#         64c+32+l (high)
#   q6_K  210 B: ql[128], qh[64], scales[16] int8, d f16; value = d*sc_j*(q - 32), q in [0, 63]; sub-block
#         j = elements 16j..16j+15
#   q8_K  292 B: d f32, qs[256] int8, bsums[16] int16 (sums of 16 consecutive qs)
KQUANT_PAIRS = {t: get_type(t).vec_dot_type for t in ("q4_K", "q6_K")}

# x type -> (y types accepted, generic formula). The formula names the scalar C expression of
# ggml_vec_dot_<x>_<y>_generic (ggml-cpu/quants.c) with P*Q the last product (the one GCC fuses):
#   "sumi*(dx*dy)"      q8_0:    sumf += (float)sumi * (dx*dy)            P = sumi,     Q = dx*dy
#   "sumi*dx*dy"        q4_0:    sumf += ((float)sumi*dx) * dy            P = sumi*dx,  Q = dy
#   "(dx*dy)*sumi"      q5_0:    sumf += (dx*dy) * sumi                   P = dx*dy,    Q = sumi
#   "(dx*dy)*sumi+m*s"  q4_1/q5_1: sumf += (dx*dy)*sumi + mx*sy           P = dx*dy,    Q = sumi, R = mx*sy
#   "(dy*dx)*sumi"      iq4_nl:  d = dy*dx; sumf += d * (sumi1 + sumi2)   P = dy*dx,    Q = sumi
BLOCK_PAIRS = {
    "q8_0": (("q8_0", "q8_0_x4"), "sumi*(dx*dy)"),
    "q4_0": (("q8_0", "q8_0_x4"), "sumi*dx*dy"),
    "q5_0": (("q8_0", "q8_0_x4"), "(dx*dy)*sumi"),
    "iq4_nl": (("q8_0", "q8_0_x4"), "(dy*dx)*sumi"),
    "q4_1": (("q8_1", "q8_1_x4"), "(dx*dy)*sumi+m*s"),
    "q5_1": (("q8_1", "q8_1_x4"), "(dx*dy)*sumi+m*s"),
}


def _f16(u16: np.ndarray) -> np.ndarray:
    return fp.f16_to_f32(u16.astype(np.uint16))


def _u16(b: np.ndarray, off: int) -> np.ndarray:
    return b[..., off].astype(np.uint16) | (b[..., off + 1].astype(np.uint16) << 8)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., 16) bytes -> (..., 32) nibbles: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int16)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """(..., 4) bytes of a little-endian u32 -> (..., 32) bits, bit j = element j."""
    return np.unpackbits(qh, axis=-1, bitorder="little").astype(np.int16)


def _blocks(rows: np.ndarray, type: str, n: int) -> np.ndarray:
    nb = n // 32
    if rows.shape[1] != nb * TYPE_SIZE[type]:
        raise ValueError(f"vec_dot: rows of {type} with n = {n} must have {nb * TYPE_SIZE[type]} bytes, "
                         f"got {rows.shape[1]}")
    return rows.reshape(rows.shape[0], nb, TYPE_SIZE[type])


def decode_x(rows: np.ndarray, type: str, n: int):
    """Rows of the x (weight) type -> (q int16 (R, nb, 32), d float32 (R, nb), m float32 (R, nb) or None)."""
    b = _blocks(rows, type, n)
    d = _f16(_u16(b, 0))
    m = None
    if type == "q4_0":
        q = _nibbles(b[..., 2:18]) - 8
    elif type == "q4_1":
        m = _f16(_u16(b, 2))
        q = _nibbles(b[..., 4:20])
    elif type == "q5_0":
        q = _nibbles(b[..., 6:22]) + 16 * _high_bits(b[..., 2:6]) - 16
    elif type == "q5_1":
        m = _f16(_u16(b, 2))
        q = _nibbles(b[..., 8:24]) + 16 * _high_bits(b[..., 4:8])
    elif type == "q8_0":
        q = b[..., 2:34].view(np.int8).astype(np.int16)
    elif type == "iq4_nl":
        q = KVALUES_IQ4NL[_nibbles(b[..., 2:18])]
    else:
        raise ValueError(f"vec_dot: x type {type!r} has no block decoder; known: {', '.join(BLOCK_PAIRS)}")
    return q, d, m


def decode_y(rows: np.ndarray, type: str, n: int):
    """Rows of the y (activation) type -> (q int16 (R, nb, 32), d float32 (R, nb), s float32 (R, nb) or None)."""
    if type in ("q8_0", "q8_1"):
        b = _blocks(rows, type, n)
        d = _f16(_u16(b, 0))
        if type == "q8_0":
            return b[..., 2:34].view(np.int8).astype(np.int16), d, None
        return b[..., 4:36].view(np.int8).astype(np.int16), d, _f16(_u16(b, 2))
    if type in ("q8_0_x4", "q8_1_x4"):
        plain = type[:4]
        nb = n // 32
        n4 = nb // 4
        r = rows.shape[0]
        size4 = TYPE_SIZE[type]
        expect = n4 * size4 + (nb - 4 * n4) * TYPE_SIZE[plain]
        if rows.shape[1] != expect:
            raise ValueError(f"vec_dot: rows of {type} with n = {n} must have {expect} bytes, got {rows.shape[1]}")
        g = rows[:, : n4 * size4].reshape(r, n4, size4)
        nscale = 4 if plain == "q8_0" else 8
        scales = _f16(g[..., : 2 * nscale].copy().view("<u2"))  # (r, n4, 4 or 8)
        q4 = g[..., 2 * nscale:].view(np.int8).reshape(r, n4 * 4, 32).astype(np.int16)
        d4 = scales[..., :4].reshape(r, n4 * 4)
        s4 = scales[..., 4:].reshape(r, n4 * 4) if plain == "q8_1" else None
        qt, dt, st = decode_y(np.ascontiguousarray(rows[:, n4 * size4:]), plain, (nb - 4 * n4) * 32) \
            if nb > 4 * n4 else (np.zeros((r, 0, 32), np.int16), np.zeros((r, 0), np.float32),
                                 None if plain == "q8_0" else np.zeros((r, 0), np.float32))
        q = np.concatenate([q4, qt], axis=1)
        d = np.concatenate([d4, dt], axis=1)
        s = None if plain == "q8_0" else np.concatenate([s4, st], axis=1)
        return q, d, s
    raise ValueError(f"vec_dot: y type {type!r} has no block decoder")


def _kblocks(rows: np.ndarray, type: str, n: int) -> np.ndarray:
    nb = n // 256
    if rows.shape[1] != nb * TYPE_SIZE[type]:
        raise ValueError(f"vec_dot: rows of {type} with n = {n} must have {nb * TYPE_SIZE[type]} bytes, "
                         f"got {rows.shape[1]}")
    return rows.reshape(rows.shape[0], nb, TYPE_SIZE[type])


def decode_kquant(rows: np.ndarray, type: str, n: int):
    """q4_K / q6_K rows -> (q int16 (R, nb, 256) unsigned codes, sc int32 (R, nb, 256) the scale of each
    element, m int32 (R, nb, 8) the q4_K mins or None, d float32 (R, nb), dmin float32 (R, nb) or None)."""
    b = _kblocks(rows, type, n)
    if type == "q4_K":
        d, dmin = _f16(_u16(b, 0)), _f16(_u16(b, 2))
        sc12 = b[..., 4:16].astype(np.int32)
        sc = np.empty(b.shape[:2] + (8,), np.int32)
        mn = np.empty(b.shape[:2] + (8,), np.int32)
        sc[..., :4] = sc12[..., 0:4] & 63
        mn[..., :4] = sc12[..., 4:8] & 63
        sc[..., 4:] = (sc12[..., 8:12] & 15) | ((sc12[..., 0:4] >> 6) << 4)
        mn[..., 4:] = (sc12[..., 8:12] >> 4) | ((sc12[..., 4:8] >> 6) << 4)
        qs = b[..., 16:144].reshape(b.shape[:2] + (4, 32))
        q = np.concatenate([np.stack([c & 15, c >> 4], axis=-2) for c in np.moveaxis(qs, -2, 0)], axis=-2)
        q = q.reshape(b.shape[:2] + (256,)).astype(np.int16)
        return q, np.repeat(sc, 32, axis=-1), mn, d, dmin
    if type == "q6_K":
        ql = b[..., 0:128].astype(np.int16)
        qh = b[..., 128:192].astype(np.int16)
        sc = b[..., 192:208].view(np.int8).astype(np.int32)
        d = _f16(_u16(b, 208))
        halves = []
        for h in range(2):
            lo, hi = ql[..., 64 * h:64 * h + 64], qh[..., 32 * h:32 * h + 32]
            halves += [(lo[..., 0:32] & 15) | ((hi & 3) << 4), (lo[..., 32:64] & 15) | (((hi >> 2) & 3) << 4),
                       (lo[..., 0:32] >> 4) | (((hi >> 4) & 3) << 4), (lo[..., 32:64] >> 4) | (((hi >> 6) & 3) << 4)]
        q = np.concatenate(halves, axis=-1).astype(np.int16)
        return q, np.repeat(sc, 16, axis=-1), None, d, None
    raise ValueError(f"vec_dot: {type!r} is not a k-quant x type; known: {', '.join(KQUANT_PAIRS)}")


def decode_q8_K(rows: np.ndarray, n: int):
    """q8_K rows -> (qs int16 (R, nb, 256), d float32 (R, nb), bsums int32 (R, nb, 16))."""
    b = _kblocks(rows, "q8_K", n)
    d = np.ascontiguousarray(b[..., 0:4]).view("<f4")[..., 0].astype(np.float32)
    qs = b[..., 4:260].view(np.int8).astype(np.int16)
    bsums = np.ascontiguousarray(b[..., 260:292]).view("<i2").astype(np.int32)
    return qs, d, bsums
