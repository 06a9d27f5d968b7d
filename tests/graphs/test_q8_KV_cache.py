"""The ``f32`` graph over a q8_KV cache (upstream facts §9.5): built, sized by the allocator model and executed.

q8_KV rows (8 bytes of scale and sum, then one int8 per value; upstream facts §5a) are read and written only whole
in this graph: the cache store quantizes each new ``kvr`` row into its cell, ``kv_cache_view_f32`` casts whole cache
rows to f32, and K / V are cast back to q8_KV rows of ``Dk`` and ``Dv`` values for flash attention. Each step is
checked against the row bytes read field by field and against float64 attention; the end result against the same
graph over an f16 cache.
"""

import numpy as np
import pytest

from mlaref.reference import quantize
from mlaref.reference.graphs import alloc
from mlaref.reference.graphs.deepseek2 import build_attention_block, build_graph
from mlaref.reference.graphs.executor import run_graph
from mlaref.reference.graphs.synthetic import SyntheticModel, tiny_hparams
from mlaref.reference.hparams import preset

F32 = np.float32
T = 32
LAYER = SyntheticModel(tiny_hparams(1), seed=7)
KEEP = ("kvr-0", "kv_cache_view_f32-0", "k_f32-0", "v_f32-0", "k-0", "v-0", "q_concat-0", "kqv-0")


def _fields(rows: np.ndarray):
    """uint8 q8_KV rows ``(R, 8 + n)`` -> (d float32, qs int8 ``(R, n)``) by byte offset."""
    rows = np.ascontiguousarray(rows)
    return rows[:, 0:4].copy().view("<f4")[:, 0], rows[:, 8:].view(np.int8)


def _nmse(ref, x) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.sum((ref - np.asarray(x, np.float64)) ** 2) / np.sum(ref ** 2))


def _run(cache_type):
    g = build_attention_block(LAYER.hp, 512, variant="f32", cache_type=cache_type, n_tokens=T)
    rng = np.random.default_rng(3)
    inp = LAYER.inputs(g)
    inputs = {"attn_norm-0": rng.standard_normal((T, LAYER.hp.n_embd)).astype(F32), "inp_pos": inp["inp_pos"],
              "KQ_mask": inp["KQ_mask"]}
    kv = LAYER.kv_cache(g)
    out = run_graph(g, weights=LAYER.weights(g), kv_cache=kv, inputs=inputs, keep=KEEP)
    return g, kv[0], inputs["KQ_mask"], out


def _attention64(out, mask, scale):
    """float64 softmax(scale·q·kᵀ + mask)·v from the run's own q and f32 K / V (before any cast): (T, H, Dv)."""
    q = out["q_concat-0"].to_numpy()[0].astype(np.float64)  # (H, T, Dk)
    k = out["k_f32-0"].to_numpy()[0].astype(np.float64)  # (H, n_kv, Dk)
    v = out["v_f32-0"].to_numpy()[0].astype(np.float64)  # (H, n_kv, Dv)
    s = np.einsum("htd,hkd->htk", q, k) * scale + mask[None, : q.shape[1]].astype(np.float64)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("htk,hkd->thd", p, v)


@pytest.fixture(scope="module")
def runs():
    return {ct: _run(ct) for ct in ("q8_KV", "f16")}


def test_the_graph_reads_and_writes_whole_rows():
    hp = LAYER.hp
    g = build_graph(hp, 512, variant="f32", cache_type="q8_KV", n_tokens=T)
    row = 8 + hp.kv_row_elems
    assert g.kv_cache[0].nb[:2] == (32, row) and g.kv_cache[0].nbytes == 512 * row
    store = g.graph.find("cache_kv_l0 (view) (copy of kvr-0)")
    assert store.view_offs == row * g.kv_head and store.nb[1] == row and store.ne[:2] == (hp.kv_row_elems, T)
    k, v = g.graph.find("k-0"), g.graph.find("v-0")
    assert (k.type, k.nb[1], v.type, v.nb[1]) == ("q8_KV", 8 + hp.n_embd_head_k, "q8_KV", 8 + hp.n_embd_head_v)
    assert g.graph.find("kv_cache_view_f32-0").type == "f32"


def test_allocator_and_plan_size_the_q8_KV_cache(capsys):
    from mlaref.codegen.cli import main

    hp = preset("deepseek-v2-lite")
    assert alloc.kv_cache_bytes(hp, 8192, "q8_KV") == 27 * 8192 * (8 + 576)
    g = build_graph(hp, 8192, variant="f32", cache_type="q8_KV")
    assert g.graph.find("k-0").nbytes == (8 + 192) * 8192 * 16  # 16 heads of K rows of 192 values
    assert g.graph.find("v-0").nbytes == (8 + 128) * 8192 * 16
    assert alloc.allocate_graph(g.graph).max_size >= g.graph.find("k-0").nbytes
    assert main(["plan", "--ctx", "2048", "--variant", "f32", "--cache-type", "q8_KV"]) == 0
    text = capsys.readouterr().out
    assert "cache q8_KV" in text
    kv_mib = 27 * 2048 * 584 / 2**20  # 30.80
    row = [ln.split() for ln in text.splitlines() if ln.split()[:1] == ["2048"]][0]
    assert row[1] == f"{kv_mib:.2f}" and row[2] == f"{alloc.compute_buffer(hp, 2048, variant='f32', cache_type='q8_KV').buffer_mib}"


def test_cache_store_and_casts_are_the_q8_KV_row_routines(runs):
    """Bit for bit: the stored rows are q8_KV's quantizer of ``kvr`` (earlier cells unchanged, later cells still zero),
    the f32 view is ``d·q`` of each cache row, and K / V are the quantizer's rows of ``k_f32`` / ``v_f32``."""
    g, cache, _, out = runs["q8_KV"]
    hp, row = LAYER.hp, 8 + LAYER.hp.kv_row_elems
    rows = cache.raw().reshape(512, row)
    kvr = out["kvr-0"].to_numpy().reshape(T, hp.kv_row_elems)
    assert np.array_equal(rows[g.kv_head:g.kv_head + T], quantize(kvr, "q8_KV", variant="iqk"))
    assert np.array_equal(rows[:g.kv_head], quantize(LAYER.cache_rows(0, g.kv_head), "q8_KV"))
    assert not rows[g.kv_head + T:].any()
    d, qs = _fields(rows)
    assert np.array_equal(out["kv_cache_view_f32-0"].to_numpy().reshape(512, -1), (d[:, None] * qs.astype(F32)))
    for name, src in (("k-0", "k_f32-0"), ("v-0", "v_f32-0")):
        n = out[src].ne[0]
        assert np.array_equal(out[name].raw().reshape(-1, 8 + n), quantize(out[src].to_numpy().reshape(-1, n), "q8_KV"))


def test_attention_agrees_with_float64_and_with_the_f16_cache(runs):
    """NMSE bounds against float64 attention of each run's own q and f32 K / V (what the casts and flash attention
    add): < 3e-4 for q8_KV K / V (Q quantized to q8_KV for K·Q; measured 1.0e-4), < 5e-5 for f16 K / V (Q in f16
    and the f16 VKQ accumulator of ggml's generic order; measured 9.6e-6). The layer's output over a q8_KV cache
    against the same layer over an f16 cache (adds the cache's own rounding, 8-bit rows against 11-bit values):
    < 1e-3 (measured 2.7e-4)."""
    scale = float(LAYER.hp.kq_scale)
    got = {}
    for ct, bound in (("q8_KV", 3e-4), ("f16", 5e-5)):
        _, _, mask, out = runs[ct]
        ref = _attention64(out, mask, scale)
        kqv = out["kqv-0"].to_numpy()[0]  # (T, H, Dv)
        got[ct] = _nmse(ref, kqv)
        assert got[ct] < bound, (ct, got[ct])
    assert got["q8_KV"] > got["f16"]  # the 8-bit K / V are visible
    a, b = runs["q8_KV"][3]["kqv_out-0"].to_numpy(), runs["f16"][3]["kqv_out-0"].to_numpy()
    assert _nmse(b, a) < 1e-3
