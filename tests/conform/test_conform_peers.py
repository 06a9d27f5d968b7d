"""mlaref conform against the other real systems, through mlaref's C harness: upstream ggml 0.25.3
(llama-cpp-python 0.3.36) and ik_llama.cpp (ik-llama-cpp-python 0.1.5), each built natively from its sdist.

The expectations are written out here from the facts (docs/facts/, the peers' sources), never taken from the
cases' ``expect`` fields or from a run.
"""

import pytest

from mlaref.codegen.conform.caseset import default_cases
from mlaref.codegen.conform.worker import run_cases
from mlaref.codegen.peers import harness

from tests.conform.test_conform_run import MUST_BE_EXACT

# What ggml 0.15.3 and 0.25.3 both lack (their type traits or types), with the reason in each verdict.
UPSTREAM_UNSUPPORTED = sorted(
    ["quantize/f32/ref", "quantize/q8_0_x4/iqk", "quantize/q8_1_x4/iqk", "quantize/q8_2_x4/iqk", "quantize/q8_K/iqk", "dequantize/f32",
     "dequantize/q8_0_x4", "dequantize/q8_1", "dequantize/q8_1_x4", "dequantize/q8_2_x4", "cpy/q8_0->f16", "repeat/q8_0",
     # q8_KV is ik_llama.cpp's (PR #208): upstream has no such type
     "quantize/q8_KV/ref", "quantize/q8_KV/model", "quantize/q8_KV/iqk", "dequantize/q8_KV"])


@pytest.fixture(scope="module")
def upstream_025():
    res = run_cases(default_cases(), harness=str(harness.ensure("llama-cpp-python", "native")), timeout=120)
    return res, {v["id"]: v for v in res["verdicts"]}


def test_upstream_0_25_3_is_named_and_nothing_is_unexplained(upstream_025):
    res, by_id = upstream_025
    g = res["ggml"]
    assert g["peer"] == "llama-cpp-python" and g["version"] == "0.3.36" and "0.25.3" in g["vendors"]
    assert g["harness"].endswith("libmlaref_harness.so")
    assert [v["id"] for v in res["verdicts"]] == [c.id for c in default_cases()]
    assert [(k, v["text"]) for k, v in by_id.items() if not v["explained"]] == []


def test_upstream_0_25_3_is_bit_exact_where_0_15_3_is(upstream_025):
    _, by_id = upstream_025
    bad = {c: by_id[c]["text"] for c in MUST_BE_EXACT if by_id[c]["status"] != "bit-exact"}
    assert bad == {}


def test_finding_f1_is_fixed_in_0_25_3(upstream_025):
    """Quantized concat along dim 0: 0.15.3 aborts or writes past the rows (finding F1); 0.25.3 (after
    llama.cpp PR #25247) copies each row's blocks, the spec's bytes."""
    _, by_id = upstream_025
    for cid in ("concat/q8_0/dim0", "pr253/concat/q8_0/kv_rope/n1", "pr253/concat/q8_0/kv_rope/n37"):
        assert by_id[cid]["status"] == "bit-exact", by_id[cid]["text"]


def test_upstream_0_25_3_on_pr253s_ops(upstream_025):
    """0.25.3 still refuses a q8_0 src1 and still aborts on a quantized repeat; all else of #253 is bit-exact."""
    _, by_id = upstream_025
    for cid, v in by_id.items():
        if not cid.startswith("pr253/"):
            continue
        if cid.startswith(("pr253/mla_block/", "pr253/mla_identity/")):
            # the block is ik_llama.cpp's graph: upstream has no ggml_fused_rms_norm
            assert v["status"] == "unsupported" and "fused_rms_norm" in v["text"], v["text"]
        elif cid.startswith(("pr253/mul_mat/f16xq8_0", "pr253/mul_mat/q4_Kxq8_0", "pr253/mul_mat/q6_Kxq8_0")):
            # q8_0 is not these weights' vec_dot type (f16, q8_K): supports_op refuses the q8_0 src1
            assert v["status"] == "unsupported" and "supports_op" in v["text"], v["text"]
        elif cid == "pr253/repeat/q8_0/k_rope_over_heads":
            assert v["status"] == "unsupported" and "SIGABRT" in v["text"], v["text"]
        elif cid.startswith(("pr253/mul_mat/q4_K", "pr253/mul_mat/q6_K")) and cid.endswith("nkv64"):
            assert v["status"] == "within NMSE bound" and "tiled K-quant kernel" in v["text"], v["text"]
        else:
            assert v["status"] == "bit-exact", (cid, v["text"])
    unsupported = sorted(k for k, v in by_id.items() if v["status"] == "unsupported" and not k.startswith("pr253/"))
    assert unsupported == UPSTREAM_UNSUPPORTED


def test_upstream_0_25_3_stock_mul_mat_is_bit_exact_without_its_tiled_kernel(monkeypatch):
    """With GGML_CPU_TILED_MM=0 (read by ggml-cpu/tiled/tiled.cpp) the K-quant products of >= 8 src1 rows take
    the stock vec_dot path again, and the spec gives its bytes."""
    cases = [c for c in default_cases() if c.id.startswith(("pr253/mul_mat/q4_K", "pr253/mul_mat/q6_K"))
             and "xq8_0" not in c.id]
    assert len(cases) == 8
    monkeypatch.setenv("GGML_CPU_TILED_MM", "0")
    res = run_cases(cases, harness=str(harness.ensure("llama-cpp-python", "native")), timeout=120)
    assert [(v["id"], v["status"]) for v in res["verdicts"]] == [(c.id, "bit-exact") for c in cases]


# -- ik_llama.cpp itself (the 2026 snapshot of ik-llama-cpp-python 0.1.5) ---------------------------------------

@pytest.fixture(scope="module")
def ik():
    # 60 s a case: the one hang (finding F2) costs that much; the slowest case computes in about 15 s
    res = run_cases(default_cases(), harness=str(harness.ensure("ik-llama-cpp-python", "native")), timeout=60)
    return res, {v["id"]: v for v in res["verdicts"]}


def test_ik_is_named_and_nothing_is_unexplained(ik):
    res, by_id = ik
    g = res["ggml"]
    assert g["peer"] == "ik-llama-cpp-python" and g["version"] == "0.1.5" and "ik_llama.cpp" in g["vendors"]
    assert [(k, v["text"]) for k, v in by_id.items() if not v["explained"]] == []


def test_every_pr253_op_is_bit_exact_on_ik_llama_cpp(ik):
    """PR #253's own ops on the system it was written for, all bit-exact: mul_mat of every weight type with an
    f16 / bf16 / q8_0 latent-cache view (mul_mat_ik2026), concat and repeat of f16 / bf16 / q8_0 rows, the cache
    store, flash attention 192/128 and 576/512 with V a view of K (algorithm='iqk2026'), and one layer's whole
    attention graph in both branches, whose K, V and output are the same bytes (mla_identity)."""
    _, by_id = ik
    pr = {k: v for k, v in by_id.items() if k.startswith("pr253/")}
    assert len(pr) == 86
    assert {k: v["text"] for k, v in pr.items() if v["status"] != "bit-exact"} == {}
    assert sum(k.startswith("pr253/mla_identity/") for k in pr) == 8


def test_ik_differences_from_upstream_are_stated(ik):
    """What the snapshot does not share with upstream is reported with the reason, never compared blindly."""
    _, by_id = ik
    for pair in ("q8_0.q8_0", "iq4_nl.q8_0", "q4_K.q8_K", "q6_K.q8_K"):
        v = by_id[f"vec_dot/{pair}"]
        assert v["status"] == "unsupported" and "q8_2_x4" in v["text"], v["text"]
    v = by_id["quantize/q8_K/x86"]
    assert v["status"] == "unsupported" and "296 bytes" in v["text"], v["text"]
    for cid in ("repeat/q8_0", "concat/q8_0/dim0"):
        assert by_id[cid]["status"] == "bit-exact", by_id[cid]["text"]
    v = by_id["cpy/q8_0->q8_0"]  # finding F2: two threads copy far past the tensor
    assert v["status"] == "aborted" and "F2 in docs/conformance-findings.md" in v["text"], v["text"]


def test_ik_quantizers_are_the_snapshots_own(ik):
    """The snapshot's quantizers (reference/types/_ik2026.py) give its bytes: every quantize and cpy case of a type
    both have is bit-exact, imatrix searches included."""
    _, by_id = ik
    for t in ("q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q4_K", "q6_K", "q8_0"):
        for v in ("ref", "model", "x86", "model+imatrix"):
            cid = f"quantize/{t}/{v}"
            if cid in by_id:
                assert by_id[cid]["status"] == "bit-exact", (cid, by_id[cid]["text"])
    for t in ("q8_0", "q4_0", "q5_1", "iq4_nl", "q4_K", "q6_K"):
        assert by_id[f"cpy/f32->{t}"]["status"] == "bit-exact", by_id[f"cpy/f32->{t}"]["text"]
    # q8_KV (ik only): every quantizer path and the dequantizer are the snapshot's bytes
    for cid in ("quantize/q8_KV/ref", "quantize/q8_KV/model", "quantize/q8_KV/iqk", "dequantize/q8_KV"):
        assert by_id[cid]["status"] == "bit-exact", (cid, by_id[cid]["text"])
