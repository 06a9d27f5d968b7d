"""The ``mlaref conform`` command line: its options, the libraries checked, the verdict lines and the summary.

For every case the spec side (``mlaref.reference``) and the library side (upstream ggml through ggml-python, or
another build) compute the same thing from the same input bytes (:mod:`.ops`), and the outputs are compared
(:mod:`.verdict`), each case in a worker process (:mod:`.worker`).

Which library runs: ``--peer ggml-python`` (the default) is the installed package's library; ``--peer
ggml-python@LEVEL`` is the build of that level from ggml-python's own sdist (``mlaref peer build``,
:mod:`mlaref.codegen.peers.build`), built on first use; ``--lib PATH`` is any other build, which must have the C
API and struct layouts of ggml-python's header version: the run prints ``ggml_version()`` / ``ggml_commit()`` of
the library loaded and warns when the version differs. ``--all-levels`` runs the installed library and every level
this CPU runs. ``--peer llama-cpp-python[@LEVEL]`` and ``--peer ik-llama-cpp-python[@LEVEL]`` (level ``native``
by default) run through mlaref's C harness compiled against that peer's headers
(:mod:`mlaref.codegen.peers.harness`); ``--harness`` runs ggml-python's level build through it too.

``mlaref conform`` exits 1 when any verdict is unexplained (a mismatch or abort no ``known`` entry covers), 2 on a
usage error or a library that cannot be loaded, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from mlaref.codegen.conform.case import load_cases, save_cases
from mlaref.codegen.conform.caseset import default_cases, quick_cases, select
from mlaref.codegen.conform.ops import OPS, TEST_ONLY_OPS
from mlaref.codegen.conform.verdict import STATUSES
from mlaref.codegen.conform.worker import DEFAULT_TIMEOUT, run_cases
from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import harness


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer", metavar="NAME[@LEVEL]", help="the peer to check: ggml-python (the installed "
                        "package's library, the default), ggml-python@LEVEL (native, generic, avx, avx2, avx512, "
                        "avx512vnni, avx512bf16), llama-cpp-python[@LEVEL] or ik-llama-cpp-python[@LEVEL] (level "
                        "native by default); builds come from the sdists on first use, see mlaref peer")
    parser.add_argument("--harness", action="store_true", help="reach ggml-python@LEVEL through mlaref's C harness "
                        "instead of ggml-python's bindings (the other peers always use the harness)")
    parser.add_argument("--lib", metavar="PATH", help="a libggml.so (or its directory) of another build with "
                                                      "ggml-python's header version (default: ggml-python's own)")
    ops = ", ".join(o for o in OPS if o not in TEST_ONLY_OPS)
    parser.add_argument("--ops", metavar="a,b,...", help=f"only these ops ({ops})")
    parser.add_argument("--types", metavar="a,b,...", help="only cases involving one of these types")
    parser.add_argument("--all-levels", action="store_true", help="check the installed library and ggml-python "
                        "built at every level this CPU runs, one run each")
    parser.add_argument("--json", metavar="FILE", help="also write the verdicts as JSON")
    parser.add_argument("--json-dir", metavar="DIR", help="also write each run's verdicts as DIR/<build>.json "
                                                          "(the docs' snapshots: docs/data/conform)")
    parser.add_argument("--case", metavar="FILE", action="append",
                        help="replay the case(s) of a case file instead of the case set (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a fast subset of the case set")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per case (default %(default)s)")
    parser.add_argument("--write-cases", metavar="FILE", help="write the selected cases to a case file and exit")
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")


def _split(s):
    return [v.strip() for v in s.split(",") if v.strip()] if s else None


def run(args) -> int:
    if args.case:
        cases = [c for f in args.case for c in load_cases(f)]
    else:
        cases = quick_cases() if args.quick else default_cases()
    ops, types = _split(args.ops), _split(args.types)
    for o in ops or ():
        if o not in OPS:
            print(f"mlaref conform: unknown op {o!r}; known: {', '.join(OPS)}", file=sys.stderr)
            return 2
    cases = select(cases, ops, types)
    if args.write_cases:
        save_cases(args.write_cases, cases)
        print(f"wrote {len(cases)} case(s) to {args.write_cases}")
        return 0
    if args.list:
        for c in cases:
            print(f"{c.id}  ({c.op}, expect {c.expect})")
        return 0
    if not cases:
        print("mlaref conform: no case selected", file=sys.stderr)
        return 2
    w = max(len(c.id) for c in cases)

    def progress(v):
        print(f"{v['id']:<{w}}  {v['text']}" + ("" if v["explained"] else "  <-- UNEXPLAINED"), flush=True)
        if v.get("note") and v["status"] != "bit-exact":
            print(f"{'':<{w}}    note: {v['note']}", flush=True)

    try:
        targets = _targets(args)
    except (ValueError, RuntimeError) as exc:
        print(f"mlaref conform: {exc}", file=sys.stderr)
        return 2
    worst = 0
    for label, lib_path in targets:
        if len(targets) > 1:
            print(f"\n=== {label}", flush=True)
        try:
            if callable(lib_path):
                lib_path = lib_path()
            where = lib_path if isinstance(lib_path, dict) else {"lib_path": lib_path}
            result = run_cases(cases, timeout=args.timeout, progress=progress, **where)
        except (RuntimeError, FileNotFoundError, ImportError, ValueError) as exc:
            print(f"mlaref conform: {label}: {exc}", file=sys.stderr)
            return 2
        unexplained = _summarise(result)
        worst = max(worst, 1 if unexplained else 0)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        if args.json_dir:
            out = Path(args.json_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{snapshot_name(result)}.json").write_text(json.dumps(result, indent=1) + "\n")
    return worst


def snapshot_name(result: dict) -> str:
    """The file stem of a run's snapshot: its build's name (``avx2``, ``native-znver3``), after the peer's name for
    a peer other than ggml-python (``ik-llama-cpp-python-native-znver3``)."""
    g = result.get("ggml", {})
    b = g.get("build") or {}
    peer = g.get("peer", "ggml-python")
    name = b.get("name") or "unknown"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name if peer == "ggml-python" else f"{peer}-{name}")


def _targets(args) -> list:
    """(label, lib path or a callable that builds it) for each library the run checks."""
    if args.all_levels:
        if args.lib or args.peer:
            raise ValueError("--all-levels runs the installed library and every level; give no --peer or --lib")
        return [("ggml-python (installed)", None)] + [
            (f"ggml-python@{lv}", lambda lv=lv: str(peer_build.ensure(lv, progress=True) / "lib"))
            for lv in peer_build.runnable_levels()]
    if args.peer:
        name, level = peer_build.parse_peer(args.peer)
        if name != peer_build.PEER or args.harness:
            if args.lib:
                raise ValueError(f"--lib is for ggml-python's bindings; {name} runs through the harness")
            level = level or "native"
            miss = peer_build.missing_for(level)
            if miss:
                raise ValueError(f"level {level} needs CPU features this machine lacks: {', '.join(miss)}")
            return [(f"{name}@{level}", lambda: {"harness": str(harness.ensure(name, level, progress=True))})]
        if level is not None:
            if args.lib:
                raise ValueError("give --peer NAME@LEVEL or --lib, not both")
            miss = peer_build.missing_for(level)
            if miss:
                raise ValueError(f"level {level} needs CPU features this machine lacks: {', '.join(miss)}")
            return [(args.peer, lambda: str(peer_build.ensure(level, progress=True) / "lib"))]
    return [(args.lib or "ggml-python (installed)", args.lib)]


def _summarise(result: dict) -> int:
    """Print a run's library, build model and counts; return the number of unexplained verdicts."""
    g = result["ggml"]
    counts = {s: sum(v["status"] == s for v in result["verdicts"]) for s in STATUSES}
    unexplained = sum(not v["explained"] for v in result["verdicts"])
    if "harness" in g:
        print(f"\n{g['peer']} {g.get('version', '?')} ({g.get('vendors')}) from {g.get('file', '?')}, through "
              f"mlaref's harness")
    else:
        print(f"\nlibggml {g.get('version', '?')} ({g.get('commit', '?')}) from {g.get('file', '?')}")
    b = g.get("build") or {}
    if b:
        print(f"build {b['name']} (compiled with {' '.join(b['features']) or 'the x86-64 baseline'}): vec_dot plan "
              f"{b['vec_dot_plan']}, v_expf {b['simd']}; " + (f"verified on {b['verified']}" if b["verified"]
                                                                else "this plan is inferred, not yet run bit for bit"))
    if "harness" not in g and g.get("version") != g.get("header_version"):
        print(f"warning: the library is version {g.get('version')}, ggml-python's header is "
              f"{g.get('header_version')}: struct layouts may differ", file=sys.stderr)
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {unexplained} unexplained")
    return unexplained
