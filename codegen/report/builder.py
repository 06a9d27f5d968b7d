"""`mlaref report`: run every section in order, collect the checks and skips, write report.json, report.md, plots.

``mlaref report [--quick] [--out DIR]`` writes ``DIR/report.md`` (for people), ``DIR/report.json`` (for
machines; schema ``codegen/report/report.schema.json``, every figure a ``{value, unit, method}`` or a timing with its
median/min/max) and PNG plots (matplotlib; skipped with a reason without it). Sections, in order:

``cpu``, ``build``
    the machine and its ISA tokens; every (family, ISA) module built (:mod:`.sections`).
``check``
    every kernel of a built module against the NumPy reference on a fixed case set: equal bytes = pass. Per
    ISA: verified (every kernel passed), failed, or skipped and why (:mod:`.check`).
``seed_tables``
    the seed's KV cache and compute-buffer table from the allocator model, cell by cell against the seed's
    printed strings and ik_llama.cpp's own output (:mod:`.seed`).
``bench_kernels``
    MB/s of float32 data for the dispatched C kernel, the NumPy reference and upstream ggml (ggml-python) on
    the same rows, quantize and dequantize per format (:mod:`mlaref.codegen.bench.throughput`).
``bench_ops``
    seconds per call of one MLA layer's ops at small shapes: reference, kernels, ggml
    (:mod:`mlaref.codegen.bench.ops`).
``bench_types``
    the reference against gguf-py (:func:`mlaref.codegen.bench.bench_types`).
``bench_peers``
    mlaref's mul_mat and flash attention against ik_llama.cpp and upstream ggml 0.25.3 through the peer harness,
    with the fraction of the FMA peak; cached peer builds only (:mod:`mlaref.codegen.bench.peers`).
``mla``, ``mla_ggml``
    the seed's speed claim as per-layer ratios on this CPU (:mod:`mlaref.codegen.bench.mla`): on mlaref's
    generated kernels (IQ4_NL ``wkv_b`` as in the seed), and on upstream ggml through ggml-python.

Then the plots (:mod:`.plots`) and report.md (:mod:`.markdown`).

Exit code: 0 when every check that ran passed (kernel checks, the seed-table cells, the reference's equality with
gguf-py, the f32/direct equality of the MLA benchmark), 1 when one failed, 2 for bad arguments. A section that
cannot run says ``skipped: <reason>`` and the report still completes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time
import traceback

import mlaref
from mlaref.codegen import bench
from mlaref.codegen.peers import ggml as ggml_peer
from mlaref.codegen.report import check, plots, sections
from mlaref.codegen.report.markdown import render_markdown
from mlaref.codegen.report.schema import SCHEMA_ID, json_default, quantity
from mlaref.codegen.report.seed import seed_tables

__all__ = ["MODES", "make_report", "configure", "run"]

# Mode presets: what --quick and the test-only --tiny change.
MODES = {
    "full": {"mla_n_kv": (512, 1024, 2048, 4096, 8192, 16384), "mla_repeats": 3, "bench_mb": 4.0,
             "bench_repeats": 5, "bench_types": None, "check_rows": 5, "peers_n_kv": (1024, 4096)},
    "quick": {"mla_n_kv": (512, 2048), "mla_repeats": 3, "bench_mb": 4.0, "bench_repeats": 5,
              "bench_types": ("f16", "q8_0", "iq4_nl", "q8_K"), "check_rows": 3, "peers_n_kv": (1024,)},
    "tiny": {"mla_n_kv": (512,), "mla_repeats": 1, "bench_mb": 0.25, "bench_repeats": 1,
             "bench_types": ("q8_0",), "check_rows": 2, "peers_n_kv": (64,)},
}


def _run_section(fn, *args) -> dict:
    """``fn(*args)`` timed; a section that raises is reported as skipped with the reason and the traceback."""
    t0 = time.perf_counter()
    try:
        res = fn(*args)
    except Exception as exc:  # a broken piece is reported, the report goes on
        res = {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"[:2000],
               "traceback": traceback.format_exc()[-4000:]}
    res["seconds"] = quantity(time.perf_counter() - t0, "s", "wall clock of the section")
    return res


def make_report(out: pathlib.Path, mode: str = "full", show: bool = True, n_threads: int | None = None) -> dict:
    """Run every section, write report.json, report.md and the plots into ``out``; return the report dict."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    cfg = MODES[mode]
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    s: dict[str, dict] = {}
    load_start = _load_average("at the start of the report")
    print(f"mlaref report ({mode}) -> {out}", file=sys.stderr)

    s["cpu"] = _run_section(sections.section_cpu)
    s["build"] = _run_section(sections.section_build, show)
    if s["build"]["status"] == "skipped":
        s["check"] = {"status": "skipped", "reason": f"build: {s['build']['reason']}"}
    else:
        s["check"] = _run_section(check.section_check, s["build"], show, cfg["check_rows"])
    s["seed_tables"] = _run_section(seed_tables)
    s["bench_kernels"] = _run_section(sections.section_bench_kernels, cfg, show)
    s["bench_ops"] = _run_section(sections.section_bench_ops, cfg)
    s["bench_types"] = _run_section(sections.section_bench_types, cfg, show)
    s["bench_peers"] = _run_section(sections.section_bench_peers, cfg, show, n_threads)
    s["cuda"] = _run_section(sections.section_cuda, cfg, show)
    s["mla"] = _run_section(sections.section_mla, "kernels", cfg, show, n_threads)
    s["mla_ggml"] = _run_section(sections.section_mla, "ggml", cfg, show, n_threads)

    checks = _collect_checks(s)
    failed = [c for c in checks if not c["passed"]]
    plot_status = plots.draw(s, out)

    report = {
        "schema": SCHEMA_ID,
        "mlaref_version": _version(),
        "created": started,
        "mode": mode,
        "command": "mlaref report" + ("" if mode == "full" else f" --{mode}"),
        "environment": bench.environment() | {"ggml_python": ggml_peer.available(), "load_average": load_start},
        "runtime": quantity(time.perf_counter() - t_start, "s", "wall clock of the whole report"),
        "sections": s,
        "plots": plot_status,
        "checks": {"total": len(checks), "failed": len(failed), "list": checks},
        "skipped": _collect_skips(s, plot_status),
        "exit_code": 1 if failed else 0,
    }
    report["runtime"]["value"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=1, default=json_default) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report


def _load_average(when: str) -> dict:
    """os.getloadavg() (1, 5, 15 minutes): timings on a machine busy with other work are noisier."""
    try:
        value = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        value = None
    return quantity(value, "runnable processes", f"os.getloadavg() over 1, 5 and 15 minutes, {when}")


def _version() -> str:
    return getattr(mlaref, "__version__", "unknown")  # "unknown" in a tree without the version attribute


def _collect_checks(s: dict) -> list[dict]:
    """Every pass/fail verdict of the report: kernel checks, failed builds, seed cells, gguf-py equality, MLA."""
    checks = []
    chk = s.get("check", {})
    for name, r in chk.get("kernels", {}).items():
        if r["status"] in ("pass", "fail"):
            checks.append({"name": f"kernel {name}", "passed": r["status"] == "pass"})
    for m in s.get("build", {}).get("modules", []):
        if m["status"] == "failed":
            checks.append({"name": f"build {m['family']} {m['isa']}", "passed": False})
    checks += s.get("seed_tables", {}).get("checks", [])
    for r in s.get("bench_types", {}).get("results", []):
        if r["same_result"]["value"] is not None:
            checks.append({"name": f"reference {r['format']} {r['direction']} equals gguf-py",
                           "passed": bool(r["same_result"]["value"])})
    cu = s.get("cuda", {})
    for fam, lib in cu.get("build", {}).get("libraries", {}).items():
        checks.append({"name": f"build CUDA {fam} (nvcc)", "passed": bool(lib["ok"])})
    for case in cu.get("runs", {}).get("correctness", {}).get("cases", []):
        checks.append({"name": f"CUDA kernel {case['kernel']} [{case['case']}] bit-exact", "passed": case["ok"]})
    for sec in ("mla", "mla_ggml"):
        m = s.get(sec, {})
        for r in m.get("rows", []):
            if "f32_equals_direct" in r:
                checks.append({"name": f"mla ({m['backend']}) f32 output equals direct output, n_kv {r['n_kv']}",
                               "passed": bool(r["f32_equals_direct"]["value"])})
    return checks


def _collect_skips(s: dict, plot_status: dict) -> list[dict]:
    """Everything that did not run, with the reason: sections, plots, ISAs, benchmark contenders."""
    out = [{"what": f"section {k}", "reason": v["reason"]} for k, v in s.items()
           if v.get("status") == "skipped"]
    if plot_status["status"] == "skipped":
        out.append({"what": "plots", "reason": plot_status["reason"]})
    for isa, d in s.get("check", {}).get("isas", {}).items():
        if d["state"] == "skipped":
            out.append({"what": f"ISA {isa}", "reason": "; ".join(d["reasons"])})
    runs = s.get("cuda", {}).get("runs", {})
    if runs.get("status") == "skipped":
        out.append({"what": "CUDA kernel runs and timings", "reason": runs["reason"]})
    mla = s.get("mla", {})
    if mla.get("backend") == "reference":
        out.append({"what": "mla on mlaref's kernels (the seed's speed claim)", "reason": mla.get("note", "")})
    for r in s.get("bench_kernels", {}).get("results", []):
        for who in ("kernel", "reference", "ggml"):
            if r[who]["status"] != "ok":
                out.append({"what": f"bench {r['format']} {r['direction']} {who}", "reason": r[who]["reason"]})
    for r in s.get("bench_ops", {}).get("results", []):
        for who in ("kernel", "reference", "ggml"):
            if r[who]["status"] != "ok":
                out.append({"what": f"bench op {r['op']} {who}", "reason": r[who]["reason"]})
    return out


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the ~2-minute version (fewer n_kv, formats, repeats)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-only: the smallest run
    parser.add_argument("--out", default="mlaref-report", metavar="DIR", help="output directory (default mlaref-report)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads for the MLA benchmark (default: all logical CPUs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def run(args) -> int:
    if args.quick and args.tiny:
        print("mlaref report: --quick and --tiny exclude each other", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"mlaref report: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    out = pathlib.Path(args.out)
    report = make_report(out, mode, show=not args.no_progress, n_threads=args.threads)
    chk = report["checks"]
    print(f"mlaref report: {chk['total'] - chk['failed']}/{chk['total']} checks passed, "
          f"{len(report['skipped'])} item(s) skipped, {report['runtime']['value']:.1f} s; "
          f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(report['plots'].get('plots', []))} plot(s)")
    if chk["failed"]:
        for c in chk["list"]:
            if not c["passed"]:
                print(f"FAILED: {c['name']}", file=sys.stderr)
    return report["exit_code"]
