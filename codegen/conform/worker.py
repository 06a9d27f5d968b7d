"""The conformance run: every case in a worker process, so a crash in the library costs only that case.

Every case runs in a worker process (``python -m mlaref.codegen.conform --worker``) that reads cases from stdin
and writes one JSON line per result: a crash in the library kills only that worker, the parent reports the case
``aborted`` and starts a new worker for the next one. Each case has a time limit (``timeout``).

Which library the workers load: ggml-python loads ``lib/libggml.so`` (with ``libggml-base.so`` and
``libggml-cpu.so`` beside it) from its package directory and has no environment variable to point it elsewhere
(``ggml/ggml.py: load_shared_library``). For another build (``lib_path``) the run makes a copy of the ggml-python
package in a temporary directory whose ``lib`` entries link to the given build's libraries
(:func:`mlaref.codegen.peers.build.make_shim`), and the workers import ``ggml`` from there. The worker reports
``ggml_version()`` / ``ggml_commit()`` of the library loaded and its :class:`~mlaref.reference.builds.GgmlBuild`.
With ``harness`` (any peer, :mod:`mlaref.codegen.peers.harness`) the workers load that harness library instead
(``MLAREF_CONFORM_HARNESS``) and reach the peer through it (:mod:`.peer`).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlaref.codegen.conform import peer as _peer
from mlaref.codegen.conform.case import Case
from mlaref.codegen.conform.inputs import make_inputs
from mlaref.codegen.conform.ops import OPS
from mlaref.codegen.conform.outputs import Unsupported
from mlaref.codegen.conform.verdict import compare, verdict_for
from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers.harness import LayoutMismatch, WrotePastTensor

DEFAULT_TIMEOUT = 60.0


def _run_in_worker(case: Case) -> dict:
    """Compute one case in this process; the verdict fields (never raises for a case the spec or ggml refuses).

    An op returns ``(spec, lib)``, ``(spec, lib, remark)`` or ``(spec, lib, remark, override)``: the remark (how the
    library side was reached) is appended to the verdict text in brackets; ``override`` (``{"expect": "nmse",
    "bound": b}``) compares within an NMSE bound where the remark names a library path the spec does not model."""
    t0 = time.perf_counter()
    try:
        inputs = make_inputs(case.inputs)
        spec, lib, *rest = OPS[case.op](case.params, inputs)
        remark = rest[0] if rest else ""
        override = rest[1] if len(rest) > 1 else {}  # the library runs a path the spec does not model
        res = compare(spec, lib, override.get("expect", case.expect), override.get("bound", case.nmse_bound))
        if remark:
            res["text"] += f" [{remark}]"
    except Unsupported as exc:
        res = {"status": "unsupported", "text": f"unsupported ({exc})", "nmse": None}
    except LayoutMismatch as exc:  # checked before any pointer reaches the peer
        res = {"status": "unsupported", "text": f"unsupported (another block layout: {exc})", "nmse": None}
    except WrotePastTensor as exc:  # the harness's guard bytes after a tensor changed
        res = {"status": "aborted", "text": f"aborted ({exc})", "nmse": None}
    res["seconds"] = round(time.perf_counter() - t0, 4)
    return res


def _shim_package(lib_path: str) -> str:
    """A temporary copy of the ggml-python package whose ``lib/`` links to another build's libraries."""
    p = Path(lib_path).expanduser().resolve()
    lib_dir = p if p.is_dir() else p.parent
    if not (lib_dir / "libggml.so").exists():
        raise FileNotFoundError(f"--lib {lib_path}: no libggml.so in {lib_dir}")
    return str(peer_build.make_shim(lib_dir))


def worker_main(argv=None) -> int:
    """The worker loop: one JSON case per stdin line -> one JSON result line on the protocol stream."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the C library prints goes to stderr, never into the protocol
    shim = os.environ.get("MLAREF_CONFORM_SHIM")
    if shim:
        sys.path.insert(0, shim)
    info = {"ready": True}
    ok, why = _peer.available()
    if ok:
        info["ggml"] = _peer.info()
    else:
        info["error"] = why
    proto.write(json.dumps(info) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        case = Case.from_json(json.loads(line))
        print(f"mlaref-conform: case {case.id}", file=sys.stderr, flush=True)
        proto.write(json.dumps(_run_in_worker(case)) + "\n")
    return 0


class Worker:
    """A worker process (``python -m mlaref.codegen.conform --worker``) and its protocol pipe."""

    def __init__(self, shim: str | None = None, harness: str | None = None):
        env = dict(os.environ, GGML_NO_BACKTRACE="1", PYTHONUNBUFFERED="1")  # no gdb attach on GGML_ABORT
        env.pop("MLAREF_CONFORM_SHIM", None)
        env.pop(_peer.ENV, None)
        if shim:
            env["MLAREF_CONFORM_SHIM"] = shim
        if harness:
            env[_peer.ENV] = harness
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "mlaref.codegen.conform", "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=env, text=True, bufsize=1)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.info = self._read(120.0)
        if self.info is None or not self.info.get("ready"):
            raise RuntimeError(f"conform worker did not start: {self._stderr_tail(0)}")

    def _read(self, timeout: float):
        if not self.sel.select(timeout):
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def _stderr_tail(self, start: int) -> str:
        self.stderr.seek(start)
        lines = [ln.strip() for ln in self.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("mlaref-conform: case")]
        # ggml's messages carry the build's absolute source path: keep it from the source tree on
        return re.sub(r"\S*/(ggml/src/)", r"\1", lines[-1])[:300] if lines else ""

    def run(self, case: Case, timeout: float) -> dict:
        """The verdict fields of ``case``; ``{"died": ...}`` if the worker died or timed out (it is then dead)."""
        self.stderr.seek(0, os.SEEK_END)
        start = self.stderr.tell()
        t0 = time.perf_counter()
        try:
            self.proc.stdin.write(json.dumps(case.to_json()) + "\n")
            self.proc.stdin.flush()
            res = self._read(timeout)
        except (BrokenPipeError, OSError, json.JSONDecodeError):
            res = None
        if res is not None:
            return res
        try:  # EOF arrives a moment before the exit status: give a dying worker time to be reaped
            rc = self.proc.wait(5 if time.perf_counter() - t0 < timeout else 0.01)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            self.proc.kill()
            rc = self.proc.wait()
        if timed_out:
            why = f"timeout after {timeout:g} s"
        elif rc < 0:
            why = signal.Signals(-rc).name
        else:
            why = f"worker exited with status {rc}"
        tail = self._stderr_tail(start)
        return {"died": why + (f": {tail}" if tail else ""), "seconds": round(time.perf_counter() - t0, 4)}

    def close(self) -> None:
        """End the worker (EOF on its stdin; killed after 10 s) and release its pipes and stderr file."""
        try:
            self.proc.stdin.close()
        except OSError:  # the worker died with data still buffered for it
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sel.close()
        self.proc.stdout.close()
        self.stderr.close()


def run_cases(cases, *, lib_path: str | None = None, harness: str | None = None, timeout: float = DEFAULT_TIMEOUT,
              progress=None) -> dict:
    """Run ``cases`` in workers; returns ``{"ggml": library info, "verdicts": [...]}`` in case order. ``lib_path``:
    another build for ggml-python's bindings; ``harness``: a peer's harness library (any peer) instead."""
    if lib_path and harness:
        raise ValueError("run_cases: give lib_path (ggml-python's bindings) or harness, not both")
    verdicts = []
    worker = None
    info = {}
    shim = _shim_package(lib_path) if lib_path else None
    try:
        for case in cases:
            if worker is None:
                worker = Worker(shim, harness)
                info = worker.info.get("ggml", info)
                if "error" in worker.info:
                    raise RuntimeError(f"mlaref conform: the library cannot be loaded: {worker.info['error']}")
            res = worker.run(case, timeout)
            if "died" in res:
                worker.close()
                worker = None
            v = verdict_for(case, res)
            verdicts.append(v)
            if progress:
                progress(v)
    finally:
        if worker is not None:
            worker.close()
        if shim:
            shutil.rmtree(shim, ignore_errors=True)
    return {"ggml": info, "verdicts": verdicts}
