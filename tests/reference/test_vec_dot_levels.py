"""vec_dot of upstream ggml built at each CPU level (``generic``, ``avx``, ``avx2``, ...) against the level's plan.

Upstream ggml 0.15.3 is built from ggml-python's sdist at each level this CPU runs (``mlaref.codegen.peers.build``,
GGML_NATIVE=OFF, GCC's generic tuning) and run in a child process per level; the model is
``builds.level(level).vec_dot_plan``. Hand-derived inputs show the levels give different bytes, each its own.
"""

import numpy as np
import pytest

from mlaref.reference import builds
from mlaref.reference.ops.vec_dot import supported_pairs, vec_dot
from mlaref.reference.plan import PLANS

BLOCK_PAIRS = [("q8_0", "q8_0"), ("q4_0", "q8_0"), ("q5_0", "q8_0"), ("iq4_nl", "q8_0"),
               ("q4_1", "q8_1"), ("q5_1", "q8_1")]


@pytest.fixture(scope="module")
def peer(ggml):
    """The installed ggml-python library: it quantizes the inputs (its from_float / quantize_chunk)."""
    return ggml


def _data(peer, xt, yt, n, rows_x=3, rows_y=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows_x, n)).astype(np.float32)
    y = rng.standard_normal((rows_y, n)).astype(np.float32)
    return peer.quantize_chunk(xt, x), peer.from_float(yt, y)


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


LEVEL_PAIRS = [f"{x}.{y}" for x, y in BLOCK_PAIRS] + ["q4_K.q8_K", "q6_K.q8_K", "f32.f32", "f16.f16", "bf16.bf16"]
# 1 block, odd block counts (the AVX build's scalar last block), an even count, the MLA row; k-quants 1-3
# super-blocks; element pairs below / between / at the 32-element steps and with leftovers.
LEVEL_SIZES = {"block": (32, 96, 160, 576), "k": (256, 512, 768), "element": (7, 33, 47, 64, 100, 576)}


def _element_rows(et: str, n: int, rows_x: int, rows_y: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows_x, n)).astype(np.float32)
    y = rng.standard_normal((rows_y, n)).astype(np.float32)
    if et == "f16":
        x, y = x.astype(np.float16), y.astype(np.float16)
    if et == "bf16":
        x, y = (x.view(np.uint32) >> 16).astype(np.uint16), (y.view(np.uint32) >> 16).astype(np.uint16)
    return np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8)


def _level_or_skip(level: str):
    """Skip where this CPU cannot run ``level`` (naming the features it lacks) or its build cannot be made."""
    from mlaref.codegen.peers import build as peer_build  # noqa: PLC0415

    missing = peer_build.missing_for(level)
    if missing:
        pytest.skip(f"level {level} needs CPU features this machine lacks: {', '.join(missing)}")
    try:
        peer_build.shim(level)  # builds it into the user cache on first use (about a minute)
    except peer_build.PeerBuildError as exc:
        pytest.skip(str(exc))
    return peer_build


_LEVEL_RUNS: dict[str, dict] = {}


def _level_run(peer, level: str) -> dict:
    """{(pair, n): (x rows, y rows, upstream's results)} for every pair and size at ``level``: one child process
    per level (``peer_build.call_many``), computed once per session."""
    if level not in _LEVEL_RUNS:
        pb = _level_or_skip(level)
        jobs = []
        for pair in LEVEL_PAIRS:
            xt, yt = pair.split(".")
            kind = "element" if xt == yt and xt in ("f32", "f16", "bf16") else "k" if yt == "q8_K" else "block"
            for n in LEVEL_SIZES[kind]:
                if kind == "element":
                    qx, qy = _element_rows(xt, n, 4, 5, seed=n)
                else:
                    qx, qy = _data(peer, xt, yt, n, rows_x=4, rows_y=5, seed=n)
                jobs.append(((pair, n), qx, qy))
        want = pb.call_many(level, [("mlaref.codegen.peers.ggml:vec_dot_rows", (key[0].split(".")[0], qx, qy, key[1]),
                                     {}) for key, qx, qy in jobs])
        _LEVEL_RUNS[level] = {key: (qx, qy, w) for (key, qx, qy), w in zip(jobs, want)}
    return _LEVEL_RUNS[level]


@pytest.mark.parametrize("pair", LEVEL_PAIRS)
@pytest.mark.parametrize("level", builds.LEVEL_ORDER)
def test_level_build_equals_its_plan(peer, level, pair):
    """Upstream ggml built at ``level`` (GGML_NATIVE=OFF, GCC's generic tuning) = ``builds.level(level)``'s plan,
    bit for bit, every x row against every y row, at every size of the pair's kind."""
    run = _level_run(peer, level)
    plan = builds.level(level).vec_dot_plan
    xt, yt = pair.split(".")
    for (p, n), (qx, qy, want) in run.items():
        if p != pair:
            continue
        got = vec_dot(qx, xt, qy, yt, n, plan)
        bad = np.argwhere(_bits(got) != _bits(want))
        assert not len(bad), f"{plan} vs level {level}, {pair}, n = {n}: {len(bad)} of {got.size} differ, e.g. " \
                             f"{[(tuple(ij), got[tuple(ij)], want[tuple(ij)]) for ij in bad[:3]]}"


def _q8_0_row(blocks) -> np.ndarray:
    """q8_0 row bytes from [(d, {index: q})] per block."""
    out = b""
    for d, qs in blocks:
        q = np.zeros(32, np.int8)
        for i, v in qs.items():
            q[i] = v
        out += np.array([d], "<f2").tobytes() + q.tobytes()
    return np.frombuffer(out, np.uint8)


def _known_cases():
    """Inputs whose bytes tell the levels' orders apart (each value derived by hand below).

    f32, n = 64, y = 1 except y[32] = 1 + 2**-12:
      row A: x[0] = -1, x[32] = 1 + 2**-12 (lane 0 of accumulator 0 in both 32-element steps). The product
        (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 rounds to 1 + 2**-11 (a tie, to even). Without FMA (generic's double
        sum, avx) the result is 2**-11; avx2's fused step keeps it exactly: 2**-11 + 2**-24.
      row B: x[0] = 2**24, x[8] = x[16] = 1: generic's double sum gives 2**24 + 2; the 8-lane builds put the three
        in accumulators 0, 1, 2, fold (a0 + a2) + (a1 + a3): 2**24 + 1 -> 2**24 (tie to even), + 1 -> 2**24.
    q8_0, n = 64 (two blocks): block 0 of x and y: d = 1024, q[0] = 4 (one product 2**20 * 16 = 2**24);
      block 1 (d = 1) of y has q[0] = q[4] = q[16] = 1 and of x row A q[0] = q[16] = 1, of row B q[0] = q[4] = 1.
      generic (serial): 2**24 + 2 for both rows. avx (int_to_float lane8: block 1 in register lanes 4..7, lane 4 =
      products 0..3 and 16..19): row A lane 4 = 2, l0 + l4 = 2**24 + 2; row B lanes 4, 5 = 1, 1: (l0 + l4) ->
      2**24, + (l1 + l5) -> 2**24. avx2 (lane4, one block per register, FMA): element 0 of block 1 joins lane 0:
      fma(1, 1, 2**24) -> 2**24 for both rows; element 16 (lane 4) or 4 (lane 1) is then lost in the fold: 2**24.
    """
    e = 2.0**-12
    y = np.ones((1, 64), np.float32)
    y[0, 32] = 1 + e
    xa = np.zeros(64, np.float32)
    xa[0], xa[32] = -1, 1 + e
    xb = np.zeros(64, np.float32)
    xb[0], xb[8], xb[16] = 2.0**24, 1, 1
    f32 = (np.stack([xa, xb]).view(np.uint8), y.view(np.uint8))
    big = (1024.0, {0: 4})
    q8 = (np.stack([_q8_0_row([big, (1.0, {0: 1, 16: 1})]), _q8_0_row([big, (1.0, {0: 1, 4: 1})])]),
          _q8_0_row([big, (1.0, {0: 1, 4: 1, 16: 1})])[None, :])
    t = 2.0**24
    want = {  # plan -> (f32 rows A, B; q8_0 rows A, B)
        "ggml_generic": ((2.0**-11, t + 2), (t + 2, t + 2)),
        "ggml_x86_avx": ((2.0**-11, t), (t + 2, t)),
        "ggml_x86_avx2": ((2.0**-11 + 2.0**-24, t), (t, t)),
    }
    return {"f32": f32, "q8_0": q8}, want


@pytest.mark.parametrize("level", ["generic", "avx", "avx2"])
def test_levels_differ_on_known_inputs(level):
    """Each level's plan gives its own hand-derived bytes on ``_known_cases`` (so the three orders differ), and
    upstream ggml built at that level gives the same."""
    cases, want = _known_cases()
    plan = builds.level(level).vec_dot_plan
    assert len({v for v in want.values()}) == len(want)  # the cases tell every pair of these plans apart
    got = tuple(tuple(vec_dot(x, t, y, t, 64, plan)[:, 0].tolist()) for t, (x, y) in cases.items())
    assert got == want[plan]
    pb = _level_or_skip(level)
    built = tuple(tuple(pb.call(level, "mlaref.codegen.peers.ggml:vec_dot_rows", t, x, y, 64)[:, 0].tolist())
                  for t, (x, y) in cases.items())
    assert built == want[plan]


def test_native_build_on_known_inputs(peer, peer_plan):
    """The loaded (native) build on ``_known_cases``: its plan's bytes; where that plan is one of the level plans'
    orders for these pairs (e.g. ggml_x86_avx2_znver3 = ggml_x86_avx2 for f32 and q8_0), the hand values too."""
    cases, want = _known_cases()
    for t, (x, y) in cases.items():
        got = vec_dot(x, t, y, t, 64, peer_plan)
        built = np.array([[peer.vec_dot(t, x[i], y[0], 64)] for i in range(len(x))], np.float32)
        assert np.array_equal(_bits(got), _bits(built)), t
    for name, values in want.items():
        same = all(PLANS[peer_plan].for_pair(f"{t}.{t}").replace(name="") == PLANS[name].for_pair(f"{t}.{t}")
                   .replace(name="") for t in cases)
        if same:
            assert tuple(tuple(vec_dot(x, t, y, t, 64, peer_plan)[:, 0].tolist())
                         for t, (x, y) in cases.items()) == values




@pytest.mark.parametrize("name", builds.LEVEL_ORDER)
def test_every_level_plan_defines_every_pair(name):
    """A build's plan must give an order for every pair vec_dot accepts (ggml's x86 plans are per pair only)."""
    plan = PLANS[builds.level(name).vec_dot_plan]
    for pair in supported_pairs():
        assert plan.for_pair(pair) is not None, pair
