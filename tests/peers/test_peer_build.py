"""Peer builds at CPU levels: the level switches, the CPU check, the record, and the library's compiled features.

The builds themselves are made (once, into the user cache) by the tests that need them; these tests build only
the levels this CPU runs, and each check reads the library of that level in a child process.
"""

import pytest

from mlaref.codegen import cpu

from mlaref.codegen.peers import ggml as ggml_peer

from mlaref.codegen.peers import build as peer_build
from mlaref.reference import builds

RUNNABLE = peer_build.runnable_levels()


def test_every_level_has_cmake_switches_and_cpu_needs():
    assert list(peer_build.LEVEL_CMAKE) == list(builds.LEVELS)
    # each level switches on everything the one below it does
    names = list(builds.LEVELS)
    for lo, hi in zip(names, names[1:]):
        assert set(peer_build.LEVEL_CMAKE[lo]) <= set(peer_build.LEVEL_CMAKE[hi]), (lo, hi)
        assert builds.LEVELS[lo] <= builds.LEVELS[hi], (lo, hi)


def test_levels_this_cpu_lacks_are_named():
    assert "generic" in RUNNABLE
    for lv in builds.LEVELS:
        miss = peer_build.missing_for(lv)
        assert (lv in RUNNABLE) == (not miss)
        assert all(f not in cpu.features() for f in miss)
    if "avx512f" not in cpu.features():
        assert "avx512f" in peer_build.missing_for("avx512")
        with pytest.raises(peer_build.PeerBuildError, match="avx512f"):
            peer_build.ensure("avx512")


@pytest.mark.parametrize("spec,err", [("llama-cpp@avx2", "unknown peer"), ("ggml-python@avx3", "unknown level"),
                                      ("ggml-python@", None), ("ggml-python@native", None)])
def test_parse_peer(spec, err):
    if err:
        with pytest.raises(ValueError, match=err):
            peer_build.parse_peer(spec)
    else:
        assert peer_build.parse_peer(spec)[0] == "ggml-python"


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="unknown level"):
        peer_build.missing_for("avx3")
    with pytest.raises(ValueError, match="unknown ggml build level"):
        builds.level("sse9")


@pytest.mark.parametrize("level", list(builds.LEVELS))
def test_a_level_build_reports_the_features_it_was_compiled_with(level):
    """ggml_cpu_has_* of the level's library (not this CPU's features) give back the level, tuning generic."""
    miss = peer_build.missing_for(level)
    if miss:
        pytest.skip(f"level {level} needs {', '.join(miss)}, which this CPU lacks")
    b = peer_build.call(level, "mlaref.codegen.peers.ggml:build")
    assert b.features == builds.LEVELS[level]
    assert (b.level, b.tune) == (level, "generic")
    assert b.vec_dot_plan == builds.level(level).vec_dot_plan
    rec = peer_build.record(level)
    assert rec["level"] == level and rec["version"] == peer_build.VERSION and rec["seconds"] > 0
    assert "-DGGML_NATIVE=OFF" in rec["cmake_args"]


def test_the_installed_library_is_described_by_its_compiled_features():
    if not ggml_peer.available():
        pytest.skip(ggml_peer.unavailable_reason())
    b = ggml_peer.build()
    g = ggml_peer.lib()
    assert ("avx2" in b.features) == bool(g.ggml_cpu_has_avx2())
    assert ("avx512f" in b.features) == bool(g.ggml_cpu_has_avx512())
    assert ("fma" in b.features) == bool(g.ggml_cpu_has_fma())
    assert b.name.startswith("native/")
    # ggml-python keeps ggml's default GGML_LLAMAFILE=OFF: mul_mat is ggml's own, which the spec models
    assert not g.ggml_cpu_has_llamafile() and b.mul_mat_modelled == ""


def test_build_model_choices():
    """The mapping from a build to its plan and vector exp, on builds that need no library."""
    assert builds.level("generic").vec_dot_plan == "ggml_generic"
    assert builds.level("generic").simd == "sse2" and not builds.level("generic").fma
    assert builds.level("avx").vec_dot_plan == "ggml_x86_avx" and builds.level("avx").simd == "sse2_avx"
    assert builds.level("avx2").vec_dot_plan == "ggml_x86_avx2" and builds.level("avx2").simd == "avx2"
    assert builds.level("avx2", "znver3").vec_dot_plan == "ggml_x86_avx2_znver3"
    assert builds.level("avx512").simd == "avx512"
    spr = builds.GgmlBuild(builds.LEVELS["avx512bf16"] | {"avx512_fp16"}, "sapphirerapids")
    assert spr.vec_dot_plan == "ggml_x86_avx512" and spr.verified
    assert builds.level("avx512vnni", "icelake-server").vec_dot_plan == "ggml_x86_avx512_icelake"
    assert builds.level("avx512bf16", "znver4").vec_dot_plan == "ggml_x86_avx512_znver4"
    assert not builds.level("avx512bf16").verified  # generic tuning with BF16: inferred, never run
    with pytest.raises(LookupError, match="not modelled"):
        _ = builds.GgmlBuild(builds.LEVELS["avx"] | {"fma"}).vec_dot_plan
    assert "sgemm" in builds.GgmlBuild(builds.LEVELS["avx2"] | {"llamafile"}).mul_mat_modelled
    with pytest.raises(ValueError, match="unknown features"):
        builds.GgmlBuild(frozenset({"avx9"}))
