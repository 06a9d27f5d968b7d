"""The aarch64 plans (``reference/plan.py``'s ``ggml_arm_*``) and the NEON soft_max against upstream ggml cross-built for aarch64.

Each level of ``mlaref.codegen.peers.cross`` (ggml 0.15.3 built with GCC for ``armv8-a``, ``armv8.2-a+dotprod`` and
``armv8.2-a+fp16+dotprod``) runs under qemu-user; every pair's ``vec_dot`` must equal the level's plan bit for
bit on sizes with tails (odd block counts, element counts around the 16/32-element steps, k-quants at 256 to
1280). One qemu run per level answers every dot product. Skipped, naming the packages, where the cross
compilers or qemu are missing; the first run builds each level into the user cache (about two minutes each).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from mlaref.codegen.peers import cross as peer_cross
from mlaref.reference import builds, get_type, quantize
from mlaref.reference.ops import vexp
from mlaref.reference.ops.soft_max import soft_max
from mlaref.reference.ops.vec_dot import vec_dot
from mlaref.reference.tensor import Tensor

PLAN = {lv: builds.level(lv).vec_dot_plan for lv in builds.ARM_LEVELS}
BLOCK_PAIRS = {x: get_type(x).vec_dot_type for x in ("q8_0", "q4_0", "q5_0", "iq4_nl", "q4_1", "q5_1", "q4_K", "q6_K")}
ELEMENTS = ("f32", "f16", "bf16")
SIZES = {"32": (32, 64, 96, 160, 352, 1024), "256": (256, 512, 768, 1280),
         "el": (1, 3, 4, 5, 15, 16, 17, 31, 32, 33, 47, 63, 64, 100, 129, 1031)}
PAIRS = [f"{x}.{y}" for x, y in BLOCK_PAIRS.items()] + [f"{e}.{e}" for e in ELEMENTS]


def _sizes(xt: str) -> tuple:
    if xt in ELEMENTS:
        return SIZES["el"]
    return SIZES["256"] if xt.endswith("_K") else SIZES["32"]


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _level_or_skip(level: str) -> str:
    reason = peer_cross.tools_missing()
    if reason:
        pytest.skip(reason)
    try:
        peer_cross.driver(level)
    except peer_cross.CrossToolsMissing as exc:
        pytest.skip(str(exc))
    except peer_cross.peer_build.PeerBuildError as exc:
        if "download" in str(exc):
            pytest.skip(str(exc))  # no network for the ggml-python sdist
        raise
    return level


def _floats(rng, rows: int, n: int) -> np.ndarray:
    return (rng.standard_normal((rows, n)) * rng.uniform(0.05, 4.0, (rows, 1))).astype(np.float32)


def _rows(t: str, x: np.ndarray) -> np.ndarray:
    if t == "f32":
        return x.view(np.uint8).reshape(len(x), -1)
    if t == "bf16":
        return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(len(x), -1)
    return quantize(x, t)


@functools.cache
def _cases(pair: str):
    """Deterministic (x rows, y rows, n) per size of the pair."""
    xt, yt = pair.split(".")
    out = []
    for n in _sizes(xt):
        rng = np.random.default_rng(1000 * n + len(pair))
        out.append((_rows(xt, _floats(rng, 3, n)), _rows(yt, _floats(rng, 4, n)), n))
    return tuple(out)


@functools.cache
def _level_run(level: str) -> dict:
    """Every pair and size of this file in one qemu run: {pair: [peer results in size order]}."""
    calls, keys = [], []
    for pair in PAIRS:
        for x, y, n in _cases(pair):
            calls.append((pair.split(".")[0], x, y, n))
            keys.append(pair)
    got = peer_cross.call_vec_dot_many(level, calls)
    out: dict = {}
    for k, g in zip(keys, got):
        out.setdefault(k, []).append(g)
    return out


@pytest.mark.parametrize("level", peer_cross.LEVEL_ORDER)
def test_compiled_features(level):
    _level_or_skip(level)
    f = peer_cross.compiled_features(level)
    assert f["neon"] and f["arm_fma"] and f["__ARM_FEATURE_FMA"]
    assert f["dotprod"] == f["__ARM_FEATURE_DOTPROD"] == (level != "aarch64-neon")
    assert f["fp16_va"] == f["__ARM_FEATURE_FP16_VECTOR_ARITHMETIC"] == (level == "aarch64-fp16")
    assert not (f["sve"] or f["matmul_int8"])


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("level", peer_cross.LEVEL_ORDER)
def test_level_build_equals_its_plan(level, pair):
    _level_or_skip(level)
    xt, yt = pair.split(".")
    for (x, y, n), want in zip(_cases(pair), _level_run(level)[pair]):
        got = vec_dot(x, xt, y, yt, n, PLAN[level])
        bad = np.argwhere(_bits(got) != _bits(want))
        assert not len(bad), (f"{level} {pair} n={n}: {len(bad)} of {got.size} differ, first {bad[0]}: "
                              f"plan {got[tuple(bad[0])]!r} ggml {want[tuple(bad[0])]!r}")


def test_levels_differ():
    """The emulated vdotq_s32 lanes (neon) and the f16 arithmetic (fp16) change bytes, so a plan with the wrong
    lane map or arithmetic fails the test above: each plan differs from its neighbour on these inputs."""
    x, y, n = _cases("q8_0.q8_0")[-1]
    neon, dot = (vec_dot(x, "q8_0", y, "q8_0", n, p) for p in ("ggml_arm_neon", "ggml_arm_dotprod"))
    assert (_bits(neon) != _bits(dot)).any()
    x, y, n = _cases("f16.f16")[-1]
    dot, fp16 = (vec_dot(x, "f16", y, "f16", n, p) for p in ("ggml_arm_dotprod", "ggml_arm_fp16"))
    assert (_bits(dot) != _bits(fp16)).any()
    x, y, n = _cases("q4_1.q8_1")[2]
    arm, avx2 = (vec_dot(x, "q4_1", y, "q8_1", n, p) for p in ("ggml_arm_dotprod", "ggml_x86_avx2"))
    assert (_bits(arm) != _bits(avx2)).any()


@pytest.mark.parametrize("t", ["q8_0", "q8_1", "q8_K", "f16"])
def test_from_float(t):
    """The CPU back-end's from_float on aarch64: q8_0 / q8_1 by the NEON code (``127/amax`` scaling, ties to even
    by ``vcvtnq_s32_f32``: the ``x86`` variant's numbers), q8_K and f16 by the reference routines."""
    level = _level_or_skip("aarch64-dotprod")
    rng = np.random.default_rng(5)
    x = _floats(rng, 6, 512)
    x[0, :40] = np.arange(40) + 0.5  # ties: 127/amax = 1 in the first block
    x[0, 0] = 127.0
    x[1, :13] = np.array([0x7FC00000, 0x7F800001, 0xFF800000, 0x33000000, 0x33000001, 0x477FF000, 0x477FEFFF,
                          0x38800000, 0x387FFFFF, 1, 0x80000001, 0x7F7FFFFF, 0x80000000], np.uint32).view(np.float32)
    if t != "f16":
        x[1, :13] = 0.0
    want = peer_cross.call_from_float(level, t, x)
    variant = builds.level(level).from_float(t)
    np.testing.assert_array_equal(quantize(x, t, variant=variant), want)


@pytest.mark.parametrize("level", peer_cross.LEVEL_ORDER)
def test_soft_max(level):
    _level_or_skip(level)
    rng = np.random.default_rng(11)
    for ne0 in (1, 3, 4, 5, 13, 16, 31, 64, 257):
        a = (rng.standard_normal((2, 4, 3, ne0)) * 6).astype(np.float32)
        a[0, 0, 0, 0] = 90.0  # |n| > 126 after the max is subtracted: the two-step scaling
        mask = rng.standard_normal((3, ne0)).astype(np.float16)
        for m, scale, max_bias in ((None, 1.0, 0.0), (mask, 0.7, 0.0), (mask, 0.5, 8.0)):
            want = peer_cross.call_soft_max(level, a, m, scale, max_bias)
            mt = None if m is None else Tensor.from_numpy(m)
            got = soft_max(Tensor.from_numpy(a), mt, scale, max_bias, simd=builds.level(level).simd).to_numpy()
            assert (_bits(got) == _bits(want)).all(), (level, ne0, scale, max_bias)


def test_neon_chunk_sum_is_not_the_avx_one():
    """(v0+v1)+(v2+v3) against (v0+v2)+(v1+v3): the NEON variant is not sse2_fma under another name."""
    v = np.array([[1.0, 2.0**-24, -1.0, 2.0**-24]], np.float32)
    assert vexp.chunk_sum(v, "neon")[0] != vexp.chunk_sum(v, "sse2_fma")[0]
