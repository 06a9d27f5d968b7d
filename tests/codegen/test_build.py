"""The cffi build cache (content-addressed, locked), the CPU probe and ``mlaref info``."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mlaref.codegen import build, cpu


def test_cflags():
    assert build.cflags("scalar")[:4] == ("-O2", "-std=c11", "-ffp-contract=off", "-fno-fast-math")
    assert build.cflags("avx2") == build.COMMON_CFLAGS + ("-mavx2", "-mfma", "-mf16c")


def test_key_depends_on_flags_and_isa(monkeypatch):
    name, key = build.module_key("dequantize_row", "avx2")
    assert name.startswith("_mlaref_dequantize_row_avx2_") and name.endswith(key[:16])
    assert build.module_key("dequantize_row", "avx2") == (name, key)
    assert build.module_key("dequantize_row", "avx512")[1] != key
    monkeypatch.setenv("MLAREF_SANITIZE", "1")
    assert build.module_key("dequantize_row", "avx2")[1] != key
    with pytest.raises(LookupError):
        build.module_key("copy_rows", "neondot")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MLAREF_CACHE_DIR", str(tmp_path / "c"))
    assert build.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


_CHILD = """
import os, sys, time
import numpy as np
go = sys.argv[1]
while not os.path.exists(go):  # a file barrier: both children start building at the same moment
    time.sleep(0.005)
from mlaref.codegen import build as b
from mlaref.codegen import kernels as k
b.load("copy_rows", "scalar")
x = np.arange(64, dtype=np.float32).reshape(2, 32)
print(k.quantize(x, "q4_0").tobytes().hex())
"""


def test_two_processes_building_at_once_do_not_corrupt_the_cache(tmp_path):
    """Two fresh processes build the same two modules into an empty cache at the same moment."""
    cache = str(tmp_path / "cache")
    go = tmp_path / "go"
    env = {**os.environ, "MLAREF_CACHE_DIR": cache}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
        results.append(stdout.strip())
    assert results[0] == results[1] and len(results[0]) == 2 * 2 * 18
    files = sorted(os.listdir(cache))
    libs = [f for f in files if f.endswith(".so")]
    assert len(libs) == 2, files  # copy_rows scalar + quantize_row (best ISA), each built once
    assert not [f for f in files if not (f.endswith(".so") or f.endswith(".lock"))], files  # no temp dirs left
    # a third process loads from the cache without compiling
    r = subprocess.run([sys.executable, "-c", "from mlaref.codegen import build; import mlaref.codegen.build as b;"
                        "b._compile = None; b.load('copy_rows', 'scalar'); print('ok')"],
                       env={**os.environ, "MLAREF_CACHE_DIR": cache}, capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]


def test_cpu_probe_parses_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 fma f16c avx512f\n\n"
                 "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu.features(str(f)) == {"fpu", "sse2", "avx2", "fma", "f16c", "avx512f"}
    g = tmp_path / "cpuinfo_arm"
    g.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp\n")
    assert "asimddp" in cpu.features(str(g))
    assert cpu.features(str(tmp_path / "missing")) == frozenset()


def test_llc_probe_reads_sysfs(tmp_path):
    """The largest data or unified cache sysfs lists (this Ice Lake VM's layout), not the instruction cache; the
    fallback where sysfs says nothing."""
    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "64M"), (2, "Unified", "1280K"),
                                             (3, "Unified", "49152K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert cpu.llc_bytes.__wrapped__(str(tmp_path)) == 49152 * 1024
    assert cpu.llc_bytes.__wrapped__(str(tmp_path / "missing")) == cpu.LLC_FALLBACK == 16 << 20


def test_missing_features_are_named():
    assert cpu.missing("scalar") == ()
    other = "neon" if cpu.host_arch_is_x86() else "avx2"
    assert cpu.missing(other)[0].startswith("arch ")


def test_info_reports_features_and_kernels():
    """``mlaref info --no-kernels`` (the per-op choice without compiling every module) under MLAREF_ISA."""
    r = subprocess.run([sys.executable, "-m", "mlaref", "info", "--no-kernels"], capture_output=True, text=True,
                       env={**os.environ, "MLAREF_ISA": "scalar"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for word in ("Python", "NumPy", "compiler", "baseline", "MLAREF_ISA          = scalar", "kernel chosen per op",
                 "mlaref_dequantize_row_q8_0__scalar_ref"):
        assert word in out, word
    assert "not found" in out  # the other architecture's ISAs at least


def test_cross_tools_missing_names_the_tool(monkeypatch, tmp_path):
    """Without the cross compiler / qemu on PATH the NEON tests skip with a reason naming the tool."""
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = build.cross_tools_missing("aarch64")
    assert "aarch64-linux-gnu-gcc" in reason and "qemu-aarch64" in reason
    with pytest.raises(build.BuildError, match="aarch64-linux-gnu-gcc"):
        build.cross_driver("aarch64")


def test_stale_generated_tree_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "GENERATED_DIR", tmp_path)
    with pytest.raises(build.BuildError, match="out of date"):
        build.module_key("copy_rows", "scalar")
