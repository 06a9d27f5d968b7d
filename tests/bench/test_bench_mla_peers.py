"""bench mla --backend arena against the peers: the arena's IR graph on ik_llama.cpp and ggml 0.25.3 (one child per
peer and variant), its outputs against the arena's, the ratios, skipped peers; never a speed."""

import numpy as np
import pytest

from mlaref.codegen.bench import mla as B
from mlaref.codegen.bench import mla_arena as MA
from mlaref.codegen.bench.mla_layers import VARIANTS
from mlaref.codegen.bench.peers import RemoteGraph
from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import harness
from mlaref.reference.hparams import preset

PEERS = tuple(MA.PEER_TAGS)


def _need(peer):
    if not peer_build.built("native", peer):
        pytest.skip(f"{peer} is not built here (a cold build takes 11-20 minutes): run `mlaref peer build {peer}`")


@pytest.fixture(scope="module")
def arena_result():
    for p in PEERS:
        _need(p)
    # 2 heads, 32 queries, n_kv 512 in chunks of 256: the arena's chunked graph has two partials and a merge, the
    # peers' (ggml-only) two flash_attn_ext nodes
    return B.run_mla(n_kv=(512,), T=32, n_head=2, repeats=1, n_threads=2, kv_chunk=256, backend="arena",
                     peers=PEERS)


def test_each_peer_times_the_arenas_graph_and_matches_its_output(arena_result):
    res = arena_result
    assert res["peers"] == list(PEERS) and res["skipped_peers"] == {}
    row = res["rows"][0]
    for v in VARIANTS:
        ta = row[f"arena/{v}"]["median"]
        for p, tag in MA.PEER_TAGS.items():
            t = row[f"{tag}/{v}"]
            assert t["median"] > 0 and t["spread"] >= 0 and len(t["all"]) == 1
            assert row[f"ratio_{tag}_{v}"]["value"] == pytest.approx(t["median"] / ta)
            e = row[f"nmse_{tag}_{v}"]
            # every attention result compared: the chunked graph's two chunks
            assert e["outputs"] == (["kqv_c0-0", "kqv_c1-0"] if v == "chunked" else ["kqv-0"])
            assert 0 <= e["value"] < MA.NMSE_BOUND[p] and e["within_bound"], (p, v, e["value"])
        ops = row[f"profile_{v}"]["ops"]
        assert set(ops) == {"arena", *MA.PEER_TAGS.values()}
        assert ("FA_MERGE" in ops["arena"]) == (v == "chunked")
        for tag in MA.PEER_TAGS.values():
            assert {"MUL_MAT", "FLASH_ATTN_EXT", "CPY", "CONCAT"} <= set(ops[tag]), (v, tag, ops[tag])
    table = B.format_table(res)
    for what in ("ik/arena", "ggml025/arena", "ggml/arena", "nmse", "seconds per op kind"):
        assert what in table


def test_a_remote_ir_graph_gives_run_graphs_bytes_on_every_compute():
    """RemoteGraph.of_graph (prepared once, computed twice) against harness_graph.run_graph (built and computed once)
    on the same peer, one thread: equal bytes for every kept tensor, and the two computes agree."""
    peer = PEERS[0]
    _need(peer)
    hp = preset("deepseek-v2-lite")
    s = {"n_head": 2, "T": 32, "rank": hp.n_lora_kv, "rope": hp.n_rot, "nope": hp.n_embd_head_qk_nope,
         "dv": hp.n_embd_head_v, "dk": hp.n_embd_head_qk_nope + hp.n_rot, "kq_scale": float(hp.kq_scale)}
    g, vals = MA.layer_setups(hp, s, 512, 256, seed=4, merged=False)["chunked"]  # ggml-only: no partial / merge
    keep = ["k_c0-0", "v_c1-0", *MA.attention_names(g)]
    want = harness.call(peer, "native", "mlaref.codegen.peers.harness_graph:run_graph", g, **vals, keep=keep,
                        n_threads=1)
    r = RemoteGraph.of_graph(peer, g, vals, keep=keep)
    try:
        assert r.names == keep
        assert r.compute(1) > 0
        first = [t.raw().tobytes() for t in r.results()]
        r.compute(1)
        second = r.results()
    finally:
        r.close()
    assert [t.raw().tobytes() for t in second] == first
    for name, t in zip(keep, second):
        assert (t.type, t.ne) == (want[name].type, want[name].ne), name
        assert t.raw().tobytes() == want[name].raw().tobytes(), name
    assert np.all(np.isfinite(second[-1].to_numpy()))


def test_a_peers_profile_times_every_node_of_the_ir_graph_alone():
    """RemoteGraph.profile on each peer: one entry per node of the peer's graph, every IR node with a kernel named
    with its op, times >= 0 (> 0 for mul_mat and flash_attn_ext); computing node by node leaves the bytes of a
    whole compute."""
    hp = preset("deepseek-v2-lite")
    s = {"n_head": 2, "T": 32, "rank": hp.n_lora_kv, "rope": hp.n_rot, "nope": hp.n_embd_head_qk_nope,
         "dv": hp.n_embd_head_v, "dk": hp.n_embd_head_qk_nope + hp.n_rot, "kq_scale": float(hp.kq_scale)}
    g, vals = MA.layer_setups(hp, s, 512, 256, seed=4, merged=False)["chunked"]  # ggml-only: no partial / merge
    keep = MA.attention_names(g)
    for peer in PEERS:
        _need(peer)
        r = RemoteGraph.of_graph(peer, g, vals, keep=keep)
        try:
            r.compute(2)
            whole = [t.raw().tobytes() for t in r.results()]
            prof = r.profile(2)
            after = [t.raw().tobytes() for t in r.results()]
        finally:
            r.close()
        assert after == whole, peer
        named = {name: op for name, op, _ in prof}
        for node in g.graph.nodes:
            if node.op in ("MUL_MAT", "FLASH_ATTN_EXT", "CPY", "REPEAT", "CONCAT"):
                assert named.get(node.name) == node.op, (peer, node.name)
        assert all(sec >= 0 for _, _, sec in prof)
        assert all(sec > 0 for _, op, sec in prof if op in ("MUL_MAT", "FLASH_ATTN_EXT")), (peer, prof)


def test_peers_without_a_build_are_named_and_skipped(monkeypatch):
    monkeypatch.setattr(peer_build, "built", lambda level, peer: peer != "llama-cpp-python")
    ready, skipped = MA.peers_ready(PEERS)
    assert ready == ["ik-llama-cpp-python"]
    assert skipped == {"llama-cpp-python": "not built here: run `mlaref peer build llama-cpp-python`"}
    with pytest.raises(ValueError, match="unknown peer"):
        MA.peers_ready(("llama.cpp",))
    with pytest.raises(ValueError, match="no ggml graph API"):
        MA.peers_ready(("ggml-python",))


def test_the_table_names_skipped_peers():
    a = {"median": 1.0, "spread": 0.0}
    row = {"n_kv": 512, **{f"arena/{v}": a for v in VARIANTS},
           **{f"outside_mm_fa_{v}": {"value": 0.1} for v in VARIANTS},
           **{f"ik/{v}": {"median": 2.0, "spread": 0.05} for v in VARIANTS},
           **{f"ratio_ik_{v}": {"value": 2.0} for v in VARIANTS},
           **{f"nmse_ik_{v}": {"value": 3e-6, "within_bound": False} for v in VARIANTS}}
    text = MA.format_arena([row], 2, 1, {"llama-cpp-python": "not built here: run `mlaref peer build "
                                                             "llama-cpp-python`"})
    assert "ik/arena" in text and "ggml025/arena" not in text and "3.0e-06 > bound" in text
    assert "skipped llama-cpp-python: not built here: run `mlaref peer build llama-cpp-python`" in text


def test_a_q8_0_cache_runs_on_ik_and_names_who_cannot():
    """--cache-type q8_0 (#253's quantized cache, wkv_b q8_0): ik_llama.cpp runs the arena's graph of every variant
    within NMSE_BOUND_Q8_0 of the arena's attention; ggml 0.25.3 (whose CPU repeat aborts on q8_0 rows) and the
    f16-only ggml 0.15.3 layer are left out with their reasons, never run."""
    _need("ik-llama-cpp-python")
    res = B.run_mla(n_kv=(512,), T=32, n_head=2, repeats=1, n_threads=2, kv_chunk=256, backend="arena",
                    peers=PEERS, cache_type="q8_0")
    assert res["shapes"]["cache_type"] == "q8_0" and res["shapes"]["weight_type_wkv_b"] == "q8_0"
    assert res["peers"] == ["ik-llama-cpp-python"]
    assert res["skipped_peers"]["ggml 0.15.3"] == MA.Q8_0_CACHE_UNSUPPORTED["ggml 0.15.3"]
    if peer_build.built("native", "llama-cpp-python"):
        assert "ops.cpp:1789-1818" in res["skipped_peers"]["llama-cpp-python"]
    row = res["rows"][0]
    for v in VARIANTS:
        n = row[f"nmse_ik_{v}"]
        assert n["bound"] == MA.NMSE_BOUND_Q8_0["ik-llama-cpp-python"] and n["within_bound"], n
        assert n["value"] > 0  # ik's q8_2_x4 scales are bf16, mlaref's q8_0 f16: never the same bytes
        assert f"ratio_{v}" not in row and not any(k.startswith("ggml025/") for k in row)


def test_cache_type_is_checked_before_anything_runs():
    with pytest.raises(ValueError, match="cache_type must be one of f16, q8_0"):
        B.run_mla(n_kv=(512,), T=32, n_head=2, backend="arena", cache_type="q4_0")
    with pytest.raises(ValueError, match="needs the arena back-end"):
        B.run_mla(n_kv=(512,), T=32, n_head=2, backend="reference", cache_type="q8_0")
