"""``mlaref bench peers``: mlaref's kernels against ik_llama.cpp and upstream ggml 0.25.3, through the peer harness.

Each peer's library is loaded in a child process of its own (two ``libggml.so`` cannot share one process), which
builds the op's graph once over the same input bytes (:meth:`mlaref.codegen.peers.harness.Graph.prepare`) and then
answers one request per timed call: it runs the graph (a plan, then ``ggml_graph_compute``; the harness keeps
the work buffer between calls) and returns the seconds it took,
measured in the child around that call alone (:class:`RemoteGraph`; its :meth:`RemoteGraph.of_graph` builds a
whole IR graph the same way, for ``mlaref bench mla --backend arena``). mlaref's kernel runs in this process,
timed around the Python call (argument checks and thread start included). The contenders alternate call by call
in the rounds of :func:`mlaref.codegen.bench.method.round_orders`, after a warm-up; medians are reported, with each
peer's ratio ``peer seconds / mlaref seconds`` (above 1: mlaref is faster) and the NMSE of mlaref's result against
the peer's.

Cases (the FlashMLA-2 prompt shapes of DeepSeek-V2-Lite):

* ``mul_mat W x C``, the K/V build ``wkv_b [512, 4096]`` of type W times a view of the latent cache of type C
  (``[512 of 576, n_kv]``): ``f16 x f16``, ``q8_0 x q8_0`` (a q8_0 cache, already q8_0's vec_dot type), and #253's
  own ``q8_0 x f16`` and ``iq4_nl x f16`` (a non-f32 src1 that is not the vec_dot type: converted row by row).
  Upstream ggml's CPU back-end refuses those two (its ``supports_op``), so the row says "unsupported" for it;
* ``fa f16`` and ``fa q8_0``: flash attention with 16 heads, 512 queries, Dk 192 / Dv 128, K/V of that type of
  ``n_kv`` cells, under the prompt's causal mask (column 0 always open), K.Q in this CPU's native dot order
  (``fastest_fa_plan``: l8s1 dots on AVX2, printed as the plan name);
* ``fa f16 576/512``: mla = 3's absorbed attention, 16 query heads over one K/V head of the 576-wide latent (V its
  512 columns, here a tensor of its own), 128 queries.

A peer whose back-end refuses a case is asked nothing more (:class:`PeerUnsupported`); the others are timed.
GFLOP/s count 2 flops per multiply-add of the math. The FMA loop of :mod:`mlaref.codegen.bench.peak` runs in the
rounds as one more contender (:func:`~mlaref.codegen.bench.peak.fma_yardstick`, about 50 ms a run), so ``peak``
(``peak_gflops``) is the median FMA rate at the row's thread count in the same minutes and by the same statistic
as the contenders, and each contender's ``_peak_frac`` its GFLOP/s over it: on a VM whose speed drifts from
minute to minute this fraction drifts with neither. ``peak_best_gflops`` is the best of 5 tries just before the
rounds (:func:`~mlaref.codegen.bench.peak.fma_peak`, what ``mlaref info`` prints), kept for comparison. Nothing here asserts a speed: the ratios are printed and
stored (``--json``) with the machine's processor.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import subprocess
import sys
import time

import numpy as np

from mlaref.codegen.bench import method as _bench
from mlaref.codegen.bench import peak as _peak
from mlaref.codegen.kernels import mm as _km
from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import harness, harness_graph
from mlaref.reference import compare
from mlaref.reference.tensor import Tensor

__all__ = ["PEERS", "CASES", "RemoteGraph", "PeerUnsupported", "bench_peers", "format_table", "configure", "run"]

PEERS = ("ik-llama-cpp-python", "llama-cpp-python")
CASES = ("mul_mat f16 x f16", "mul_mat q8_0 x q8_0", "mul_mat q8_0 x f16", "mul_mat iq4_nl x f16", "fa f16",
         "fa q8_0", "fa f16 576/512")

_CHILD = r"""
import importlib, pickle, struct, sys, time
from mlaref.codegen.peers import harness
harness.load(sys.argv[1])
setup = pickle.load(sys.stdin.buffer)
mod, fn = setup["build"].split(":")
prepared = getattr(importlib.import_module(mod), fn)(**setup["kwargs"])
out = sys.stdout.buffer
if isinstance(prepared, str):
    out.write(b"unsupported " + prepared.encode() + b"\n"); out.flush()
    sys.exit(0)
out.write(b"ready\n"); out.flush()
while True:
    cmd = sys.stdin.buffer.read(1)
    if cmd == b"c":
        nth = struct.unpack("<i", sys.stdin.buffer.read(4))[0]
        t0 = time.perf_counter()
        prepared.compute(nth)
        out.write(struct.pack("<d", time.perf_counter() - t0)); out.flush()
    elif cmd == b"p":
        nth = struct.unpack("<i", sys.stdin.buffer.read(4))[0]
        blob = pickle.dumps(prepared.profile(nth))
        out.write(struct.pack("<q", len(blob)) + blob); out.flush()
    elif cmd == b"r":
        res = prepared.outputs()
        blob = pickle.dumps(list(res.values()) if isinstance(res, dict) else res)
        out.write(struct.pack("<q", len(blob)) + blob); out.flush()
    else:
        prepared.free()
        break
"""


def op_graph(inputs, op: str, ip=(), fp=()) -> harness.Prepared | str:
    """In the child: one harness op over ``inputs`` (mlaref Tensors), built once on the loaded peer; or, where the
    peer's CPU back-end does not support the op over these types (its ``supports_op``), the reason as a string."""
    g = harness.loaded().graph()
    ids = [g.input(t) for t in inputs]
    node = g.op(op, *ids, ip=ip, fp=fp)
    if not g.supports(node):
        return (f"its CPU back-end's supports_op refuses {op} over "
                + " x ".join(t.type for t in inputs if t is not None))
    return g.prepare([node])


def ir_graph(g, values: dict, keep=(), mem_bytes: int | None = None):
    """In the child: an IR graph (an MLAGraph) over ``values`` (``weights``, ``kv_cache``, ``inputs`` as
    :func:`mlaref.codegen.peers.harness_graph.run_graph` takes them), built once on the loaded peer."""
    return harness_graph.prepare_graph(g, **values, keep=keep, mem_bytes=mem_bytes)


class PeerUnsupported(harness.HarnessError):
    """The peer cannot run the case: its CPU back-end refuses the op over these types (nothing was timed);
    ``reason`` says so without the peer's name."""

    def __init__(self, peer: str, reason: str):
        super().__init__(f"{peer}: {reason}")
        self.reason = reason


class RemoteGraph:
    """A peer's graph, built once in a child process of its own over copies of the given data; ``compute(n_threads)``
    runs the graph there (``mh_graph_compute``) and returns the seconds measured in the child around that call;
    ``results()`` are its outputs as mlaref Tensors (``result()``: the first), read back after the last compute.

    ``RemoteGraph(peer, op, inputs, ip=, fp=)`` is one harness op over ``inputs``; :meth:`of_graph` is an IR graph
    (the K/V build and attention of an MLA layer, say), built by :func:`mlaref.codegen.peers.harness_graph.
    prepare_graph` with its outputs named in ``names``."""

    def __init__(self, peer: str, op: str | None = None, inputs=(), *, ip=(), fp=(), level: str = "native",
                 _build: tuple | None = None):
        if _build is None:
            _build = ("mlaref.codegen.bench.peers:op_graph",
                      {"inputs": list(inputs), "op": op, "ip": tuple(ip), "fp": tuple(fp)})
        path = str(harness.ensure(peer, level))
        env = dict(os.environ, GGML_NO_BACKTRACE="1")
        self.peer, self.names = peer, None
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            self.proc.stdin.write(pickle.dumps({"build": _build[0], "kwargs": _build[1]}))
            self.proc.stdin.flush()
        except OSError:
            pass  # the child died at once: its stderr says why, below
        line = self.proc.stdout.readline()
        if line.startswith(b"unsupported "):
            self.proc.wait(10)
            raise PeerUnsupported(peer, line[len(b"unsupported "):].decode().strip())
        if line != b"ready\n":
            raise harness.HarnessError(f"{peer}: the benchmark child did not start: " + self._stderr())

    @classmethod
    def of_graph(cls, peer: str, g, values: dict, *, keep=(), level: str = "native",
                 mem_bytes: int | None = None) -> RemoteGraph:
        """``g`` (an MLAGraph) over ``values`` on ``peer``; the outputs are the tensors named in ``keep`` and the
        graph's output, in that order (``names``)."""
        self = cls(peer, level=level, _build=("mlaref.codegen.bench.peers:ir_graph",
                                              {"g": g, "values": values, "keep": tuple(keep),
                                               "mem_bytes": mem_bytes}))
        self.names = list(dict.fromkeys([*keep, *([g.output.name] if g.output is not None else [])]))
        return self

    def _stderr(self) -> str:
        self.proc.kill()
        return " | ".join(self.proc.stderr.read().decode(errors="replace").strip().splitlines()[-3:])

    def _read(self, n: int) -> bytes:
        data = self.proc.stdout.read(n)
        if len(data) != n:
            raise harness.HarnessError(f"{self.peer}: the benchmark child died: " + self._stderr())
        return data

    def _send(self, cmd: bytes) -> None:
        try:
            self.proc.stdin.write(cmd)
            self.proc.stdin.flush()
        except OSError:
            raise harness.HarnessError(f"{self.peer}: the benchmark child died: " + self._stderr()) from None

    def compute(self, n_threads: int) -> float:
        self._send(b"c" + struct.pack("<i", int(n_threads)))
        return struct.unpack("<d", self._read(8))[0]

    def profile(self, n_threads: int) -> list[tuple[str, str, float]]:
        """An IR graph's profile in the child: every node of the peer's graph computed alone
        (:meth:`mlaref.codegen.peers.harness_graph.PreparedGraph.profile`), ``[(IR name, IR op, seconds), ...]``."""
        self.proc.stdin.write(b"p" + struct.pack("<i", int(n_threads)))
        self.proc.stdin.flush()
        (n,) = struct.unpack("<q", self._read(8))
        return pickle.loads(self._read(n))

    def results(self) -> list[Tensor]:
        """The outputs after the last compute, in the graph's order (an IR graph's: ``names``)."""
        self._send(b"r")
        (n,) = struct.unpack("<q", self._read(8))
        return pickle.loads(self._read(n))

    def result(self) -> Tensor:
        return self.results()[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"q")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _rows(rng, type: str, rows: int, n: int, row_len: int | None = None, scale: float = 1.0) -> Tensor:
    """``rows`` rows of ``n`` values of ``type`` (a view of the first ``n`` of ``row_len`` when given)."""
    width = row_len or n
    full = Tensor.from_numpy((rng.standard_normal((rows, width)) * scale).astype(np.float32), type)
    return full if width == n else full.view((n, rows), (full.nb[1],), 0)


# (weight type, cache type) of each mul_mat case: wkv_b [512, 4096] times the cache view [512 of 576, n_kv]
_MM = {"mul_mat f16 x f16": ("f16", "f16"), "mul_mat q8_0 x q8_0": ("q8_0", "q8_0"),
       "mul_mat q8_0 x f16": ("q8_0", "f16"), "mul_mat iq4_nl x f16": ("iq4_nl", "f16")}
# (K/V type, Dk, Dv, K/V heads, queries) of each attention case; Q has 16 heads
_FA = {"fa f16": ("f16", 192, 128, 16, 512), "fa q8_0": ("q8_0", 192, 128, 16, 512),
       "fa f16 576/512": ("f16", 576, 512, 1, 128)}


def _inputs(case: str, n_kv: int, rng):
    """(inputs, harness op, float params, flops, mlaref call, mlaref plan name) of one case. mul_mat runs this
    CPU's native plan (:func:`mlaref.codegen.kernels.mm.fastest_plan`: mlaref_l8s1 on AVX2, l16a1 on AVX-512),
    flash attention its K.Q dots (:func:`mlaref.codegen.kernels.mm.fastest_fa_plan`)."""
    if case in _MM:
        wt, ct = _MM[case]
        w, cache = _rows(rng, wt, 4096, 512, scale=0.05), _rows(rng, ct, n_kv, 512, row_len=576)
        # the result goes to one buffer allocated (and zeroed, so its pages exist) here, as the peers' graphs
        # write theirs: a fresh 16-64 MB output per call would add its page faults (5-8 % of the call) to
        # mlaref's time alone
        out = Tensor.zeros("f32", (4096, n_kv, 1, 1))
        plan = _km.fastest_plan()
        return ([w, cache], "mul_mat", (), 2.0 * 512 * 4096 * n_kv,
                lambda nt: _km.mul_mat(w, cache, plan=plan, n_threads=nt, out=out), plan.name)
    if case in _FA:
        kvt, dk, dv, nkh, nq = _FA[case]
        nh = 16
        q = Tensor.from_numpy((rng.standard_normal((1, nh, nq, dk)) * 0.5).astype(np.float32))
        k = Tensor.from_numpy(rng.standard_normal((1, nkh, n_kv, dk)).astype(np.float32), kvt)
        v = Tensor.from_numpy(rng.standard_normal((1, nkh, n_kv, dv)).astype(np.float32), kvt)
        j, i = np.meshgrid(np.arange(n_kv), np.arange(nq))
        causal = np.where(j > n_kv - nq + i, -np.inf, 0).astype(np.float32)
        causal[:, 0] = 0  # no fully masked row when n_kv < n_q (ik asserts a positive softmax sum)
        mask = Tensor.from_numpy(causal, "f16")
        scale = 1.0 / math.sqrt(dk)
        plan = _km.fastest_fa_plan(k_step=64, kv_chunks=1, exp="v_expf_avx2")
        flops = 2.0 * nh * nq * n_kv * (dk + dv)
        return ([q, k, v, mask], "flash_attn_ext", (scale, 0.0, 0.0), flops,
                lambda nt: _km.flash_attn_ext(q, k, v, mask, scale, plan=plan, n_threads=nt), plan.name)
    raise ValueError(f"bench_peers: unknown case {case!r}; known: {', '.join(CASES)}")


_FMA = "fma loop"  # the yardstick's name among the contenders of a row's rounds


def bench_peers(*, cases=CASES, n_kvs=(1024, 4096), threads=(1, 2), peers=PEERS, repeats: int = 5,
                warmup: int = 1, seed: int = 0) -> dict:
    """Median seconds of mlaref's kernel and of each peer per (case, n_kv, threads); see the module docstring."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"bench_peers: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for p in peers:
        peer_build.peer_spec(p)
    rng = np.random.default_rng(seed)
    rows = []
    for case in cases:
        for n_kv in n_kvs:
            inputs, op, fp, flops, ours, plan_name = _inputs(case, n_kv, rng)
            remotes, unsupported = {}, {}
            try:
                for p in peers:
                    try:
                        remotes[p] = RemoteGraph(p, op, inputs, fp=fp)
                    except PeerUnsupported as exc:
                        unsupported[p] = exc.reason
                for nt in threads:
                    box = {}

                    def mine(nt=nt):
                        t0 = time.perf_counter()
                        box["out"] = ours(nt)
                        return time.perf_counter() - t0

                    fns = {"mlaref": mine, **{p: (lambda r=r, nt=nt: r.compute(nt)) for p, r in remotes.items()}}
                    for fn in fns.values():
                        for _ in range(warmup):
                            fn()
                    best = _peak.fma_peak(nt)
                    stick = _peak.fma_yardstick(nt)
                    timed = {**fns, **({_FMA: stick[0]} if stick else {})}
                    secs = {n: [] for n in timed}
                    for order in _bench.round_orders(timed, repeats):
                        for name in order:
                            secs[name].append(timed[name]())
                    pk = stick[1](_bench.Timing(tuple(secs.pop(_FMA)), warmup).median) if stick else None
                    row = {"case": case, "n_kv": n_kv, "threads": nt, "gflop": flops * 1e-9, "mlaref_plan": plan_name,
                           "peak_gflops": pk, "peak_best_gflops": best["gflops"] if best else None}
                    for name, v in secs.items():
                        t = _bench.Timing(tuple(v), warmup)
                        row[f"{name}_s"], row[f"{name}_gflops"] = t.median, flops / t.median * 1e-9
                        row[f"{name}_peak_frac"] = row[f"{name}_gflops"] / pk if pk else None
                    for p, r in remotes.items():
                        row[f"{p}_ratio"] = row[f"{p}_s"] / row["mlaref_s"]
                        row[f"{p}_nmse"] = compare.nmse(box["out"].to_numpy(), r.result().to_numpy())
                    for p, why in unsupported.items():
                        row[f"{p}_unsupported"] = why
                    rows.append(row)
            finally:
                for r in remotes.values():
                    r.close()
    return {"benchmark": "mlaref kernels vs peers", "environment": _bench.environment(), "peers": list(peers),
            "rows": rows}


def format_table(result: dict) -> str:
    """Median seconds and GFLOP/s per contender, the fraction of the FMA peak (``%pk``); ``x`` = the peer's
    seconds over mlaref's, i.e. mlaref's speed over the peer's (> 1: mlaref faster)."""
    peers = result["peers"]
    pw = max([len("mlaref plan")] + [len(r.get("mlaref_plan", "-")) for r in result["rows"]])
    head = (f"{'case':<20} {'n_kv':>6} {'thr':>3} {'peak':>6} | {'mlaref plan':<{pw}} {'mlaref s':>8} {'GF/s':>6} "
            f"{'%pk':>4}")
    for p in peers:
        head += f" | {p[:22]:>22} {'GF/s':>6} {'%pk':>4} {'x':>5} {'nmse':>7}"
    lines = [f"{result['benchmark']} on {result['environment'].get('processor', '?')}", head]

    def pct(v):
        return f"{100 * v:>4.0f}" if v is not None else f"{'-':>4}"

    for r in result["rows"]:
        pk = r.get("peak_gflops")
        line = (f"{r['case']:<20} {r['n_kv']:>6} {r['threads']:>3} {pk if pk is None else round(pk):>6} | "
                f"{r.get('mlaref_plan', '-'):<{pw}} {r['mlaref_s']:>8.4f} {r['mlaref_gflops']:>6.1f} "
                f"{pct(r.get('mlaref_peak_frac'))}")
        for p in peers:
            if p + "_unsupported" in r:
                line += f" | {'unsupported':>22} {'-':>6} {'-':>4} {'-':>5} {'-':>7}"
                continue
            line += (f" | {r[p + '_s']:>22.4f} {r[p + '_gflops']:>6.1f} {pct(r.get(p + '_peak_frac'))} "
                     f"{r[p + '_ratio']:>5.2f} {r[p + '_nmse']:>7.1e}")
        lines.append(line)
    lines.append("x: the peer's median seconds over mlaref's (mlaref's speed relative to the peer; > 1: mlaref "
                 "faster). peak: the FMA loop's median GFLOP/s at that thread count, timed in the row's rounds.")
    why = {f"{p}: {r[p + '_unsupported']}" for r in result["rows"] for p in peers if p + "_unsupported" in r}
    lines.extend(f"unsupported: {w}" for w in sorted(why))
    return "\n".join(lines)


def configure(p) -> None:
    p.add_argument("--cases", nargs="+", default=list(CASES), metavar="CASE", help=f"of: {', '.join(CASES)}")
    p.add_argument("--n-kv", type=int, nargs="+", default=[1024, 4096], metavar="N", help="KV lengths")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N", help="thread counts")
    p.add_argument("--peers", nargs="+", default=list(PEERS), metavar="PEER", help=f"of: {', '.join(PEERS)}")
    p.add_argument("--repeats", type=int, default=5, metavar="N", help="timed rounds (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the machine-readable result to FILE")


def run(args) -> int:
    try:
        result = bench_peers(cases=args.cases, n_kvs=tuple(args.n_kv), threads=tuple(args.threads),
                             peers=tuple(args.peers), repeats=args.repeats)
    except (ValueError, harness.HarnessError, peer_build.PeerBuildError) as exc:
        print(f"mlaref bench peers: {exc}", file=sys.stderr)
        return 2
    _bench.print_and_save(format_table(result), result, args.json)
    return 0
