"""ik_llama.cpp's fused_rms_norm on its own build (the ik-llama-cpp-python 0.1.5 snapshot, through the harness):
since #1427 it computes (scale·w)·x, not 676f0e71b's (x·w)·scale (upstream facts §4g); the spec's ``order`` gives
each version's bytes, and the executor's options select it for the snapshot (as ``mlaref conform``'s MLA block
does)."""

from types import SimpleNamespace

import numpy as np
import pytest

from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import harness, harness_graph
from mlaref.reference.graphs import executor, ir

IK = "ik-llama-cpp-python"


def _graph():
    x = ir.input_tensor("x", "f32", (512, 16))
    w = ir.weight("w", "f32", (512,))
    y = ir.fused_rms_norm(x, w, 1e-6).set_name("y")
    g = ir.Graph()
    g.expand(y)
    return SimpleNamespace(graph=g, weights={"w": w}, inputs={"x": x}, kv_cache=[], output=y)


def _values():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(512)).astype(np.float32)  # the synthetic model's norm weights
    return {"x": x}, {"w": w}


def _on_peer(n_threads):
    inputs, weights = _values()
    out = harness_graph.run_graph(_graph(), weights=weights, kv_cache=[], inputs=inputs, keep=("y",),
                                  n_threads=n_threads)
    return out["y"].to_numpy()


def _spec(order):
    inputs, weights = _values()
    out = executor.run_graph(_graph(), weights=weights, kv_cache=[], inputs=inputs, keep=("y",),
                             options={"FUSED_RMS_NORM": {"order": order}})
    return out["y"].to_numpy()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_the_snapshot_scales_the_weight_first(n_threads):
    try:
        harness.ensure(IK, "native")
    except (peer_build.PeerBuildError, harness.HarnessError) as exc:
        pytest.skip(f"{IK} cannot be built here: {exc}")
    theirs = harness.call(IK, "native", "tests.peers.test_fused_rms_norm_peer:_on_peer", n_threads)
    new, old = _spec("scale_w_x"), _spec("x_w_scale")
    assert np.array_equal(theirs.view(np.uint32), new.view(np.uint32))
    assert (old != new).sum() > 1000  # the two orders really differ on these inputs: the check can tell them apart


def test_an_unknown_order_is_refused():
    with pytest.raises(ValueError, match="order must be one of"):
        _spec("w_x_scale")
