"""The ``f32`` attention block over a q8_KV cache on ik_llama.cpp itself (the ik-llama-cpp-python 0.1.5 snapshot,
through mlaref's harness: :func:`mlaref.codegen.peers.harness_graph.run_graph`), DeepSeek-V2-Lite's shapes.

The peer's own tensors are checked against the spec's q8_KV routines applied to the peer's inputs of each step, so a
difference upstream of the step (the peer's ``fused_rms_norm`` and mlaref's 676f0e71b model of it differ in the last
bit of some values of ``kvr``) does not hide or fake one here:

* the cache store and the f32 cast: the cache rows the peer wrote and read back are ``d·q`` of q8_KV's quantizer of
  the peer's ``kvr`` (new cells) and of the rows it was given (earlier cells): **bit for bit**;
* K and V: the peer's q8_KV rows are the quantizer's rows of the peer's ``k_f32`` / ``v_f32``: **bit for bit**;
* flash attention on the peer's q, K and V: iqk's q8_KV kernel (``HelperQ8KV``, k_step 128) sums the softmax in
  another order than mlaref's ``generic`` and ``blocked`` algorithms, whose K·Q is the IQK GEMM's value: NMSE
  < 1e-11 (measured 1.1e-13 generic, 2.1e-14 blocked, AMD EPYC Zen 3 AVX2 build, one thread).
"""

import numpy as np
import pytest

from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import harness
from mlaref.reference import dequantize, quantize
from mlaref.reference.graphs.deepseek2 import build_attention_block
from mlaref.reference.graphs.synthetic import SyntheticModel
from mlaref.reference.hparams import preset
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.tensor import Tensor

PEER = "ik-llama-cpp-python"
N_CTX, T = 256, 32
KEEP = ("q_concat-0", "kvr-0", "kv_cache_view_f32-0", "k_f32-0", "v_f32-0", "k-0", "v-0", "kqv-0")


def _setup():
    hp = preset("deepseek-v2-lite").replace(n_layer=1, n_layer_dense_lead=1)
    g = build_attention_block(hp, N_CTX, variant="f32", cache_type="q8_KV", n_tokens=T, weight_type="q8_0")
    m = SyntheticModel(hp, seed=1)
    inputs = m.inputs(g)
    inputs["attn_norm-0"] = np.random.default_rng(3).standard_normal((T, hp.n_embd)).astype(np.float32)
    return g, m.weights(g), m.kv_cache(g), inputs


def _peer_block():
    """Runs in the worker that loaded the peer's harness: the kept tensors as (type, ne, bytes)."""
    from mlaref.codegen.peers import harness_graph

    g, w, kv, inp = _setup()
    out = harness_graph.run_graph(g, weights=w, kv_cache=kv, inputs=inp, keep=KEEP, n_threads=1)
    return {k: (t.type, t.ne, t.raw().tobytes()) for k, t in out.items()}


@pytest.fixture(scope="module")
def peer():
    try:
        harness.ensure(PEER, "native")
    except (peer_build.PeerBuildError, harness.HarnessError) as exc:
        pytest.skip(f"{PEER} cannot be built here: {exc}")
    res = harness.call(PEER, "native", "tests.graphs.test_q8_KV_peer:_peer_block", timeout=600)
    assert isinstance(res, dict), res
    return {k: Tensor.from_bytes(np.frombuffer(b, np.uint8), t, ne) for k, (t, ne, b) in res.items()}


def test_store_cast_and_kv_rows_are_iks_bytes(peer):
    g, _, kv, _ = _setup()
    kh = g.kv_head
    view = peer["kv_cache_view_f32-0"].to_numpy().reshape(N_CTX, 576)
    kvr = peer["kvr-0"].to_numpy().reshape(T, 576)
    assert np.array_equal(view[kh:kh + T], dequantize(quantize(kvr, "q8_KV"), "q8_KV"))
    assert np.array_equal(view[:kh], dequantize(kv[0].raw().reshape(N_CTX, 584)[:kh], "q8_KV"))
    for name, src in (("k-0", "k_f32-0"), ("v-0", "v_f32-0")):
        n = peer[src].ne[0]
        assert peer[name].type == "q8_KV" and peer[name].nb[1] == 8 + n
        want = quantize(peer[src].to_numpy().reshape(-1, n), "q8_KV")
        assert np.array_equal(peer[name].raw().reshape(-1, 8 + n), want), name


@pytest.mark.parametrize("algorithm,plan", [("generic", "ggml_generic"), ("blocked", "mlaref_l8a1")])
def test_flash_attention_on_q8_KV_agrees_with_iks(peer, algorithm, plan):
    g, _, _, inp = _setup()
    mask = Tensor.from_numpy(inp["KQ_mask"], "f16")
    got = flash_attn_ext(peer["q_concat-0"], peer["k-0"], peer["v-0"], mask, float(g.hparams.kq_scale),
                         algorithm=algorithm, plan=plan).to_numpy().astype(np.float64)
    want = peer["kqv-0"].to_numpy().astype(np.float64)
    assert np.sum((got - want) ** 2) / np.sum(want ** 2) < 1e-11
