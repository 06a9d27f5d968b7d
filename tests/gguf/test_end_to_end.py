"""A synthetic GGUF file end to end: f32 / direct / chunked graphs, reference vs generated kernels, Lite shapes.

The file is written by :func:`mlaref.reference.gguf.write_synthetic` (preset ``tiny``: 2 layers, a dense layer
then a MoE layer, q8_0 and iq4_nl weights, f32 norms), read back memory-mapped and run by
:func:`mlaref.reference.graphs.from_gguf.run_gguf` as a prompt of two micro-batches: 272 tokens from an empty
cache, then 16 tokens at ``kv_head = 272``, so the second micro-batch attends over ``n_kv = 512`` cells and both
256-cell chunks of the chunked variant hold visible cells.

What is shown (the expected relations come from the graphs work, tests/graphs/test_executor.py, not from the code
under test):

* f32 (pre-#253) and direct (#253) give the same bytes for the attention output ``kqv`` of every layer and the
  logits, for an f16 cache and for a q8_0 cache written by ggml's x86 quantizer
  (upstream facts §0.10 as executed there);
* chunked (``flash_attn_ext_partial`` + ``fa_merge`` over 256-cell chunks) gives the bytes of the direct graph
  whose ``flash_attn_ext`` runs the blocked algorithm with ``kv_chunks = n_kv / 256``;
* with the generated kernels put into the executor (``codegen/kernels/impls.py``) under the same plans
  (``mlaref_l16a1`` dots, blocked attention with ``k_step`` 64), every kept tensor, the KV cache written and the
  logits equal the reference's bytes; the ops that ran on kernels are asserted, per op and for whole graphs;
* the ``lite-attn`` file (DeepSeek-V2-Lite's attention: 16 heads, 192 = 128 + 64 K, 128 V, rank 512) runs its
  two layers for a 20-token prompt at n_ctx 256, f32 = direct, and kernels = reference.

Kernel checks skip, naming the missing kernel function, when ``codegen/kernels/rows.py`` or ``codegen/kernels/mm.py``
does not provide it; the reference checks always run.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlaref.reference import fp
from mlaref.reference.compare import nmse
from mlaref.reference.gguf import write_synthetic
from mlaref.reference.graphs.from_gguf import GGUFModel, default_n_kv, run_gguf
from mlaref.reference.plan import get_plan
from mlaref.reference.tensor import Tensor

N_CTX = 512
T1, T = 272, 16  # the prompt's two micro-batches
KV_CHUNK = 256
TINY_TYPES = dict(attn_kv_b="iq4_nl", attn_v_b="iq4_nl", attn_out="iq4_nl", ffn="iq4_nl", exps="iq4_nl")
KEEP = ["kqv-0", "kqv-1", "l_out-0", "l_out-1"]
KEEP_PP = KEEP + ["k-0", "v-0", "kv_f32-0", "inp_embd"]  # f32 / direct graphs
FA_L16 = {"k_step": 64, "q_step": 64, "exp": "libm"}


def _copy(cache):
    return [Tensor.from_bytes(c.raw(), c.type, c.ne) for c in cache]


def _same(a: Tensor, b: Tensor) -> bool:
    return a.type == b.type and a.ne == b.ne and np.array_equal(a.raw(), b.raw())


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e") / "tiny-mixed.gguf"
    info = write_synthetic(path, "tiny", seed=3, types=TINY_TYPES)
    return str(path), info


@pytest.fixture(scope="module")
def tiny(tiny_file):
    return GGUFModel(tiny_file[0])


@pytest.fixture(scope="module")
def prompt():
    return np.random.default_rng(288).integers(0, 64, T1 + T).astype(np.int32)


@pytest.fixture(scope="module")
def history(tiny, prompt):
    """cache type -> the KV cache after the first micro-batch (272 tokens, direct graph, reference ops)."""
    out = {}
    for ct in ("f16", "q8_0"):
        cache = tiny.empty_cache(N_CTX, ct)
        run_gguf(tiny, prompt[:T1], variant="direct", n_ctx=N_CTX, cache_type=ct, kv_cache=cache)
        out[ct] = cache
    return out


def _second(tiny, prompt, history, variant, cache_type, *, keep=KEEP, options=None, impl=None):
    """Run micro-batch 2 on a copy of the history; return (outputs, the cache it wrote)."""
    cache = _copy(history[cache_type])
    out = run_gguf(tiny, prompt[T1:], variant=variant, n_ctx=N_CTX, cache_type=cache_type, kv_head=T1,
                   kv_cache=cache, kv_chunk=KV_CHUNK, keep=keep, options=options, impl=impl)
    return out, cache


# -- binding ------------------------------------------------------------------------------------------------
def test_graph_weights_are_the_files_tensors(tiny, tiny_file):
    _, info = tiny_file
    g = tiny.build(N_CTX, variant="direct", n_tokens=T, kv_head=T1)
    # 3 global tensors, 12 in the dense layer 0, 16 in the MoE layer 1 (Lite q path: attn_q, no q_a/q_b)
    assert len(g.weights) == 31 and set(g.weights) == set(info["tensors"])
    typed = {"blk.0.attn_kv_b.weight": "iq4_nl", "blk.1.attn_v_b.weight": "iq4_nl", "blk.0.attn_q.weight": "q8_0",
             "blk.1.attn_kv_a_mqa.weight": "q8_0", "blk.1.ffn_up_exps.weight": "iq4_nl",
             "blk.1.ffn_gate_inp.weight": "f32", "blk.0.attn_norm.weight": "f32", "output.weight": "q8_0"}
    for name, t in typed.items():
        assert g.weights[name].type == t, name
    w = tiny.weights(g)
    for name, (t, ne, data) in info["tensors"].items():
        assert w[name].type == t and w[name].ne == ne
        assert np.array_equal(w[name].raw().reshape(-1), data), name  # the bytes the writer wrote
        assert np.shares_memory(w[name].data, tiny.model.reader.data)  # zero-copy: the file's memory map
    assert (g.n_kv, g.kv_head, g.n_tokens, g.path) == (512, 272, 16, "flash_mla2")


def test_default_n_kv_is_llama_cpps():
    # kv_self.n = min(size, max(256, GGML_PAD(kv_head + n_tokens, 256)))
    assert default_n_kv(512, 0, 16) == 256
    assert default_n_kv(512, 240, 16) == 256
    assert default_n_kv(512, 240, 17) == 512
    assert default_n_kv(4096, 272, 16) == 512
    assert default_n_kv(256, 0, 256) == 256


def test_inputs_of_a_micro_batch(tiny):
    g = tiny.build(N_CTX, variant="direct", n_tokens=5, kv_head=3)
    inp = tiny.inputs(g, [1, 2, 3, 4, 63])
    assert inp["inp_tokens"].tolist() == [1, 2, 3, 4, 63] and inp["inp_tokens"].dtype == np.int32
    assert inp["inp_pos"].tolist() == [3, 4, 5, 6, 7]
    m = inp["KQ_mask"]
    assert m.shape == (32, 256)  # rows padded to GGML_KQ_MASK_PAD = 32, n_kv = 256
    assert (m[0, :4] == 0).all() and (m[0, 4:] == -np.inf).all()  # token 0 (pos 3) sees cells 0..3
    assert (m[4, :8] == 0).all() and (m[4, 8:] == -np.inf).all()
    assert (m[5:] == -np.inf).all()
    assert inp["inp_out_ids"].tolist() == [0, 1, 2, 3, 4]


def test_bad_arguments(tiny, tiny_file):
    with pytest.raises(ValueError, match="tokens must lie in \\[0, n_vocab = 64\\)"):
        run_gguf(tiny, [0, 64, 1], variant="direct", n_ctx=N_CTX)
    with pytest.raises(TypeError, match="tokens must be integers"):
        run_gguf(tiny, [0.5, 1.0, 2.0], variant="direct", n_ctx=N_CTX)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        run_gguf(tiny, [], variant="direct", n_ctx=N_CTX)
    with pytest.raises(ValueError, match="kv_cache: kv_head = 8"):
        run_gguf(tiny, [1, 2, 3, 4], variant="direct", n_ctx=N_CTX, kv_head=8)
    with pytest.raises(ValueError, match="variant must be one of"):
        run_gguf(tiny_file[0], [1, 2, 3, 4], variant="fast", n_ctx=N_CTX)
    with pytest.raises(ValueError, match="n_kv \\(256\\) must cover"):
        tiny.build(N_CTX, n_tokens=16, kv_head=250, n_kv=256)
    with pytest.raises(TypeError, match="GGUF path or an open_gguf Model"):
        GGUFModel(42)


# -- reference: the three variants ---------------------------------------------------------------------------
def test_three_variants_end_to_end_f16_cache(tiny, prompt, history):
    f32, cache_f = _second(tiny, prompt, history, "f32", "f16", keep=KEEP_PP)
    direct, cache_d = _second(tiny, prompt, history, "direct", "f16", keep=KEEP_PP)
    chunked, cache_c = _second(tiny, prompt, history, "chunked", "f16")
    for out in (f32, direct, chunked):
        logits = out["result_output"]
        assert logits.ne == (64, T, 1, 1) and np.isfinite(logits.to_numpy()).all()
        assert out["kqv-1"].ne == (32, 2, T, 1)
    # f32 vs direct: the same bytes everywhere (f16 -> f32 -> f16 is exact)
    for name in KEEP_PP + ["result_output"]:
        assert _same(f32[name], direct[name]), name
    for a, b in zip(cache_f, cache_d):  # f32 and direct wrote the same cells 272..287 in both layers
        assert np.array_equal(a.data, b.data)
    # chunked: layer 0's new cells come before any attention (same bytes); layer 1's follow layer 0's attention
    assert np.array_equal(cache_c[0].data, cache_d[0].data)
    rows_c, rows_d = cache_c[1].raw()[0, 0], cache_d[1].raw()[0, 0]
    changed = np.nonzero((rows_c != rows_d).any(axis=1))[0]
    assert changed.size and changed.min() >= T1 and changed.max() < T1 + T
    # direct runs ggml's generic attention (f16 V accumulation), chunked the blocked one: close, not equal
    assert not _same(chunked["kqv-0"], direct["kqv-0"])
    assert nmse(chunked["kqv-0"].to_numpy(), direct["kqv-0"].to_numpy()) < 2e-5


def test_attention_output_against_float64(tiny, prompt, history):
    """Layer 0's kqv vs float64 softmax(q·kᵀ·scale + mask)·v on the graph's own q, K, V (q rounded to f16, as the
    f16 K·Q dot converts it). Bounds: NMSE 1e-11 for the blocked algorithm of the chunked graph (f32 sums), 2e-5
    for the direct graph's generic ggml algorithm, which accumulates V·softmax in **f16** (VKQ16)."""
    direct, _ = _second(tiny, prompt, history, "direct", "f16", keep=["q_concat-0", "k-0", "v-0", "kqv-0"])
    chunked, _ = _second(tiny, prompt, history, "chunked", "f16", keep=["kqv-0"])
    q = fp.f16_to_f32(fp.f32_to_f16(direct["q_concat-0"].to_numpy()[0])).astype(np.float64)  # (H, T, Dk)
    k = direct["k-0"].to_numpy()[0].astype(np.float64)  # (H, n_kv, Dk)
    v = direct["v-0"].to_numpy()[0].astype(np.float64)  # (H, n_kv, Dv)
    assert q.shape == (2, T, 64) and k.shape == (2, 512, 64) and v.shape == (2, 512, 32)
    visible = np.arange(512)[None, :] <= T1 + np.arange(T)[:, None]  # (T, n_kv)
    s = np.einsum("htd,hkd->thk", q, k) * float(tiny.hp.kq_scale)
    s = np.where(visible[:, None, :], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    want = np.einsum("thk,hkd->thd", p / p.sum(axis=-1, keepdims=True), v)  # (T, H, Dv)
    got_d, got_c = direct["kqv-0"].to_numpy()[0], chunked["kqv-0"].to_numpy()[0]
    assert got_d.shape == got_c.shape == want.shape == (T, 2, 32)
    assert nmse(got_c, want) < 1e-11  # measured 6.8e-14
    assert nmse(got_d, want) < 2e-5  # measured 4.3e-6


def test_f32_vs_direct_q8_0_cache(tiny, prompt, history):
    """A q8_0 cache written by ggml's x86 quantizer: every live block is a fixed point of dequantize -> quantize,
    so kqv, V and the logits are the same bytes; K has the same values (its bytes could differ only in blocks whose
    d flushed to 0 with stale qs, tests/graphs/test_executor.py)."""
    f32, cache_f = _second(tiny, prompt, history, "f32", "q8_0", keep=KEEP_PP)
    direct, cache_d = _second(tiny, prompt, history, "direct", "q8_0", keep=KEEP_PP)
    for name in KEEP + ["v-0", "kv_f32-0", "result_output"]:
        assert _same(f32[name], direct[name]), name
    assert np.array_equal(f32["k-0"].to_numpy(), direct["k-0"].to_numpy())
    for a, b in zip(cache_f, cache_d):
        assert np.array_equal(a.data, b.data)


@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
def test_chunked_equals_blocked_flash_attn(tiny, prompt, history, cache_type):
    fa = {"algorithm": "blocked", "plan": get_plan("ggml_generic").replace(kv_chunks=512 // KV_CHUNK)}
    blocked, _ = _second(tiny, prompt, history, "direct", cache_type, options={"FLASH_ATTN_EXT": fa})
    chunked, _ = _second(tiny, prompt, history, "chunked", cache_type)
    for name in KEEP + ["result_output"]:
        assert _same(chunked[name], blocked[name]), name
    g = tiny.build(N_CTX, variant="chunked", cache_type=cache_type, n_tokens=T, kv_head=T1, kv_chunk=KV_CHUNK)
    ops = [t.op for t in g.graph.nodes]
    assert ops.count("FLASH_ATTN_EXT_PARTIAL") == 4 and "FLASH_ATTN_EXT" not in ops  # 2 chunks x 2 layers


# -- generated kernels -----------------------------------------------------------------------------------
def _kernel_mod():
    try:
        from mlaref.codegen.kernels import impls as kernel_impls
    except ImportError as exc:  # kernel_impls imports no kernel module itself; this is a broken tree
        raise AssertionError(f"codegen/kernels/impls.py does not import: {exc}") from exc
    return kernel_impls


def _manifest_kernels():
    import json
    from pathlib import Path

    import mlaref.generated

    return json.loads((Path(mlaref.generated.__file__).parent / "manifest.json").read_text())["kernels"]


def _impls(ops=None, **kw):
    """KernelImpls for ``ops``; skips naming the missing kernel function when one of them has none."""
    ki = _kernel_mod().KernelImpls(ops=ops, **kw)
    if ops is not None and ki.missing:
        pytest.skip("kernel missing: " + "; ".join(f"{op}: {why}" for op, why in ki.missing.items()))
    if not ki.impl:
        pytest.skip("no generated kernel is available: " + "; ".join(sorted(set(ki.missing.values()))))
    return ki


def _plans():
    """The same plans for reference and kernels: l16a1 dots, blocked attention with iqk's k_step 64."""
    try:
        from mlaref.codegen.kernels.mm import fa_plan
        fa = fa_plan(k_step=64, kv_chunks=512 // KV_CHUNK)
    except ImportError:
        fa = get_plan("mlaref_l16a1").replace(kv_chunks=512 // KV_CHUNK, **FA_L16)
    return {"MUL_MAT": {"plan": "mlaref_l16a1"}, "MUL_MAT_ID": {"plan": "mlaref_l16a1"},
            "FLASH_ATTN_EXT": {"algorithm": "blocked", "plan": fa},
            "FLASH_ATTN_EXT_PARTIAL": {"plan": fa.replace(kv_chunks=1)}}


def _tg(tiny, prompt, history, *, impl=None, options=None):
    """Token generation: the last 2 prompt tokens at kv_head 286 (n_tokens <= n_head: the absorbed path)."""
    cache = _copy(history["f16"])
    keep = ["kq_perm-0", "kqv_perm-0", "kqv_compressed-1", "kqv_2d-1"]
    out = run_gguf(tiny, prompt[T1 + T - 2:], variant="direct", n_ctx=N_CTX, kv_head=T1 + T - 2, kv_cache=cache,
                   keep=keep, options=options, impl=impl)
    return out, cache


# op -> (variant, cache type) whose graph runs that op on its kernel path
_OP_CASES = {"MUL_MAT": ("direct", "f16"), "FLASH_ATTN_EXT": ("direct", "f16"), "CPY": ("direct", "q8_0"),
             "CONCAT": ("direct", "f16"), "REPEAT": ("direct", "q8_0"), "GET_ROWS": ("f32", "f16"),
             "CONT": ("tg", "f16")}


@pytest.mark.parametrize("op", list(_OP_CASES))
def test_kernel_op_bit_exact_in_the_graph(tiny, prompt, history, op):
    """One op on its kernel, the rest on the reference: same bytes as the reference graph, same plans."""
    ki = _impls([op])
    variant, ct = _OP_CASES[op]
    opts = _plans()
    if variant == "tg":
        ref, cache_r = _tg(tiny, prompt, history, options=opts)
        got, cache_k = _tg(tiny, prompt, history, options=opts, impl=ki.impl)
    else:
        ref, cache_r = _second(tiny, prompt, history, variant, ct, keep=KEEP_PP, options=opts)
        got, cache_k = _second(tiny, prompt, history, variant, ct, keep=KEEP_PP, options=opts, impl=ki.impl)
    assert ki.ran_on_kernels() == [op], ki.fallbacks()
    for name in ref:
        assert _same(ref[name], got[name]), name
    for a, b in zip(cache_r, cache_k):
        assert np.array_equal(a.data, b.data)


_GRAPH_CASES = [("f32", "f16"), ("direct", "f16"), ("chunked", "f16"), ("f32", "q8_0"), ("direct", "q8_0"),
                ("chunked", "q8_0")]


@pytest.mark.parametrize("variant,cache_type", _GRAPH_CASES, ids=[f"{v}-{c}" for v, c in _GRAPH_CASES])
def test_kernels_bit_exact_end_to_end(tiny, prompt, history, variant, cache_type):
    """Every op with a kernel on its kernel: kqv, l_out, the logits and the cache equal the reference's bytes."""
    ki = _impls()
    opts = _plans()
    keep = KEEP_PP if variant != "chunked" else KEEP + ["k_c1-1", "v_c1-1", "kqv_part_c1-1"]
    ref, cache_r = _second(tiny, prompt, history, variant, cache_type, keep=keep, options=opts)
    got, cache_k = _second(tiny, prompt, history, variant, cache_type, keep=keep, options=opts, impl=ki.impl)
    for name in ref:
        assert _same(ref[name], got[name]), name
    for a, b in zip(cache_r, cache_k):
        assert np.array_equal(a.data, b.data)
    ran = set(ki.ran_on_kernels())
    assert ran, ki.fallbacks()
    expect = {op for op in ("MUL_MAT", "REPEAT") if op in ki.impl}
    if variant != "chunked":
        expect |= {op for op in ("FLASH_ATTN_EXT",) if op in ki.impl}
    if cache_type == "q8_0":
        expect |= {op for op in ("CPY",) if op in ki.impl}
    assert ran >= expect, (ran, expect)
    # every MUL_MAT of this model (q8_0, iq4_nl and f32 weights) has a kernel: none fell back
    assert [r for r in ki.fallbacks() if r.op in ("MUL_MAT", "FLASH_ATTN_EXT")] == []
    assert all(r.reason for r in ki.fallbacks())


def test_kernels_bit_exact_token_generation(tiny, prompt, history):
    ki = _impls()
    opts = _plans()
    ref, cache_r = _tg(tiny, prompt, history, options=opts)
    got, cache_k = _tg(tiny, prompt, history, options=opts, impl=ki.impl)
    for name in ref:
        assert _same(ref[name], got[name]), name
    for a, b in zip(cache_r, cache_k):
        assert np.array_equal(a.data, b.data)
    if "MUL_MAT" in ki.impl:  # the TG path multiplies the f16 latent cache (a strided view) by q
        assert any(r.kernel and r.node == "kq-0" for r in ki.runs)


def test_kernel_attention_equals_the_chunked_graph(tiny, prompt, history):
    """The kernel's blocked flash_attn_ext with kv_chunks = 2 in the direct graph gives the bytes of the
    reference chunked graph (partial + merge per 256-cell chunk) under the same plan."""
    ki = _impls(["MUL_MAT", "FLASH_ATTN_EXT"])
    opts = _plans()
    direct, _ = _second(tiny, prompt, history, "direct", "f16", options=opts, impl=ki.impl)
    chunked, _ = _second(tiny, prompt, history, "chunked", "f16", options=opts)
    assert [r.node for r in ki.runs if r.op == "FLASH_ATTN_EXT" and r.kernel] == ["kqv-0", "kqv-1"]
    for name in KEEP + ["result_output"]:
        assert _same(direct[name], chunked[name]), name


def test_kernel_record_is_what_ran(tiny, prompt, history, monkeypatch):
    """The record says "kernel" only where a kernel was resolved: count the kernel families dispatched."""
    ki = _impls()
    from mlaref.codegen.kernels import rows as kernels  # every kernel call resolves through rows.resolve

    families = []
    real = kernels.resolve

    def counting(family, *a, **kw):
        families.append(family)
        return real(family, *a, **kw)

    monkeypatch.setattr(kernels, "resolve", counting)
    _second(tiny, prompt, history, "direct", "q8_0", options=_plans(), impl=ki.impl)
    want = {"MUL_MAT": "mul_mat", "FLASH_ATTN_EXT": "flash_attn_ext", "CPY": "quantize_row",
            "CONCAT": "copy_rows", "REPEAT": "copy_rows", "GET_ROWS": "dequantize_row"}
    for op in ki.ran_on_kernels():
        assert want[op] in families, op
    n_mm = sum(1 for r in ki.runs if r.op == "MUL_MAT" and r.kernel)
    assert families.count("mul_mat") == n_mm
    assert n_mm > 0 or "MUL_MAT" not in ki.impl


def test_kernel_threads_do_not_change_bytes(tiny, prompt, history):
    one = _impls()
    three = _kernel_mod().KernelImpls(n_threads=3)
    a, _ = _second(tiny, prompt, history, "direct", "q8_0", options=_plans(), impl=one.impl)
    b, _ = _second(tiny, prompt, history, "direct", "q8_0", options=_plans(), impl=three.impl)
    for name in a:
        assert _same(a[name], b[name]), name
    assert one.counts() == three.counts()


def test_kernel_refusal_falls_back_with_a_reason(tiny, prompt, history):
    """Under ggml's generic plan (not an l16a1 order) the mul_mat kernel refuses and the reference runs."""
    ki = _impls(["MUL_MAT"])
    ref, _ = _second(tiny, prompt, history, "direct", "f16")
    got, _ = _second(tiny, prompt, history, "direct", "f16", impl=ki.impl)
    assert _same(ref["result_output"], got["result_output"])
    assert ki.ran_on_kernels() == [] and ki.runs
    assert all("ggml_generic" in r.reason for r in ki.fallbacks())


def test_kernel_impls_rejects_unknown_ops():
    with pytest.raises(ValueError, match="no kernel adapter for SOFT_MAX"):
        _kernel_mod().KernelImpls(ops=["SOFT_MAX"])
    with pytest.raises(ValueError, match="n_threads must be an int >= 1"):
        _kernel_mod().KernelImpls(n_threads=0)


# -- DeepSeek-V2-Lite's attention shapes --------------------------------------------------------------------
LITE_T = 20  # > n_head = 16: the flash-attention (prompt) path


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e-lite") / "lite-attn.gguf"
    write_synthetic(path, "lite-attn", seed=253)
    return GGUFModel(str(path))


@pytest.fixture(scope="module")
def lite_tokens():
    return np.random.default_rng(16).integers(0, 256, LITE_T).astype(np.int32)


def test_lite_attn_f32_equals_direct(lite, lite_tokens):
    keep = ["kqv-0", "kqv-1", "k-0", "v-0"]
    f32 = run_gguf(lite, lite_tokens, variant="f32", n_ctx=256, keep=keep)
    direct = run_gguf(lite, lite_tokens, variant="direct", n_ctx=256, keep=keep)
    assert direct["kqv-0"].ne == (128, 16, LITE_T, 1)  # Dv, heads, tokens
    assert direct["k-0"].ne == (192, 256, 16, 1) and direct["k-0"].type == "f16"
    assert direct["result_output"].ne == (256, LITE_T, 1, 1)
    assert np.isfinite(direct["result_output"].to_numpy()).all()
    for name in keep + ["result_output"]:
        assert _same(f32[name], direct[name]), name


def test_lite_attn_kernels_bit_exact(lite, lite_tokens):
    """Lite shapes on the kernels, in two parts that keep the test fast (the reference l16a1 mul_mat needs ~25 s
    for the two 4096 x 256 x 512 decompressions alone):

    1. the whole graph with every kernel vs the graph with only MUL_MAT on its kernel: attention (f16 K/V,
       16 heads, Dk 192, Dv 128), the cache write, concat, repeat, get_rows equal the reference's bytes;
    2. MUL_MAT's kernel results vs the reference mul_mat on row blocks of three Lite products (a dot product
       depends on its row and column only): ``kv_f32-0`` (q8_0 wkv_b x the f16 cache), ``q-0`` (q8_0 2048 -> 3072),
       ``kqv_out-1`` (iq4_nl 2048 -> 2048)."""
    ki = _impls()
    plans = _plans()
    plans["FLASH_ATTN_EXT"] = {"algorithm": "blocked", "plan": plans["FLASH_ATTN_EXT"]["plan"].replace(kv_chunks=1)}
    if "MUL_MAT" not in ki.impl:
        plans["MUL_MAT"] = plans["MUL_MAT_ID"] = {"plan": "ggml_generic"}
    mm = _kernel_mod().KernelImpls(ops=[op for op in ("MUL_MAT",) if op in ki.impl])
    keep = ["kqv-0", "kqv-1", "kv_f32-0", "q-0", "attn_norm-0", "kqv_out-1"]
    cache_r, cache_k = lite.empty_cache(256), lite.empty_cache(256)
    ref = run_gguf(lite, lite_tokens, variant="direct", n_ctx=256, keep=keep, options=plans, kv_cache=cache_r,
                   impl=mm.impl)
    got = run_gguf(lite, lite_tokens, variant="direct", n_ctx=256, keep=keep, options=plans, kv_cache=cache_k,
                   impl=ki.impl)
    for name in keep + ["result_output"]:
        assert _same(ref[name], got[name]), name
    for a, b in zip(cache_r, cache_k):
        assert np.array_equal(a.data, b.data)
    assert set(ki.ran_on_kernels()) >= {op for op in ("FLASH_ATTN_EXT", "CONCAT", "REPEAT", "GET_ROWS")
                                        if op in ki.impl}
    if "MUL_MAT" not in ki.impl:
        return
    from mlaref.reference.ops.mul_mat import mul_mat

    on_kernel = {r.node for r in ki.runs if r.op == "MUL_MAT" and r.kernel}
    assert {"kv_f32-0", "kv_f32-1", "q-0", "kqv_out-1"} <= on_kernel
    # the q6_K output weight: on a kernel where the catalog has a q6_K mul_mat, else the record says why not
    (out,) = [r for r in ki.runs if r.node == "result_output"]
    has_q6k_mm = any(k.startswith("mlaref_mul_mat_q6_K_") for k in _manifest_kernels())
    assert bool(out.kernel) == has_q6k_mm and (has_q6k_mm or "q6_K" in out.reason)
    w = lite.model.tensors
    c0 = cache_k[0]
    kqv1 = Tensor.from_numpy(got["kqv-1"].to_numpy().reshape(LITE_T, 2048))
    cases = [("kv_f32-0", w["blk.0.attn_kv_b.weight"], c0.view((512, 256), (c0.nb[1],), 0), 256),
             ("q-0", w["blk.0.attn_q.weight"], got["attn_norm-0"], 384),
             ("kqv_out-1", w["blk.1.attn_output.weight"], kqv1, 256)]
    for name, a, b, rows in cases:
        block = a.view((a.ne[0], rows), (a.nb[1],), 0)
        want = mul_mat(block, b, plan="mlaref_l16a1")
        assert np.array_equal(got[name].to_numpy()[0, 0][:, :rows], want.to_numpy()[0, 0]), name
