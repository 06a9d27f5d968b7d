"""Issue #21: the compute buffer of each graph variant equals what the real allocator reports.

Every graph is built twice from the same builder call: here as IR for mlaref's model of ggml-alloc
(``alloc.allocate_graph`` with the peer's allocator version, ``harness_graph.PEER_ALLOCATOR``), and in a worker
process by the peer's own ggml calls (``harness_graph.reserve``: nodes without data, weights and the KV cache in a
CPU buffer of their own, inputs flagged), measured by the peer's own ``ggml_gallocr_reserve`` with the CPU buffer
type. The buffer bytes (``ggml_gallocr_get_buffer_size``), the ggml graph's node order and every tensor's offset
in the compute buffer must agree; ``first_difference`` names the first tensor placed differently.

The peers: ik_llama.cpp's April-2026 snapshot (ik-llama-cpp-python 0.1.5; its ggml-alloc places tensors as
676f0e71b's does and its CPU buffer adds 32 bytes) and upstream ggml 0.25.3 (llama-cpp-python 0.3.36; the same
placement, nothing added: upstream facts §6.7). Upstream ggml has no ``ggml_fused_rms_norm``, so its graphs are
the IR's with each fused norm lowered to RMS_NORM + MUL (``lower_fused_rms_norm``, what llama.cpp builds there);
it has no ``ggml_fused_mul_unary`` / ``ggml_multi_add`` either, so ik's whole-model graph (its MoE FFN) runs on
ik_llama.cpp only.
"""

import dataclasses

import pytest

from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import harness, harness_graph
from mlaref.reference.graphs import alloc, deepseek2, ir
from mlaref.reference.hparams import preset

IK, UPSTREAM = "ik-llama-cpp-python", "llama-cpp-python"
LITE = preset("deepseek-v2-lite")
LITE_2 = dataclasses.replace(LITE, n_layer=2)  # one dense layer, one MoE layer, Lite's sizes
CTX_UBATCH = ((512, 128), (2048, 512), (8192, 128), (8192, 512))


def _case(kind, variant, n_ctx, batch, **kw):
    """``batch``: the block's n_tokens, the model's n_ubatch; ``kw`` goes to the builder."""
    return (kind, variant, n_ctx, batch, tuple(sorted(kw.items())))


def _case_id(case):
    kind, variant, n_ctx, batch, kw = case
    extra = "".join(f"-{k}={v}" for k, v in kw)
    return f"{kind}-{variant}-ctx{n_ctx}-{'ub' if kind == 'model' else 'T'}{batch}{extra}"


BLOCK_CASES = [_case("block", v, n, t) for v in deepseek2.VARIANTS for n, t in CTX_UBATCH]
# the cache row [k_rope | c_kv] (PR #408, upstream facts §9.2) where the builder takes it
BLOCK_CASES += [_case("block", v, 8192, 512, rope_first=True) for v in ("direct", "chunked", "mla3", "mla3-amb")]
BLOCK_CASES += [_case("block", "mla3-amb", 8192, 512, amb_mib=32),  # 4 groups of 4 heads
                _case("block", "mla3", 4096, 512, amb_mib=16),
                _case("block", "direct", 2048, 512, cache_type="q8_0"),
                _case("block", "f32", 2048, 512, cache_type="q8_0"),
                _case("block", "mainline", 2048, 512, tg=True)]
MODEL_CASES = [_case("model", v, n, t) for v in deepseek2.VARIANTS for n, t in ((512, 128), (2048, 512), (8192, 512))]
MODEL_CASES += [_case("model", "direct", 2048, 512, fmoe=True),  # MOE_FUSED_UP_GATE
                _case("model", "direct", 2048, 512, n_tokens=1)]  # the token-generation path
CASES = [(IK, c) for c in BLOCK_CASES + MODEL_CASES] + [(UPSTREAM, c) for c in BLOCK_CASES]


def _graph(peer, case):
    kind, variant, n_ctx, batch, kw = case
    kw = dict(kw)
    if kind == "block":
        g = deepseek2.build_attention_block(LITE, n_ctx, variant=variant, n_tokens=batch, **kw)
    else:
        g = deepseek2.build_graph(LITE_2, n_ctx, variant=variant, n_ubatch=batch, **kw)
    # ggml_set_output on the result, as upstream llama.cpp flags its logits (llama.cpp@676f0e71b flags nothing: the
    # last node is never freed nor taken in place either way)
    g.output.flags |= ir.FLAG_OUTPUT
    return harness_graph.lower_fused_rms_norm(g) if peer == UPSTREAM else g


def _reserve(peer, case):
    """Runs in the worker that loaded ``peer``'s harness."""
    return harness_graph.reserve(_graph(peer, case))


def _peer_or_skip(peer):
    try:
        harness.ensure(peer, "native")
    except (peer_build.PeerBuildError, harness.HarnessError) as exc:
        pytest.skip(f"{peer} cannot be built here: {exc}")


_measured: dict = {}


def _measure(peer):
    """Every case of ``peer`` reserved in one worker process (built once per test session)."""
    if peer not in _measured:
        _peer_or_skip(peer)
        cases = [c for p, c in CASES if p == peer]
        calls = [("tests.peers.test_harness_reserve:_reserve", (peer, c), {}) for c in cases]
        _measured[peer] = dict(zip(cases, harness.call_many(peer, "native", calls, timeout=600), strict=True))
    return _measured[peer]


def _mlaref_only_op(case) -> bool:
    """The chunked variant with more KV cells than one chunk uses mlaref's FLASH_ATTN_EXT_PARTIAL / FA_MERGE."""
    _, variant, n_ctx, _, _ = case
    return variant == "chunked" and n_ctx > deepseek2.DEFAULT_KV_CHUNK


@pytest.mark.parametrize("peer,case", CASES, ids=[f"{p}-{_case_id(c)}" for p, c in CASES])
def test_the_model_gives_the_peers_compute_buffer(peer, case):
    real = _measure(peer)[case]
    if _mlaref_only_op(case):
        assert isinstance(real, tuple) and real[1][0] == "NotImplementedError", real
        assert "FLASH_ATTN_EXT_PARTIAL has no ggml counterpart" in real[1][1], real
        # chunked beyond one chunk is mlaref's own design: no peer has its ops, and the harness must say so (checked
        # above); its buffer is the allocator model's alone (the model itself is checked on every other case)
        return
    assert isinstance(real, harness_graph.GraphReserve), real
    g = _graph(peer, case)
    model = alloc.allocate_graph(getattr(g, "graph", g), allocator=harness_graph.PEER_ALLOCATOR[peer])
    assert harness_graph.first_difference(g, model, real) is None
    assert model.buffer_size == real.buffer_size
    kind, variant, n_ctx, batch, kw = case
    if kind == "model" and peer == IK:  # what `mlaref plan` computes (its default allocator, 676f0e71b)
        assert alloc.compute_buffer(LITE_2, n_ctx, variant=variant, n_ubatch=batch, **dict(kw)).buffer_size == \
            real.buffer_size


def test_the_two_peers_differ_by_the_cpu_buffers_32_bytes():
    """Upstream facts §6.7: both place tensors alike, but only ik_llama.cpp's CPU buffer type adds
    TENSOR_ALIGNMENT. (Upstream's lowered norm puts the MUL in place over the RMS_NORM: the same block.)"""
    ik, up = _measure(IK), _measure(UPSTREAM)
    for case in BLOCK_CASES:
        if not _mlaref_only_op(case):
            assert ik[case].buffer_size - up[case].buffer_size == 32, _case_id(case)


def test_the_seed_cell_at_2048_is_the_logits_and_its_norm():
    """ik's own allocator on the 2-layer Lite model at 2048 (ubatch 512): the last nodes' 200 MiB of logits plus
    the 4 MiB result_norm, plus the buffer's 32 bytes: the 204.00 MiB cell of upstream facts §6.5."""
    for variant in ("f32", "direct"):
        assert _measure(IK)[_case("model", variant, 2048, 512)].buffer_size == (204 << 20) + 32


def test_upstream_ggml_has_no_moe_fusions():
    """ik's whole-model graph cannot be built on upstream ggml 0.25.3: its FFN uses ik_llama.cpp's own fused ops."""
    _peer_or_skip(UPSTREAM)
    case = _case("model", "direct", 512, 128)
    out = harness.call_many(UPSTREAM, "native", [("tests.peers.test_harness_reserve:_reserve", (UPSTREAM, case), {})])
    assert out[0][0] == "raised" and "this ggml has no ggml_fused_mul_unary" in out[0][1][1], out


# -- the allocator's rules on small graphs of one's own ------------------------------------------------------------

def _small(kind):
    """A small graph that exercises one rule of ggml-alloc (upstream facts §6.2)."""
    x = ir.input_tensor("x", "f32", (256, 8))
    w1, w2 = ir.weight("w1", "f32", (256, 64)), ir.weight("w2", "f32", (64, 32))
    h = ir.mul_mat(w1, x).set_name("h")
    if kind == "output":
        h.flags |= ir.FLAG_OUTPUT
    src = ir.reshape_2d(h, 64, 8) if kind == "view" else h
    s = ir.scale(src, 0.5).set_name("s")
    if kind == "cast":
        s = ir.cast(s, "f16").set_name("s16")
    out = ir.mul_mat(w2 if kind != "cast" else ir.weight("w2h", "f16", (64, 32)), s).set_name("out")
    g = ir.Graph()
    g.expand(out)
    return g


def _reserve_small(kind):
    return harness_graph.reserve(_small(kind))


SMALL = ("in_place", "output", "view", "cast")


@pytest.mark.parametrize("peer", [IK, UPSTREAM])
def test_the_allocators_rules_on_small_graphs(peer):
    """In place: SCALE takes the block of its only parent h; not when h is flagged OUTPUT (never freed, never
    taken); not when the parent is a view (ggml-alloc has a branch for view parents, but a view is never its own
    allocation, so it never qualifies). A cast counts itself as a child. The peer shows each rule directly, and the
    model agrees tensor by tensor."""
    _peer_or_skip(peer)
    out = harness.call_many(peer, "native", [("tests.peers.test_harness_reserve:_reserve_small", (k,), {})
                                             for k in SMALL])
    for kind, real in zip(SMALL, out, strict=True):
        assert isinstance(real, harness_graph.GraphReserve), (kind, real)
        g = _small(kind)
        at = {t.name: off for t, off in zip(g.nodes, real.node_offsets)}
        if kind == "in_place":
            assert at["s"] == at["h"]
        if kind in ("output", "view"):
            assert at["s"] != at["h"]
        model = alloc.allocate_graph(g, allocator=harness_graph.PEER_ALLOCATOR[peer])
        assert harness_graph.first_difference(g, model, real) is None, kind


def test_first_difference_names_the_tensor_placed_differently():
    g = _small("in_place")
    model = alloc.allocate_graph(g)
    offs = [model.offsets.get(t, -1) for t in g.nodes]
    leaf = tuple(model.offsets.get(t, -1) for t in g.leafs)
    ok = harness_graph.GraphReserve(model.buffer_size, len(g.nodes), tuple(range(len(g.nodes))), leaf, tuple(offs))
    assert harness_graph.first_difference(g, model, ok) is None
    k = [t.name for t in g.nodes].index("out")
    moved = dataclasses.replace(ok, node_offsets=tuple(o + 32 if i == k else o for i, o in enumerate(offs)))
    assert "'out'" in harness_graph.first_difference(g, model, moved)
    swapped = dataclasses.replace(ok, node_order=(1, 0, *range(2, len(g.nodes))))
    assert "another order" in harness_graph.first_difference(g, model, swapped)
    bigger = dataclasses.replace(ok, buffer_size=model.buffer_size + 32)
    assert "the buffer" in harness_graph.first_difference(g, model, bigger)


def test_an_unknown_allocator_is_refused():
    with pytest.raises(ValueError, match="allocator must be one of ik-676f0e71b, ik-2026-04, ggml-0.25.3"):
        alloc.allocate_graph(_small("in_place"), allocator="ggml-0.15.3")


def test_lowering_the_fused_norm_keeps_everything_else():
    g = deepseek2.build_attention_block(LITE, 512, variant="direct", n_tokens=128)
    low = harness_graph.lower_fused_rms_norm(g)
    ops = [t.op for t in g.graph.nodes]
    low_ops = [t.op for t in low.nodes]
    k = ops.index("FUSED_RMS_NORM")
    assert ops.count("FUSED_RMS_NORM") == 1 and "FUSED_RMS_NORM" not in low_ops
    assert low_ops == ops[:k] + ["RMS_NORM", "MUL"] + ops[k + 1:]
    assert [t.name for t in low.leafs] == [t.name for t in g.graph.leafs]


# -- bad requests never reach C ------------------------------------------------------------------------------------

def _bad_reserve_requests():
    import numpy as np  # noqa: PLC0415 - runs in the worker, after load()

    from mlaref.reference.tensor import Tensor  # noqa: PLC0415

    out = []
    g = harness.loaded().graph()
    g.input(Tensor.from_numpy(np.zeros((2, 4), np.float32)))
    w = harness.loaded().graph()
    w.op("scale", w.weight("f32", (4,)), fp=(1.0,))
    for build in (lambda: g.reserve(), lambda: w.run([0]), lambda: w.new("f32", (4,), flags=4),
                  lambda: w.op("argsort", 0, ip=(2,)), lambda: w.op("multi_add", 0, ip=(0,)),
                  lambda: w.cast(7, "f16"), lambda: w.weight("f32", (0, 4))):
        try:
            build()
            out.append("accepted")
        except (ValueError, TypeError) as exc:
            out.append(type(exc).__name__ + ": " + str(exc))
    return out


def test_bad_reserve_requests_are_refused_in_python():
    _peer_or_skip(UPSTREAM)
    out = harness.call(UPSTREAM, "native", "tests.peers.test_harness_reserve:_bad_reserve_requests")
    assert out[0].startswith("ValueError: node 0: a reserve graph takes no input()")
    assert out[1].startswith("ValueError: node 0: a computed graph takes no weight()")
    assert out[2].startswith("ValueError: flags must combine FLAG_INPUT")
    assert out[3].startswith("ValueError: argsort: the order must be 0 (ascending) or 1 (descending)")
    assert out[4].startswith("ValueError: multi_add: n_experts must be >= 1")
    assert out[5].startswith("ValueError: cast: source 7 is not an earlier node")
    assert out[6].startswith("ValueError: ne must be 1 to 4 positive sizes")
