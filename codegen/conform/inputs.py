"""The input generators a conformance case names: a generator spec (``{"gen": ..., "seed": ..., ...}``) -> an input.

A case never carries raw data, only these specs, so it replays anywhere: the same spec gives the same bytes, and
both sides (the spec and the library) are fed those bytes.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference import fp, get_type, quantize
from mlaref.reference.tensor import Tensor


def _gen_normal(rng, s):
    """float32 N(0, scale^2) of ``shape`` (NumPy order); with ``type``, a contiguous Tensor of that type (f16/bf16
    rounded to nearest even, block types quantized by the spec's ``ref`` routine: both sides get the same bytes)."""
    x = (rng.standard_normal(s["shape"]) * s.get("scale", 1.0)).astype(np.float32)
    if "type" not in s:
        return x
    return Tensor.from_numpy(x, s["type"])


def _gen_uniform(rng, s):
    """float32 uniform in [low, high) of ``shape`` (importance weights)."""
    return rng.uniform(s["low"], s["high"], s["shape"]).astype(np.float32)


def _gen_ties(rng, s):
    """float32 rows ``shape`` (rows, n) of 32-blocks whose first value is 127 and the others k + 0.5 (|k| < 127):
    with amax = 127 the q8 scale is exactly 1, so every other value is a rounding tie (roundf and round-to-even
    disagree on half of them)."""
    x = (rng.integers(-126, 126, size=s["shape"]) + 0.5).astype(np.float32)
    x.reshape(-1, 32)[:, 0] = 127.0
    return x


def _gen_blocks(rng, s):
    """uint8 rows ``(rows, row_size(n))`` of random blocks in the format's valid domain (``random_rows``)."""
    return get_type(s["type"]).random_rows(rng, s["rows"], s["n"])


def _gen_quantized(rng, s):
    """uint8 rows: N(0, scale^2) values of ``shape`` (rows, n) quantized by the spec's ``variant``."""
    x = (rng.standard_normal(s["shape"]) * s.get("scale", 1.0)).astype(np.float32)
    if s["type"] == "f32":
        return x.view(np.uint8)
    if s["type"] == "f16":
        return fp.f32_to_f16(x).view(np.uint8)
    if s["type"] == "bf16":
        return fp.f32_to_bf16(x).view(np.uint8)
    return quantize(x, s["type"], variant=s.get("variant", "ref"))


def _gen_ints(rng, s):
    """An i32 Tensor of ``shape`` with values in [low, high); ``first`` values, if given, lead the flat array."""
    v = rng.integers(s["low"], s["high"], size=s["shape"]).astype(np.int32)
    first = s.get("first", [])
    v.reshape(-1)[: len(first)] = first
    return Tensor.from_numpy(v)


def _gen_mask(rng, s):
    """A mask Tensor ``shape`` (n_q, n_kv) of ``type``: zeros, a fraction ``inf_frac`` of -inf, column 0 kept finite;
    ``normal`` adds N(0, 1) values to the finite entries (soft_max takes real-valued masks)."""
    m = np.zeros(s["shape"], np.float32)
    if s.get("normal"):
        m = rng.standard_normal(s["shape"]).astype(np.float32)
    m[rng.random(s["shape"]) < s.get("inf_frac", 0.0)] = -np.inf
    m[..., 0] = 0.0
    return Tensor.from_numpy(m, s.get("type", "f16"))


GENERATORS = {"normal": _gen_normal, "uniform": _gen_uniform, "ties": _gen_ties, "blocks": _gen_blocks,
              "quantized": _gen_quantized, "ints": _gen_ints, "mask": _gen_mask}


def make_input(spec: dict):
    """The input a generator spec describes: ``GENERATORS[spec["gen"]](np.random.default_rng(spec["seed"]), spec)``."""
    return GENERATORS[spec["gen"]](np.random.default_rng(spec["seed"]), spec)
