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
    ``normal`` adds N(0, 1) values to the finite entries (soft_max takes real-valued masks); ``causal: n_q``
    masks column j of row i when j > n_kv - n_q + i (the prompt's own causal mask: the last KV blocks are fully
    masked for the first rows; rows past n_q are the padding flash attention's mask carries)."""
    m = np.zeros(s["shape"], np.float32)
    if s.get("normal"):
        m = rng.standard_normal(s["shape"]).astype(np.float32)
    m[rng.random(s["shape"]) < s.get("inf_frac", 0.0)] = -np.inf
    if s.get("causal"):
        nq, nkv = int(s["causal"]), s["shape"][-1]
        j, i = np.meshgrid(np.arange(nkv), np.arange(s["shape"][-2]))
        m[j > nkv - nq + i] = -np.inf
    m[..., 0] = 0.0
    return Tensor.from_numpy(m, s.get("type", "f16"))


def _gen_view(rng, s):
    """A view of another input (made by :func:`make_inputs`, which knows the other inputs)."""
    raise ValueError("a 'view' input refers to another input: make it with make_inputs")


GENERATORS = {"normal": _gen_normal, "uniform": _gen_uniform, "ties": _gen_ties, "blocks": _gen_blocks,
              "quantized": _gen_quantized, "ints": _gen_ints, "mask": _gen_mask, "view": _gen_view}


def make_input(spec: dict):
    """The input a generator spec describes: ``GENERATORS[spec["gen"]](np.random.default_rng(spec["seed"]), spec)``."""
    return GENERATORS[spec["gen"]](np.random.default_rng(spec["seed"]), spec)


def _view(spec: dict, made: dict) -> Tensor:
    """``{"gen": "view", "of": NAME, "cols": [start, count]}``: columns ``start .. start+count`` of every row of
    the earlier input NAME, as the graphs take them (``ggml_view_4d`` with the source's row strides: the K-nope
    view of the latent cache, V as a view of K). ``start`` and ``count`` are whole blocks."""
    src = made.get(spec["of"])
    if not isinstance(src, Tensor):
        raise ValueError(f"view input: {spec['of']!r} is not an earlier Tensor input")
    start, count = spec["cols"]
    bs, ts = src.block_size, src.type_size
    if start % bs or count % bs or count <= 0 or start + count > src.ne[0]:
        raise ValueError(f"view input: columns {start}..{start + count} of {src.ne[0]} are not whole {bs}-blocks")
    return src.view((count, *src.ne[1:]), src.nb[1:], start // bs * ts)


def make_inputs(specs: dict) -> dict:
    """Every input of a case: the generated ones first, then the ``view`` ones over them (case files keep
    their inputs in key order, so a view may be listed before the input it views)."""
    made = {name: make_input(spec) for name, spec in specs.items() if spec["gen"] != "view"}
    for name, spec in specs.items():
        if spec["gen"] == "view":
            made[name] = _view(spec, made)
    return {name: made[name] for name in specs}
