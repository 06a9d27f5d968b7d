"""`mlaref report`: it completes, report.json follows its schema, the plots are PNGs of the stated size, the seed
tables equal the allocator model (and ik_llama.cpp's printed values), and failures or missing pieces are reported
with their reason instead of stopping the report."""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys
import time

import pytest

from mlaref.codegen import report as R
from mlaref.codegen.bench import mla as bench_mla
from mlaref.codegen.bench import throughput
from mlaref.codegen.report import check, sections

TIME_LIMIT = 120  # seconds for `mlaref report --tiny` in the test
PLOTS = {"compute_buffer.png", "mla_speedup.png", "mla_times.png", "kernel_throughput.png"}
PLOTS_GGML = {"mla_speedup_ggml.png", "mla_times_ggml.png"}


def _schema():
    return json.loads(R.SCHEMA_PATH.read_text())


def _validate(report: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:5])


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mlaref.codegen.cli", "report", "--tiny", "--no-progress",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return out, proc, elapsed, report


def test_report_completes(tiny_run):
    out, proc, elapsed, report = tiny_run
    assert report is not None, f"no report.json; stderr:\n{proc.stderr[-3000:]}"
    assert elapsed < TIME_LIMIT, f"mlaref report --tiny took {elapsed:.0f} s"
    assert (out / "report.md").stat().st_size > 1000
    # the exit code is 1 exactly when a check that ran failed
    failed = [c["name"] for c in report["checks"]["list"] if not c["passed"]]
    assert report["checks"]["failed"] == len(failed)
    assert proc.returncode == report["exit_code"] == (1 if failed else 0), proc.stderr[-2000:]
    assert f"{report['checks']['total'] - len(failed)}/{report['checks']['total']} checks passed" in proc.stdout
    for name in failed:
        assert f"FAILED: {name}" in proc.stderr


def test_report_json_follows_schema(tiny_run):
    _validate(tiny_run[3])


def test_schema_rejects_a_figure_without_unit(tiny_run):
    """The schema is not vacuous: a quantity without its unit, or an unknown exit code, is rejected."""
    jsonschema = pytest.importorskip("jsonschema")
    bad = json.loads(json.dumps(tiny_run[3]))
    del bad["runtime"]["unit"]
    assert not jsonschema.Draft202012Validator(_schema()).is_valid(bad)
    bad = json.loads(json.dumps(tiny_run[3]))
    bad["exit_code"] = 3
    assert not jsonschema.Draft202012Validator(_schema()).is_valid(bad)


def test_plots_are_pngs_of_the_stated_size(tiny_run):
    pytest.importorskip("matplotlib")
    out, _, _, report = tiny_run
    plots = report["plots"]
    from mlaref.codegen.peers import ggml as ggml_peer

    assert plots["status"] == "ok"
    assert {p["file"] for p in plots["plots"]} == PLOTS | (PLOTS_GGML if ggml_peer.available() else set())
    for p in plots["plots"]:
        path = out / p["file"]
        assert path.stat().st_size > 5000, f"{p['file']} is nearly empty"
        assert (p["width_px"], p["height_px"]) == R.PLOT_SIZE
        assert _png_size(path) == R.PLOT_SIZE


def test_seed_tables_equal_the_allocator(tiny_run):
    from mlaref.reference import alloc
    from mlaref.reference.hparams import preset

    hp = preset("deepseek-v2-lite")
    st = tiny_run[3]["sections"]["seed_tables"]
    assert st["status"] == "ok"
    assert [r["n_ctx"] for r in st["rows"]] == sorted(alloc.SEED_TABLE)
    for row in st["rows"]:
        n = row["n_ctx"]
        assert row["kv_cache"]["bytes"]["value"] == alloc.kv_cache_bytes(hp, n, "f16")
        assert row["kv_cache"]["mib"]["value"] == alloc.SEED_TABLE[n][0]  # the seed's own KV column
        for v in ("f32", "direct", "chunked"):
            assert row[v]["bytes"]["value"] == alloc.compute_buffer(hp, n, variant=v).buffer_size, (n, v)
        # what ik_llama.cpp prints for the PR (direct) and main (f32) graphs (upstream facts §6.6)
        assert row["direct"]["mib"]["value"] == alloc.PRINTED_TABLE[n][0]
        assert row["f32"]["mib"]["value"] == alloc.PRINTED_TABLE[n][1]
    assert st["rows"][-1]["direct"]["mib"]["value"] == "3476.01"
    assert st["rows"][-1]["f32"]["mib"]["value"] == "5556.01"
    assert len(st["checks"]) == 21 and all(c["passed"] for c in st["checks"])


def test_kernel_checks_and_isa_summary(tiny_run):
    from mlaref.codegen import cpu, isa

    chk = tiny_run[3]["sections"]["check"]
    k = chk["kernels"]["mlaref_dequantize_row_q8_0__scalar_ref"]
    assert k["status"] == "pass" and k["cases"] >= 2
    assert chk["kernels"]["mlaref_copy_rows_bytes__scalar_ref"]["status"] == "pass"
    assert chk["totals"]["pass"] >= 100
    for token, info in isa.ISAS.items():
        state = chk["isas"].get(token)
        if state is None:
            continue
        if info.cross or cpu.missing(token):
            assert state["state"] == "skipped" and state["reasons"], token
        else:
            assert state["pass"] > 0, token
    cpu_sec = tiny_run[3]["sections"]["cpu"]
    assert cpu_sec["isas"]["scalar"]["found"] is True
    assert cpu_sec["dispatch_order"][-1] == "scalar"


@pytest.mark.parametrize("name", [
    "mlaref_vec_dot_q4_K_q8_K__scalar_l8a2", "mlaref_vec_dot_q6_K_q8_K__scalar_ggml_generic",
    "mlaref_vec_dot_q6_K_q8_K__avx2_ggml_x86_avx2", "mlaref_vec_dot_q8_0_q8_0__scalar_l8a1",
    "mlaref_concat_rows_bytes__scalar_ref", "mlaref_copy_rows_bytes__avx2_ref",
    # the mul_mat / flash-attention kernels of every plan are checked against the reference of their own plan
    "mlaref_mul_mat_q8_0_f16__avx2_l8s1", "mlaref_mul_mat_f16_f32__scalar_l8a1",
    "mlaref_flash_attn_ext_q8_0_q8_0__avx2_l8s1", "mlaref_flash_attn_ext_f16_f16__scalar_l8a1",
    "mlaref_flash_attn_ext_partial_q8_0_q8_0__avx2_l8s1", "mlaref_flash_attn_ext_partial_f16_f16__scalar_l16a1",
    "mlaref_fa_merge_f32__avx2_libm", "mlaref_cast_rows_f32_q8_0__avx2_x86", "mlaref_cast_rows_bf16_f32__scalar_ref"])
def test_full_report_kernel_check_passes(name):
    """The full report's own check of one kernel (the quick run checks a subset): K-quant rows are whole
    super-blocks, copies run with and without streaming stores."""
    from mlaref.codegen import catalog, cpu

    miss = cpu.missing(catalog.by_name()[name].isa)
    if miss:
        pytest.skip(f"this CPU lacks {', '.join(miss)}")
    got = R.check_kernel(name)
    assert got["status"] == "pass" and got["cases"] >= 2, got


def test_mla_sections(tiny_run):
    from mlaref.codegen.peers import ggml as ggml_peer

    sections = tiny_run[3]["sections"]
    assert sections["mla"]["status"] == "ok"
    assert sections["mla_ggml"]["status"] == ("ok" if ggml_peer.available() else "skipped")
    for sec in ("mla", "mla_ggml"):
        for row in sections[sec].get("rows", []):
            assert row["f32_equals_direct"]["value"] is True
            want = row["f32"]["median"] / row["direct"]["median"]
            assert row["speedup_direct_over_f32"]["value"] == pytest.approx(want, rel=1e-12)
            assert row["f32"]["min"] <= row["f32"]["median"] <= row["f32"]["max"]
    md = (tiny_run[0] / "report.md").read_text()
    for heading in ("## CPU", "## Build", "## Kernel checks", "## Seed tables", "## Kernel throughput",
                    "## The seed's speed claim", "### The same layer on upstream ggml", "## Skipped"):
        assert heading in md
    assert "1.018" in md  # the seed's pp512 ratio beside ours


def test_bench_types_section(tiny_run):
    """The reference against gguf-py: q8_0 both ways, same bytes, and each same-bytes verdict is a check."""
    bt = tiny_run[3]["sections"]["bench_types"]
    assert bt["status"] == "ok" and bt["method"]["repeats"] >= 5
    rows = {r["direction"]: r for r in bt["results"] if r["format"] == "q8_0"}
    assert set(rows) == {"quantize", "dequantize"}
    for r in rows.values():
        assert r["same_result"]["value"] is True
        want = r["mlaref"]["throughput"]["median"] / r["gguf-py"]["throughput"]["median"]
        assert r["ratio_ours_over_gguf"]["value"] == pytest.approx(want, rel=1e-12)
    names = {c["name"]: c["passed"] for c in tiny_run[3]["checks"]["list"]}
    assert names["reference q8_0 quantize equals gguf-py"] is True
    assert names["reference q8_0 dequantize equals gguf-py"] is True
    assert "## The reference against gguf-py" in (tiny_run[0] / "report.md").read_text()


# -- degradation: in-process runs with pieces forced to fail or go missing ------------------------------------------

def _boom(*args, **kwargs):
    raise RuntimeError("benchmark exploded")


def _fake_build(show):
    from mlaref.codegen import catalog

    mods = sorted({(s.family, s.isa) for s in catalog.catalog()})
    return {"status": "ok", "cache_dir": "(test)", "compile_flags": [],
            "modules": [{"family": f, "isa": i, "kernels": 1, "status": "ok"} for f, i in mods]}


def test_a_failing_kernel_check_gives_exit_1(tmp_path, monkeypatch, capsys):
    from mlaref.codegen import cli

    victim = "mlaref_dequantize_row_q8_0__scalar_ref"
    monkeypatch.setattr(sections, "section_build", _fake_build)
    monkeypatch.setattr(check, "check_kernel", lambda name, n_rows=5: (
        {"status": "fail", "cases": 1, "detail": "n=32: 3 bits differ"} if name == victim
        else {"status": "pass", "cases": 1, "detail": ""}))
    monkeypatch.setattr(throughput, "bench_kernels", _boom)
    monkeypatch.setattr(bench_mla, "run_mla", _boom)
    rc = cli.main(["report", "--tiny", "--no-progress", "--out", str(tmp_path)])
    assert rc == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert [c["name"] for c in report["checks"]["list"] if not c["passed"]] == [f"kernel {victim}"]
    for sec in ("bench_kernels", "mla", "mla_ggml"):
        assert report["sections"][sec]["status"] == "skipped"
    for sec in ("bench_kernels", "mla"):
        assert "benchmark exploded" in report["sections"][sec]["reason"]
    md = (tmp_path / "report.md").read_text()
    assert "skipped: RuntimeError: benchmark exploded" in md
    assert f"`{victim}`: n=32: 3 bits differ" in md
    assert f"FAILED: kernel {victim}" in capsys.readouterr().err
    _validate(report)


def test_skipped_sections_do_not_fail_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(sections, "section_build", _fake_build)
    monkeypatch.setattr(check, "check_kernel", lambda name, n_rows=5: {"status": "pass", "cases": 1, "detail": ""})
    monkeypatch.setattr(throughput, "bench_kernels", _boom)
    monkeypatch.setattr(bench_mla, "run_mla", _boom)
    report = R.make_report(tmp_path, "tiny", show=False)
    assert report["exit_code"] == 0
    assert {x["what"] for x in report["skipped"]} >= {"section bench_kernels", "section mla"}


def test_without_ggml_python_or_matmul_kernels(tmp_path, monkeypatch):
    """ggml-python absent and no mul_mat/flash_attn_ext kernels: the report completes and says what it skipped."""
    from mlaref.codegen.peers import ggml as ggml_peer

    monkeypatch.setattr(ggml_peer, "available", lambda: False)
    monkeypatch.setattr(ggml_peer, "unavailable_reason", lambda: "ggml-python is not usable here (test)")
    monkeypatch.setattr(bench_mla, "kernels_available", lambda: "DispatchError: no mul_mat kernel (test)")
    monkeypatch.setattr(sections, "section_build", _fake_build)
    monkeypatch.setattr(check, "check_kernel", lambda name, n_rows=5: {"status": "pass", "cases": 1, "detail": ""})
    report = R.make_report(tmp_path, "tiny", show=False)
    assert report["environment"]["ggml_python"] is False
    mla = report["sections"]["mla"]
    assert mla["status"] == "ok" and mla["backend"] == "reference"
    assert "no mul_mat kernel (test)" in mla["note"]
    assert report["sections"]["mla_ggml"] == {"status": "skipped", "reason": "ggml-python is not usable here (test)",
                                              "seconds": report["sections"]["mla_ggml"]["seconds"]}
    assert [r["n_kv"] for r in mla["rows"]] == list(sections.MLA_REFERENCE["n_kv"])
    assert all(r["f32_equals_direct"]["value"] for r in mla["rows"])
    # two chunks at n_kv 512: partial attention (f32 accumulator) + merge against one pass of ggml's generic order
    # (f16 V accumulator): ggml's NMSE bound for flash_attn_ext, 5e-4 (test-backend-ops.cpp)
    assert 0 < mla["rows"][-1]["chunked_vs_direct_nmse"]["value"] < 5e-4
    for row in report["sections"]["bench_kernels"]["results"]:
        assert row["ggml"] == {"status": "n/a", "reason": "ggml-python is not usable here (test)"}
    whats = {x["what"] for x in report["skipped"]}
    assert {"mla on mlaref's kernels (the seed's speed claim)", "section mla_ggml"} <= whats
    md = (tmp_path / "report.md").read_text()
    assert "the seed's speed claim was not measured" in md
    assert "skipped: ggml-python is not usable here (test)" in md
    assert report["exit_code"] == 0
    _validate(report)


def test_cli_rejects_bad_arguments(tmp_path):
    from mlaref.codegen import cli

    assert cli.main(["report", "--quick", "--tiny", "--out", str(tmp_path)]) == 2
    assert cli.main(["report", "--threads", "0", "--out", str(tmp_path)]) == 2


def test_report_times_the_cached_peers_or_says_how_to_build_them(tiny_run):
    """bench_peers runs on every peer build in the cache; a peer not built is named with the command that builds it."""
    from mlaref.codegen.peers import build as peer_build

    s = tiny_run[3]["sections"]
    bp = s["bench_peers"]
    built = [p for p in ("ik-llama-cpp-python", "llama-cpp-python") if peer_build.built("native", p)]
    if not built:
        assert bp["status"] == "skipped" and "mlaref peer build ik-llama-cpp-python" in bp["reason"]
        return
    assert bp["status"] == "ok" and bp["peers"] == built
    from mlaref.codegen.bench import peers as bench_peers

    assert {(r["case"], r["n_kv"]) for r in bp["rows"]} == {(c, 64) for c in bench_peers.CASES}
    for r in bp["rows"]:
        assert set(r["contenders"]) == {"mlaref", *built}
        for p in built:
            c = r["contenders"][p]
            if p == "llama-cpp-python" and r["case"] in ("mul_mat q8_0 x f16", "mul_mat iq4_nl x f16"):
                # upstream takes a non-f32 src1 only when it is the weight's vec_dot type
                assert "supports_op refuses mul_mat over" in c["unsupported"] and "seconds" not in c
                continue
            assert c["mlaref_speed_ratio"]["value"] == pytest.approx(
                c["seconds"]["value"] / r["contenders"]["mlaref"]["seconds"]["value"])
    if s["cpu"]["fma_peak"]["status"] == "ok":
        assert s["cpu"]["fma_peak"]["threads_1"]["unit"] == "GFLOP/s"


def test_cuda_section_in_the_tiny_report(tiny_run):
    """The cuda section: skipped without nvcc (with that reason), else the nvcc build of every family as checks,
    and the runs either skipped with the driver's reason (no GPU) or one check per bit-exact case."""
    cu = tiny_run[3]["sections"]["cuda"]
    names = [c["name"] for c in tiny_run[3]["checks"]["list"]]
    if cu["status"] == "skipped":
        assert "nvcc" in cu["reason"]
        return
    assert set(cu["build"]["libraries"]) >= {"runtime", "copy_rows", "concat_rows", "convert_rows", "mul_mat"}
    assert all(f"build CUDA {f} (nvcc)" in names for f in cu["build"]["libraries"])
    if cu["runs"]["status"] == "skipped":
        assert cu["runs"]["reason"].startswith(cu["gpu"])
        assert any(x["what"] == "CUDA kernel runs and timings" for x in tiny_run[3]["skipped"])
    else:
        assert len([n for n in names if n.startswith("CUDA kernel ")]) == cu["runs"]["correctness"]["total"]


def test_cuda_section_on_a_gpu_reports_each_case(monkeypatch):
    """With a GPU (simulated: the probe and the case runner stubbed), every case is a report check and a failing
    case fails the report and is listed in report.md."""
    from mlaref.codegen.report import builder, markdown

    monkeypatch.setattr(sections.cuda_check, "build_step", lambda log, jobs: {
        "nvcc": "/usr/bin/nvcc", "nvcc_version": "release 13.0", "flags": ["-fmad=false"], "ok": True,
        "libraries": {"runtime": {"ok": True}, "mul_mat": {"ok": True}}})
    monkeypatch.setattr(sections.cuda_build, "gpu_status", lambda: "ok: 1 device(s)")
    monkeypatch.setattr(sections.cuda_build, "gpu_present", lambda: True)
    cases = [{"kernel": "k_a", "case": "1x32", "ok": True, "detail": ""},
             {"kernel": "k_b", "case": "3x64", "ok": False, "detail": "rows: 5 of 204 bytes differ"}]
    monkeypatch.setattr(sections.cuda_check, "correctness_step",
                        lambda log: {"cases": cases, "passed": 1, "total": 2})
    sec = sections.section_cuda(builder.MODES["tiny"], False)
    assert sec["runs"]["correctness"]["total"] == 2 and "timing" not in sec["runs"]
    checks = builder._collect_checks({"cuda": sec})
    assert {"name": "CUDA kernel k_b [3x64] bit-exact", "passed": False} in checks
    assert {"name": "build CUDA mul_mat (nvcc)", "passed": True} in checks
    lines = markdown._md_cuda(sec)
    assert "Bit-exact against the reference: 1 of 2 cases." in lines
    assert "- FAIL k_b [3x64]: rows: 5 of 204 bytes differ" in lines


def test_cuda_section_without_nvcc(monkeypatch):
    monkeypatch.setattr(sections.cuda_check, "build_step", lambda log, jobs: {"nvcc": None, "ok": False,
                                                                            "libraries": {}})
    sec = sections.section_cuda({"mla_repeats": 1}, False)
    assert sec == {"status": "skipped", "reason": "nvcc not found (PATH or /usr/local/cuda/bin): the CUDA kernels "
                                                  "were not compiled"}
