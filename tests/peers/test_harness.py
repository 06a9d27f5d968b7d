"""mlaref's C harness: rendered from each peer's own headers, one ABI for all, and checked against ggml-python's
bindings on the same library; bad input refused in Python, layouts checked before a pointer reaches C."""

import numpy as np
import pytest

from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import harness
from mlaref.reference import quantize
from mlaref.reference.tensor import Tensor

UPSTREAM_015_H = """
GGML_API const struct ggml_type_traits * ggml_get_type_traits(enum ggml_type type);
GGML_API void   ggml_graph_add_node(struct ggml_cgraph * cgraph, struct ggml_tensor * tensor);
"""
UPSTREAM_015_CPU_H = """
GGML_BACKEND_API void ggml_cpu_init(void);
GGML_BACKEND_API int ggml_cpu_has_avx2(void);
GGML_BACKEND_API int ggml_cpu_has_fma (void);
GGML_BACKEND_API const struct ggml_type_traits_cpu * ggml_get_type_traits_cpu(enum ggml_type type);
GGML_BACKEND_API struct ggml_cplan ggml_graph_plan(
                  const struct ggml_cgraph * cgraph,
                                       int   n_threads,
                    struct ggml_threadpool * threadpool);
"""
IK_H = """
GGML_API int ggml_cpu_has_avx2       (void);
GGML_API int ggml_cpu_has_f16c       (void);
GGML_API ggml_type_traits_t ggml_internal_get_type_traits(enum ggml_type type);
GGML_API struct ggml_cgraph   ggml_graph_view        (struct ggml_cgraph * cgraph, int i0, int i1);
GGML_API struct ggml_cplan ggml_graph_plan   (const struct ggml_cgraph * cgraph, int n_threads);
GGML_API struct ggml_tensor * ggml_fused_rms_norm(struct ggml_context * ctx, struct ggml_tensor * a,
                                                  struct ggml_tensor * b, float eps);
GGML_API struct ggml_tensor * ggml_multi_add(struct ggml_context * ctx, struct ggml_tensor * a, int n_experts);
"""


def test_the_dialect_is_read_from_the_headers(tmp_path):
    up, ik = tmp_path / "up", tmp_path / "ik"
    up.mkdir()
    ik.mkdir()
    (up / "ggml.h").write_text(UPSTREAM_015_H)
    (up / "ggml-cpu.h").write_text(UPSTREAM_015_CPU_H)
    (ik / "ggml.h").write_text(IK_H)
    d_up, d_ik = harness.dialect(up, "x"), harness.dialect(ik, "y")
    ik_only = {"fused_mul_unary": False, "multi_add": False, "moe_up_gate": False}
    assert d_up == {"peer": "x", "cpu_header": True, "traits": "split", "cpu_init": True,
                    "features": ["avx2", "fma"], "fused_rms_norm": False, **ik_only, "graph_add_node": True,
                    "plan_threadpool": True}
    assert d_ik == {"peer": "y", "cpu_header": False, "traits": "internal", "cpu_init": False,
                    "features": ["avx2", "f16c"], "fused_rms_norm": True, **ik_only, "multi_add": True,
                    "graph_add_node": False, "plan_threadpool": False}
    src_up, src_ik = harness.render(d_up), harness.render(d_ik)
    assert src_up == harness.render(dict(d_up))  # the same parameters give the same bytes
    assert '#include "ggml-cpu.h"' in src_up and '#include "ggml-cpu.h"' not in src_ik
    assert "ggml_get_type_traits_cpu" in src_up and "ggml_internal_get_type_traits" in src_ik
    assert "ggml_fused_rms_norm(ctx" in src_ik and "ggml_fused_rms_norm(ctx" not in src_up
    assert "ggml_multi_add(ctx" in src_ik and "ggml_multi_add(ctx" not in src_up
    assert "ggml_cpu_has_fma()" in src_up and "ggml_cpu_has_fma()" not in src_ik
    assert "ggml_graph_add_node(one" in src_up and "ggml_graph_view(gf" in src_ik
    assert "ggml_graph_plan(one, n_threads, NULL)" in src_up and "ggml_graph_plan(one, n_threads);" in src_ik


def test_a_directory_without_ggml_h_is_refused(tmp_path):
    with pytest.raises(harness.HarnessError, match="no ggml.h"):
        harness.dialect(tmp_path, "x")


def test_unknown_peer_names_the_known_ones():
    with pytest.raises(ValueError, match="ik-llama-cpp-python"):
        peer_build.parse_peer("llama.cpp@avx2")
    assert peer_build.parse_peer("ik-llama-cpp-python") == ("ik-llama-cpp-python", None)
    assert peer_build.parse_peer("llama-cpp-python@avx2") == ("llama-cpp-python", "avx2")


# -- the harness against ggml-python's own bindings, on one library ----------------------------------------------

def _inputs():
    rng = np.random.default_rng(3)
    a = Tensor.from_numpy(rng.standard_normal((2, 3, 96)).astype(np.float32), "f16")  # q8_0: finding F1 in 0.15.3
    b = Tensor.from_numpy(rng.standard_normal((2, 3, 64)).astype(np.float32), "f16")
    w = Tensor.from_numpy((rng.standard_normal((16, 256)) * 0.1).astype(np.float32), "q4_K")
    x = Tensor.from_numpy(rng.standard_normal((5, 256)).astype(np.float32))
    t = Tensor.from_numpy(rng.standard_normal((4, 64)).astype(np.float32)).transpose()
    return a, b, w, x, t


def _calls(module):
    a, b, w, x, t = _inputs()
    return [(f"{module}:concat", (a, b, 0), {}), (f"{module}:mul_mat", (w, x), {"n_threads": 2}),
            (f"{module}:cast", (t, "f16"), {}), (f"{module}:repeat", (x, (256, 5, 3, 1)), {})]


@pytest.mark.parametrize("level", ["generic", "avx2"])
def test_the_harness_gives_the_bindings_bytes_on_ggml_python(ggml, level):
    if peer_build.missing_for(level):
        pytest.skip(f"level {level} needs {', '.join(peer_build.missing_for(level))}, which this CPU lacks")
    via_bindings = peer_build.call_many(level, _calls("mlaref.codegen.peers.ggml_ops"))
    via_harness = harness.call_many("ggml-python", level, _calls("mlaref.codegen.peers.harness_ops"))
    assert len(via_bindings) == len(via_harness) == 4
    for x, y in zip(via_bindings, via_harness, strict=True):
        assert isinstance(y, Tensor), y
        assert (x.type, x.ne) == (y.type, y.ne) and np.array_equal(x.raw(), y.raw())


# -- bad input and other layouts never reach C --------------------------------------------------------------------

def _bad_graph_inputs():
    from mlaref.codegen.peers import harness as h  # noqa: PLC0415 - runs in the child, after load()

    g = h.loaded().graph()
    out = []
    for build in (lambda: g.op("concat", 0, 0, ip=(4,)), lambda: g.op("permute", 0, ip=(0, 1, 1, 3)),
                  lambda: g.op("mul_mat", 5, 6), lambda: g.input(np.zeros(4)), lambda: g.op("nonsense")):
        try:
            build()
            out.append("accepted")
        except (ValueError, TypeError) as exc:
            out.append(type(exc).__name__ + ": " + str(exc))
    return out


def _q8_K_from_float():
    from mlaref.codegen.peers import harness as h  # noqa: PLC0415

    try:
        h.loaded().from_float("q8_K", np.ones((1, 256), np.float32))
    except h.LayoutMismatch as exc:
        return str(exc)
    return "accepted"


def test_bad_graph_input_is_refused_in_python(ggml):
    out = harness.call("ggml-python", "generic", "tests.peers.test_harness:_bad_graph_inputs")
    assert out[0].startswith("ValueError: concat: dim must be one of 0..3")
    assert out[1].startswith("ValueError: permute: axes must be a permutation")
    assert out[2].startswith("ValueError: mul_mat: source 5 is not an earlier node")
    assert out[3].startswith("TypeError: Graph.input takes an mlaref Tensor")
    assert out[4].startswith("ValueError: Graph.op: unknown op 'nonsense'")


def test_ik_q8_K_has_another_layout_and_is_refused():
    msg = harness.call("ik-llama-cpp-python", "native", "tests.peers.test_harness:_q8_K_from_float")
    assert "296 bytes" in msg and "292 bytes" in msg


def test_each_peer_reports_what_it_is():
    """Every peer's harness: its name, the ggml_cpu_has_* of its build, and the type table by name."""
    for peer in peer_build.PEERS:
        info = harness.call(peer, "generic" if peer == peer_build.PEER else "native", "tests.peers.test_harness:_info")
        assert info["peer"] == peer
        assert {"f32", "f16", "bf16", "q8_0", "q4_K", "iq4_nl"} <= set(info["types"])
        assert info["features"]["avx2"] in (0, 1)


def _info():
    h = harness.loaded()
    return {"peer": h.info["peer"], "features": h.info["features"], "types": sorted(h.types)}


def test_llama_cpp_python_concatenates_q8_0_rows_where_0_15_3_did_not():
    """Finding F1 is fixed upstream by ggml 0.25.3 (llama-cpp-python 0.3.36): q8_0 rows concatenated along dim 0
    are the spec's bytes (each row's blocks, then the other's)."""
    rng = np.random.default_rng(9)
    xa, xb = rng.standard_normal((3, 64)).astype(np.float32), rng.standard_normal((3, 32)).astype(np.float32)
    a, b = Tensor.from_numpy(xa, "q8_0"), Tensor.from_numpy(xb, "q8_0")
    out = harness.call("llama-cpp-python", "native", "mlaref.codegen.peers.harness_ops:concat", a, b, 0)
    expect = np.concatenate([quantize(xa, "q8_0", variant="ref"), quantize(xb, "q8_0", variant="ref")], axis=1)
    assert out.type == "q8_0" and out.ne == (96, 3, 1, 1)
    assert np.array_equal(out.raw().reshape(3, -1), expect)


# -- writes past a tensor are caught by the guard bytes after it ---------------------------------------------------

def _copy_same_type(type_name, n_threads):
    from mlaref.codegen.peers import harness as h  # noqa: PLC0415 - runs in the child, after load()
    from mlaref.codegen.peers import harness_ops  # noqa: PLC0415

    x = Tensor.from_numpy(np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32), type_name)
    try:
        out = harness_ops.cast(x, type_name, n_threads=n_threads)
    except h.WrotePastTensor as exc:
        return "wrote past: " + str(exc)
    return "same bytes" if out.raw().tobytes() == x.raw().tobytes() else "other bytes"


def _concat_q8_0():
    from mlaref.codegen.peers import harness as h  # noqa: PLC0415
    from mlaref.codegen.peers import harness_ops  # noqa: PLC0415

    a = Tensor.from_numpy(np.ones((1, 32), np.float32), "q8_0")
    try:
        harness_ops.concat(a, a, 0)
    except h.WrotePastTensor as exc:
        return "wrote past: " + str(exc)
    return "no write past"


def test_writes_past_a_tensor_are_verdicts_not_silence(ggml):
    """Finding F2 (the ik snapshot copies 32 times a contiguous q8_0 tensor) at one thread, and F1 (ggml 0.15.3's
    concat of block rows) are caught by the harness's guard bytes; the same copies elsewhere write nothing past."""
    assert harness.call("ik-llama-cpp-python", "native", "tests.peers.test_harness:_copy_same_type",
                        "q8_0", 1).startswith("wrote past: ")
    assert harness.call("ik-llama-cpp-python", "native", "tests.peers.test_harness:_copy_same_type",
                        "f16", 1) == "same bytes"
    assert harness.call("llama-cpp-python", "native", "tests.peers.test_harness:_copy_same_type",
                        "q8_0", 2) == "same bytes"
    assert "CONCAT" in harness.call("ggml-python", "generic", "tests.peers.test_harness:_concat_q8_0")
    assert harness.call("llama-cpp-python", "native", "tests.peers.test_harness:_concat_q8_0") == "no write past"
