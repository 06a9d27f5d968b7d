"""mlaref bench peers: the plumbing (one child per peer, the same input bytes, results compared), never a speed."""

import math

import numpy as np
import pytest

from mlaref.codegen.bench import peers as bench_peers
from mlaref.codegen.kernels import mm as KM
from mlaref.reference import compare
from mlaref.reference.tensor import Tensor


def test_each_peer_times_the_same_op_on_the_same_bytes():
    res = bench_peers.bench_peers(cases=("mul_mat f16 x f16", "fa f16"), n_kvs=(64,), threads=(1,),
                                  peers=("ik-llama-cpp-python", "llama-cpp-python"), repeats=1, warmup=0)
    assert [(r["case"], r["n_kv"], r["threads"]) for r in res["rows"]] == [("mul_mat f16 x f16", 64, 1),
                                                                           ("fa f16", 64, 1)]
    for r in res["rows"]:
        for who in ("mlaref", "ik-llama-cpp-python", "llama-cpp-python"):
            assert r[f"{who}_s"] > 0 and math.isfinite(r[f"{who}_gflops"])
            if r["peak_gflops"] is not None:  # the fraction of the FMA loop's rate in the row's rounds
                assert r[f"{who}_peak_frac"] == pytest.approx(r[f"{who}_gflops"] / r["peak_gflops"])
                assert r["peak_best_gflops"] > 0
        assert "fma loop_s" not in r  # the yardstick is not a contender of the table
        for p in ("ik-llama-cpp-python", "llama-cpp-python"):
            # same inputs, f32 accumulation everywhere: only the float order differs
            assert r[f"{p}_nmse"] < 1e-6, (r["case"], p, r[f"{p}_nmse"])
            assert r[f"{p}_ratio"] == pytest.approx(r[f"{p}_s"] / r["mlaref_s"])
    # mul_mat and flash attention run this CPU's native plans, named in the row and the table
    assert res["rows"][0]["mlaref_plan"] == KM.fastest_plan().name
    assert res["rows"][1]["mlaref_plan"] == KM.fastest_fa_plan(k_step=64, kv_chunks=1, exp="v_expf_avx2").name
    table = bench_peers.format_table(res)
    assert "ik-llama-cpp-python" in table and "mul_mat f16 x f16" in table and KM.fastest_plan().name in table


# the #253 cases: upstream's supports_op takes a non-f32 src1 only when it is already the weight's vec_dot type
UPSTREAM_REFUSES = {"mul_mat q8_0 x f16", "mul_mat iq4_nl x f16"}
# where the peer requantizes src1 into another format the two results round src1 apart: the ik snapshot's vec_dot
# type of q8_0 and iq4_nl is q8_2_x4, with bf16 scales (docs/facts/ik-snapshot.md section 2), whatever src1 is
REQUANTIZES = {("ik-llama-cpp-python", c) for c in ("mul_mat q8_0 x q8_0", "mul_mat q8_0 x f16",
                                                    "mul_mat iq4_nl x f16")}


@pytest.mark.parametrize("case", [c for c in bench_peers.CASES if c not in ("mul_mat f16 x f16", "fa f16")])
def test_every_flashmla2_case_runs_on_every_peer_that_supports_it(case):
    peers = ("ik-llama-cpp-python", "llama-cpp-python")
    res = bench_peers.bench_peers(cases=(case,), n_kvs=(64,), threads=(1,), peers=peers, repeats=1, warmup=0)
    (r,) = res["rows"]
    assert ("llama-cpp-python_unsupported" in r) == (case in UPSTREAM_REFUSES)
    assert "ik-llama-cpp-python_unsupported" not in r  # ik takes every #253 case
    for p in peers:
        if p + "_unsupported" in r:
            assert "supports_op refuses" in r[p + "_unsupported"] and p + "_s" not in r
            assert "unsupported" in bench_peers.format_table(res)
            continue
        bound = 1e-4 if (p, case) in REQUANTIZES else 1e-6
        assert r[f"{p}_nmse"] < bound, (case, p, r[f"{p}_nmse"])


def test_unknown_peers_and_cases_are_refused():
    with pytest.raises(ValueError, match="unknown peer"):
        bench_peers.bench_peers(peers=("llama.cpp",), n_kvs=(64,), repeats=1)
    with pytest.raises(ValueError, match="unknown case"):
        bench_peers.bench_peers(cases=("conv2d",), n_kvs=(64,), peers=(), repeats=1)


def test_a_peer_graph_computes_again_and_again_with_its_work_buffer():
    """A graph whose compute needs a work buffer (src1 quantized to the vec_dot type: 2.3 MB here) computed 60
    times: the harness keeps one work buffer, where ggml_graph_compute_with_ctx took a new one from the context on
    every call until the peer aborted (regression: ik died after about 40 such calls at n_kv 4096)."""
    from mlaref.codegen.peers import build as peer_build

    peer = "ik-llama-cpp-python"
    if not peer_build.built("native", peer):
        pytest.skip(f"{peer} is not built here (mlaref peer build {peer})")
    rng = np.random.default_rng(5)
    w = Tensor.from_numpy((rng.standard_normal((32, 512)) * 0.05).astype(np.float32), "q8_0")
    x = Tensor.from_numpy(rng.standard_normal((4096, 512)).astype(np.float32))
    r = bench_peers.RemoteGraph(peer, "mul_mat", [w, x])
    try:
        for i in range(60):
            assert r.compute(1 + i % 2) > 0
        out = r.result()
    finally:
        r.close()
    assert out.ne == (32, 4096, 1, 1)
    want = x.to_numpy().reshape(4096, 512).astype(np.float64) @ w.to_numpy().reshape(32, 512).T
    assert compare.nmse(out.to_numpy().reshape(4096, 32), want) < 1e-3
