"""mlaref bench peers: the plumbing (one child per peer, the same input bytes, results compared), never a speed."""

import math

import pytest

from mlaref.codegen.bench import peers as bench_peers
from mlaref.codegen.kernels import mm as KM


def test_each_peer_times_the_same_op_on_the_same_bytes():
    res = bench_peers.bench_peers(cases=("mul_mat f16 x f16", "fa f16"), n_kvs=(64,), threads=(1,),
                                  peers=("ik-llama-cpp-python", "llama-cpp-python"), repeats=1, warmup=0)
    assert [(r["case"], r["n_kv"], r["threads"]) for r in res["rows"]] == [("mul_mat f16 x f16", 64, 1),
                                                                           ("fa f16", 64, 1)]
    for r in res["rows"]:
        for who in ("mlaref", "ik-llama-cpp-python", "llama-cpp-python"):
            assert r[f"{who}_s"] > 0 and math.isfinite(r[f"{who}_gflops"])
            if r["peak_gflops"] is not None:  # the fraction of the FMA peak measured for the row
                assert r[f"{who}_peak_frac"] == pytest.approx(r[f"{who}_gflops"] / r["peak_gflops"])
        for p in ("ik-llama-cpp-python", "llama-cpp-python"):
            # same inputs, f32 accumulation everywhere: only the float order differs
            assert r[f"{p}_nmse"] < 1e-6, (r["case"], p, r[f"{p}_nmse"])
            assert r[f"{p}_ratio"] == pytest.approx(r[f"{p}_s"] / r["mlaref_s"])
    # mul_mat runs this CPU's native plan, named in the row and the table
    assert res["rows"][0]["mlaref_plan"] == KM.fastest_plan().name
    table = bench_peers.format_table(res)
    assert "ik-llama-cpp-python" in table and "mul_mat f16 x f16" in table and KM.fastest_plan().name in table


def test_unknown_peers_and_cases_are_refused():
    with pytest.raises(ValueError, match="unknown peer"):
        bench_peers.bench_peers(peers=("llama.cpp",), n_kvs=(64,), repeats=1)
    with pytest.raises(ValueError, match="unknown case"):
        bench_peers.bench_peers(cases=("conv2d",), n_kvs=(64,), peers=(), repeats=1)
