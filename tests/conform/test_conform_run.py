"""mlaref conform against ggml-python's libggml: the whole case set runs, every verdict is explained, and the ops
the spec models exactly are bit-exact.

The expectations below are written out here from the facts (upstream facts §4a to §4g, and the upstream sources), not
taken from the cases' own ``expect`` fields: a case set that quietly downgraded an op to "nmse" would fail here.
"""

import pytest

from mlaref.codegen.conform.caseset import default_cases
from mlaref.codegen.conform.verdict import STATUSES
from mlaref.codegen.conform.worker import run_cases
from mlaref.codegen.peers import build as peer_build
from mlaref.reference import builds

# Every build of upstream ggml this CPU runs: the installed ggml-python library (native, its plan read from the
# features it was compiled with) and ggml-python's sdist built at each level (mlaref.codegen.peers.build). The
# expectations below hold for every one of them: the spec models each build's order, so nothing here depends on
# this CPU. Levels this CPU cannot run are listed, with what it lacks, by test_levels_not_run_here_are_named.
PEERS = ["installed"] + [f"level:{lv}" for lv in peer_build.runnable_levels()]


# Case ids that must be bit-exact against every build (ggml 0.15.3).
QUANT_TYPES = ["bf16", "f16", "iq4_nl", "q4_0", "q4_1", "q4_K", "q5_0", "q5_1", "q6_K", "q8_0"]
MUST_BE_EXACT = (
    [f"quantize/{t}/{v}" for t in QUANT_TYPES for v in ("ref", "model", "x86")]
    + [f"quantize/{t}/model+imatrix" for t in ("iq4_nl", "q4_0", "q4_1", "q4_K", "q5_0", "q5_1", "q6_K")]
    + ["quantize/q8_1/ref", "quantize/q8_1/x86", "quantize/q8_K/ref", "quantize/q8_K/x86",
       "quantize/f32/model", "quantize/f32/x86"]
    + [f"quantize/{t}/{v}/ties" for t in ("q8_0", "q8_1") for v in ("ref", "x86")]
    + [f"dequantize/{t}" for t in QUANT_TYPES + ["q8_K"]]
    + [f"vec_dot/{p}" for p in ("f32.f32", "f16.f16", "bf16.bf16", "q4_0.q8_0", "q4_1.q8_1", "q5_0.q8_0",
                                "q5_1.q8_1", "q8_0.q8_0", "iq4_nl.q8_0", "q4_K.q8_K", "q6_K.q8_K")]
    + ["cpy/f32->f16", "cpy/f32->f16/transposed", "cpy/f32->bf16", "cpy/f32->q8_0", "cpy/f32->q4_0",
       "cpy/f16->f32", "cpy/bf16->f32", "cpy/f16->bf16", "cpy/bf16->f16", "cpy/f16->q8_0", "cpy/q8_0->f32",
       "cpy/f32->f32/transposed", "cpy/q8_0->q8_0", "cpy/f32->q5_1", "cpy/f32->iq4_nl", "cpy/f32->q4_K",
       "cpy/f32->q6_K", "cpy/q4_K->f32"]
    + [f"concat/f32/dim{d}" for d in range(4)] + ["concat/f16/dim0", "concat/f16/dim2", "concat/bf16/dim1"]
    + ["repeat/f32", "repeat/f16", "get_rows/f32", "get_rows/f16", "get_rows/q8_0", "get_rows/q4_K"]
    + [f"mul_mat/{w}xf32" for w in ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "q4_K",
                                     "q6_K")]
    + ["mul_mat/f16xf16", "soft_max/f32/mask_f16", "soft_max/f32/mask_f32_alibi", "rope/f32/yarn",
       "flash_attn_ext/f16/dk192_dv128/nq8", "flash_attn_ext/q8_0/dk192_dv128/nq8",
       "flash_attn_ext/f16/dk192_dv128/nq64", "flash_attn_ext/q8_0/dk192_dv128/nq64",
       "flash_attn_ext/f16/dk576_dv512/nq1_nkv640/t1", "flash_attn_ext/f16/dk576_dv512/nq1_nkv640/t3"]
)
# Upstream ggml's CPU back-end refuses mul_mat with an f16 src1 unless f16 is the weight's vec_dot type.
UPSTREAM_REFUSES_F16_SRC1 = ["f32", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "q4_K", "q6_K"]


def cases_for(peer: str):
    """The case set a build runs here: every case for the installed library; the level builds skip PR #253's
    cases at DeepSeek-V2-Lite's shapes (a minute of the spec's NumPy each; their ops are the same code at every
    level, and tests/conform/test_conform_peers.py runs them against every peer)."""
    return [c for c in default_cases() if peer == "installed" or not c.id.startswith("pr253/")]


@pytest.fixture(scope="module", params=PEERS)
def result(request, ggml):
    lib = None
    if request.param.startswith("level:"):
        lib = str(peer_build.ensure(request.param.split(":", 1)[1]) / "lib")
    return run_cases(cases_for(request.param), lib_path=lib, timeout=60)


def test_the_build_model_is_the_librarys(request, result):
    """The worker described the library by the features it was compiled with, and a level build is its level."""
    b = result["ggml"]["build"]
    assert b["vec_dot_plan"] and b["simd"]
    peer = request.node.callspec.params["result"]
    if peer.startswith("level:"):
        lv = peer.split(":", 1)[1]
        assert (b["level"], b["tune"], b["features"]) == (lv, "generic", sorted(builds.LEVELS[lv]))
        assert b["vec_dot_plan"] == builds.level(lv).vec_dot_plan and b["verified"]


def test_levels_not_run_here_are_named():
    for lv in builds.LEVELS:
        if f"level:{lv}" not in PEERS:
            assert peer_build.missing_for(lv), lv


@pytest.fixture(scope="module")
def by_id(result):
    return {v["id"]: v for v in result["verdicts"]}


def test_every_case_has_a_verdict_and_the_library_is_named(request, result):
    peer = request.node.callspec.params["result"]
    assert [v["id"] for v in result["verdicts"]] == [c.id for c in cases_for(peer)]
    assert result["ggml"]["version"] and result["ggml"]["file"].endswith("lib")
    for v in result["verdicts"]:
        assert v["status"] in STATUSES, v
        assert v["text"].startswith(v["status"]), v


def test_no_verdict_is_unexplained(result):
    bad = [(v["id"], v["text"]) for v in result["verdicts"] if not v["explained"]]
    assert bad == []


def test_aborts_and_mismatches_are_only_the_documented_finding(result):
    """The only crash or wrong result is finding F1 (upstream concat of block types); nothing else aborts."""
    odd = {v["id"]: v["text"] for v in result["verdicts"] if v["status"] in ("aborted", "mismatch")}
    assert set(odd) <= {"concat/q8_0/dim0", "concat/q8_0/dim1", "concat/q8_0/dim2", "pr253/concat/q8_0/kv_rope/n1",
                        "pr253/concat/q8_0/kv_rope/n37"}, odd
    assert "concat/q8_0/dim0" in odd
    for text in odd.values():
        assert "F1 in docs/conformance-findings.md" in text


@pytest.mark.parametrize("case_id", MUST_BE_EXACT)
def test_known_exact_cases_are_bit_exact(by_id, case_id):
    v = by_id[case_id]
    assert v["status"] == "bit-exact", v["text"]


def test_flash_attention_takes_upstreams_path(by_id):
    """n_q >= 64 with f16 K/V takes upstream's tiled path, which the spec's 'tiled' algorithm reproduces; q8_0
    K/V stay on the one-chunk path at any query count."""
    v = by_id["flash_attn_ext/f16/dk192_dv128/nq64"]
    assert v["status"] == "bit-exact", v["text"]
    assert "tiled" in v["note"] and "iqk" in v["note"]
    assert by_id["flash_attn_ext/q8_0/dk192_dv128/nq64"]["status"] == "bit-exact"


@pytest.mark.parametrize("wt", UPSTREAM_REFUSES_F16_SRC1)
def test_mul_mat_f16_src1_equals_upstream_on_the_widened_src1(by_id, wt):
    """Upstream refuses an f16 src1; #253's to_float widening is exact, so the spec's MulMat_253 on the f16 src1
    must give upstream's bytes on the f32 copy (upstream facts §0.10), and the verdict says how it was compared."""
    v = by_id[f"mul_mat/{wt}xf16"]
    assert v["status"] == "bit-exact", v["text"]
    assert "supports_op" in v["text"] and "PR #253" in v["text"] and "widened to f32" in v["text"]


def test_upstream_gaps_are_reported_as_unsupported_with_the_evidence(by_id):
    rep = by_id["repeat/q8_0"]
    assert rep["status"] == "unsupported" and "SIGABRT" in rep["text"] and "repeat_any" in rep["text"]
    assert "ggml/src/ggml-cpu/ops.cpp" in rep["text"]  # ggml's own message, path shortened
    cpy = by_id["cpy/q8_0->f16"]
    assert cpy["status"] == "unsupported" and "the spec does not define it" in cpy["text"]
    for cid in ("quantize/q8_0_x4/iqk", "quantize/q8_1_x4/iqk", "quantize/q8_K/iqk"):
        assert by_id[cid]["status"] == "unsupported" and "IQK" in by_id[cid]["text"]
    for cid in ("dequantize/q8_0_x4", "dequantize/q8_1_x4"):
        assert "upstream ggml has no type" in by_id[cid]["text"]


def test_ik_differences_are_stated(by_id):
    assert "iqk_quantize_row_q8_K" in by_id["quantize/q8_K/x86"]["note"]
    assert "F16 x F32 in f32" in by_id["mul_mat/f16xf32"]["note"]
    assert "concat_f16" in by_id["concat/f16/dim0"]["note"]


def test_pr253_cases_upstream_0_15_3_refuses_are_the_ones_it_lacks(request, by_id):
    """Against ggml 0.15.3: a q8_0 src1 is refused (supports_op), the q8_0 repeat aborts, the q8_0 concat is F1;
    everything else of PR #253's ops is bit-exact (f16 / bf16 src1 through the exact widening). The installed
    library runs all 86 of them; the level builds none (cases_for)."""
    pr = {k: v for k, v in by_id.items() if k.startswith("pr253/")}
    assert len(pr) == (86 if request.node.callspec.params["result"] == "installed" else 0)
    for cid, v in pr.items():
        if cid.startswith(("pr253/mla_block/", "pr253/mla_identity/")):
            assert v["status"] == "unsupported" and "harness" in v["text"], v["text"]
            continue
        if cid.startswith(("pr253/mul_mat/f16xq8_0", "pr253/mul_mat/q4_Kxq8_0", "pr253/mul_mat/q6_Kxq8_0")):
            # q8_0 is not these weights' vec_dot type (f16, q8_K): supports_op refuses the q8_0 src1
            assert v["status"] == "unsupported" and "supports_op" in v["text"], v["text"]
        elif cid == "pr253/repeat/q8_0/k_rope_over_heads":
            assert v["status"] == "unsupported" and "SIGABRT" in v["text"]
        elif cid.startswith("pr253/concat/q8_0"):
            assert v["status"] in ("mismatch", "aborted") and "F1" in v["text"]
        else:
            assert v["status"] == "bit-exact", (cid, v["text"])


def test_every_exact_expectation_holds_and_nothing_is_approximate(result):
    cases = {c.id: c for c in default_cases()}
    for v in result["verdicts"]:
        c = cases[v["id"]]
        if c.expect == "exact" and v["status"] not in ("unsupported",) and not c.known:
            assert v["status"] == "bit-exact", v["text"]
    approx = [v["id"] for v in result["verdicts"] if v["status"] == "within NMSE bound"]
    assert approx == []
    unsupported = sorted(v["id"] for v in result["verdicts"] if v["status"] == "unsupported"
                         and not v["id"].startswith("pr253/"))
    assert unsupported == sorted(
        ["quantize/f32/ref", "quantize/q8_0_x4/iqk", "quantize/q8_1_x4/iqk", "quantize/q8_2_x4/iqk", "quantize/q8_K/iqk", "dequantize/f32",
         "dequantize/q8_0_x4", "dequantize/q8_1", "dequantize/q8_1_x4", "dequantize/q8_2_x4", "cpy/q8_0->f16", "repeat/q8_0",
     # q8_KV is ik_llama.cpp's (PR #208): upstream has no such type
     "quantize/q8_KV/ref", "quantize/q8_KV/model", "quantize/q8_KV/iqk", "dequantize/q8_KV"])

