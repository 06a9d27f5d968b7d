"""The arena executor: a graph run on generated kernels, every tensor at the allocator model's offset in one buffer.

What ``Arena(g, weights=..., kv_cache=..., inputs=...)`` prepares, once (as ``ggml_gallocr_alloc_graph`` and
``ggml_graph_plan`` do before a compute, ggml-alloc.c / ggml.c@676f0e71b):

* **buffers**: one 64-byte-aligned compute buffer of the plan's size (:mod:`mlaref.codegen.arena.plan`: the
  allocator model's ``max_size`` + 32), one for the weights and one for the KV cache (llama.cpp keeps the model
  and the cache in buffers of their own, each tensor at a 32-byte-aligned offset); the weights and the cache are
  encoded and copied in here, the inputs into staging buffers;
* **tensors**: every IR tensor bound to its bytes: an allocated tensor at its offset, a view at its base's
  address plus ``view_offs`` with the view's own ``ne``/``nb``;
* **jobs**: every node lowered to pool jobs of its kernel (:mod:`mlaref.codegen.arena.lower`), in graph order,
  after one step per input copying it from staging into its place (the allocator may reuse an input's bytes
  once its last reader ran, so inputs are set before every compute, as ``llama_set_inputs`` does).

:meth:`Arena.run` is then one cffi call (``mla_pool_run_steps``): the steps in order, each over ``n_threads``
C threads, nothing allocated, no NumPy; afterwards the jobs' result words are read (a kernel's scratch
allocation failure, or flash attention's fully masked rows, raise). :meth:`Arena.run_checked` runs node by node
and checks the plan on the way: the whole compute buffer is first filled with the ``poison`` byte (0xFF: a NaN
in f32, f16 and a q8_0 scale), after each node every tensor the allocator frees there is poisoned, and every
tensor still alive must keep the bytes it had when it was written (a CRC per tensor), so a plan that lets a node
write over a live tensor raises :class:`~mlaref.codegen.arena.plan.PlanError` naming both, and a read of freed
memory shows up as NaN in the output. :func:`~mlaref.codegen.arena.plan.check_placement` checks the same
statically when the arena is built (``validate=False`` leaves that to the checking run).

Profiles (:meth:`Arena.profile_steps`, :meth:`Arena.profile`, :meth:`Arena.profile_ops`,
:meth:`Arena.profile_busy`) run the same steps through ``mla_pool_run_steps_timed``: one C call per compute with
the clock read after each step and each job's own time kept, so no Python runs between the timed steps.
"""

from __future__ import annotations

import zlib

import numpy as np

from mlaref.codegen.arena import lower as _lower
from mlaref.codegen.arena import plan as _plan
from mlaref.codegen.kernels import mm as _mm
from mlaref.codegen.kernels import pool as _pool
from mlaref.reference.graphs.executor import VIEW_OPS, bind_leaves, leaf_values
from mlaref.reference.tensor import Tensor, aligned_buffer

__all__ = ["Arena", "DEFAULT_OPTIONS", "POISON"]

POISON = 0xFF
# The plans the kernels implement (the reference executor needs the same options to give the same bytes).
DEFAULT_OPTIONS = {"MUL_MAT": {"plan": _mm.MM_PLAN}, "FLASH_ATTN_EXT": {"plan": _mm.FA_PLAN},
                   "FLASH_ATTN_EXT_PARTIAL": {"plan": _mm.FA_PLAN}}


class Arena:
    """One graph prepared for repeated runs in preallocated buffers (see the module docstring).

    ``g``: an :class:`~mlaref.reference.graphs.deepseek2.MLAGraph` (its ``graph``, ``weights``, ``kv_cache``,
    ``inputs``); ``weights`` / ``kv_cache`` / ``inputs``: values as for
    :func:`~mlaref.reference.graphs.executor.run_graph`. ``placement``: a
    :class:`~mlaref.codegen.arena.plan.Placement` (default: the allocator model's); ``validate``: check it
    statically first. ``n_threads``, ``isa``: passed to every kernel; ``options``: plans per op (default
    :data:`DEFAULT_OPTIONS`).
    """

    def __init__(self, g, *, weights: dict, kv_cache: list, inputs: dict, n_threads: int = 1,
                 isa: str | None = None, options: dict | None = None, placement=None, validate: bool = True):
        if isinstance(n_threads, bool) or not isinstance(n_threads, int) or not 1 <= n_threads <= _pool.MAX_JOBS:
            raise ValueError(f"n_threads must be an int in 1..{_pool.MAX_JOBS}, got {n_threads!r}")
        self.g, self.graph, self.n_threads = g, g.graph, n_threads
        self.plan = placement if placement is not None else _plan.placement(self.graph)
        if validate:
            _plan.check_placement(self.plan)
        self.compute = aligned_buffer(self.plan.size)
        self.compute[...] = 0
        values = leaf_values(g, weights, kv_cache, inputs)
        self._bind_external(values)
        self._bind_inputs(values)
        self.tensors: dict[int, Tensor] = {}
        self._lower_nodes(isa, {**DEFAULT_OPTIONS, **(options or {})})
        self._runner = _pool.steps_runner(self.jobs, self.n_per_step)
        self._words = self.jobs[:, _pool.WORDS - 1]

    # -- preparation ---------------------------------------------------------------------------------------
    def _bind_external(self, values) -> None:
        """The weights and the KV cache, each group in one buffer at 32-byte-aligned offsets (llama.cpp's model
        and cache buffers); ``self.external[id(leaf)]`` is the Tensor over those bytes (one per name: the chunked
        graph has a wkv_b leaf per chunk)."""
        self._encoded = bind_leaves(self.graph, values)  # id(leaf) -> the leaf's encoded bytes, by name
        cache_names = {t.name for t in self.g.kv_cache}
        leaves = [t for t in self.graph.leafs if t.view_src is None and t.external]
        groups = {"weights": {}, "kv_cache": {}}
        for t in leaves:
            groups["kv_cache" if t.name in cache_names else "weights"].setdefault(t.name, t)
        self.buffers, self.external, by_name = {}, {}, {}
        for group, ts in groups.items():
            offs, size = {}, 0
            for name, t in ts.items():
                offs[name] = size
                size += _plan.aligned(t.nbytes)
            buf = aligned_buffer(max(size, 1))
            for name, t in ts.items():
                src = self._encoded[id(t)]
                buf[offs[name]: offs[name] + t.nbytes] = src.data[src.offset: src.offset + t.nbytes]
                by_name[name] = Tensor(t.type, t.ne, t.nb, buf, offs[name], name)
            self.buffers[group] = buf
        for t in leaves:
            self.external[id(t)] = by_name[t.name]

    def _bind_inputs(self, values) -> None:
        """Staging copies of the inputs' bytes (copied into the compute buffer by the first steps of a run)."""
        self.staging = {}
        for t in self.graph.leafs:
            if t.view_src is None and not t.external and id(t) not in self.staging:
                src = self._encoded[id(t)]
                stage = aligned_buffer(t.nbytes)
                stage[...] = src.data[src.offset: src.offset + t.nbytes]
                self.staging[id(t)] = stage
        del self._encoded

    def _tensor(self, t) -> Tensor:
        """The Tensor over ``t``'s bytes: its base's buffer at the plan's offset (or the external buffer)."""
        hit = self.tensors.get(id(t))
        if hit is not None:
            return hit
        where, at = self.plan.where(t)
        if where == "external":
            base = self.external[id(at)]
            out = Tensor(t.type, t.ne, t.nb, base.data, base.offset + (t.view_offs if t.view_src is not None else 0),
                         t.name)
        else:
            out = Tensor(t.type, t.ne, t.nb, self.compute, at, t.name)
        self.tensors[id(t)] = out
        return out

    def _lower_nodes(self, isa, options) -> None:
        steps, checks, self.node_steps = [], [], []
        n = self.n_threads
        for t in self.graph.leafs:  # the inputs: staging -> their place, split over the threads
            if id(t) not in self.staging:
                continue
            dst, stage = self._tensor(t), self.staging[id(t)]
            base, size = _pool.address(dst.data) + dst.offset, t.nbytes
            parts = [(size * k // n, size * (k + 1) // n) for k in range(n)]
            steps.append([_pool.job("memcpy", 0, base + lo, _pool.address(stage) + lo, hi - lo)
                          for lo, hi in parts if hi > lo])
            checks.append(None)
        self.n_input_steps = len(steps)
        self.kernels = []
        for i, node in enumerate(self.graph.nodes):
            dst = self._tensor(node)
            srcs = [self._tensor(s) for s in node.src if s is not None and s is not node]
            low = _lower.lower(node, srcs, dst, n_threads=n, isa=isa, options=options)
            first = len(steps)
            for step in low.steps:
                if step:
                    steps.append(step)
                    checks.append(low.check)
            self.node_steps.append((first, len(steps)))
            if node.op not in VIEW_OPS:
                self.kernels.append((node.name, node.op, low.kernel))
        rows = [row for step in steps for row in step]
        self.jobs = _pool.jobs_array(rows) if rows else np.zeros((0, _pool.WORDS), np.int64)
        self.n_per_step = np.array([len(s) for s in steps], dtype=np.int32)
        self._row_check = [c for step, c in zip(steps, checks) for _ in step]

    # -- running ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        """One compute: the input copies and every node's kernels, in one C call (see the module docstring)."""
        rc = self._runner()
        if rc != 0:
            raise RuntimeError(f"arena: the pool refused step {-1 - rc}")
        if np.count_nonzero(self._words):
            self._raise_for_words()

    def _raise_for_words(self) -> None:
        words = self._words.tolist()
        mm = [w for w, c in zip(words, self._row_check) if c == "mul_mat"]
        if any(mm):
            raise MemoryError("arena: a mul_mat kernel could not allocate its scratch buffers")
        _mm.fa_check([w for w, c in zip(words, self._row_check) if c == "flash_attn"])

    def _step_runner(self, lo: int, hi: int):
        """A runner of steps ``lo .. hi`` (their job rows are a contiguous slice of ``self.jobs``), or None."""
        if hi <= lo:
            return None
        first = int(self.n_per_step[:lo].sum())
        count = int(self.n_per_step[lo:hi].sum())
        return _pool.steps_runner(self.jobs[first:first + count], self.n_per_step[lo:hi])

    def _run_range(self, lo: int, hi: int) -> None:
        runner = self._step_runner(lo, hi)
        if runner is not None and runner() != 0:
            raise RuntimeError(f"arena: the pool refused a step of {lo}..{hi}")

    def profile_steps(self, repeats: int = 3) -> np.ndarray:
        """Seconds of every step (the input copies first, then the nodes' steps in order) in ``repeats`` computes:
        an array ``[repeats, n_steps]``. Each compute is one C call (``mla_pool_run_steps_timed``: the calling
        thread reads the clock after every step, nothing else differs from :meth:`run`), so a step's time holds
        its hand-off to the workers and the wait for the slowest one, and no Python runs between steps."""
        return self._profile_runs(repeats)[0]

    def _profile_runs(self, repeats: int) -> tuple[np.ndarray, np.ndarray]:
        """``(step seconds [repeats, n_steps], job seconds [repeats, n_jobs])``: the timed runs of
        :meth:`profile_steps`, with each job's own time (its thread's work, left by the pool in the job's word
        ``WORDS - 2``)."""
        ns = np.zeros(self.n_per_step.size, dtype=np.int64)
        runner = _pool.steps_runner(self.jobs, self.n_per_step, ns)
        r = max(1, repeats)
        steps, jobs = np.zeros((r, ns.size)), np.zeros((r, self.jobs.shape[0]))
        for k in range(r):
            rc = runner()
            if rc != 0:
                raise RuntimeError(f"arena: the pool refused step {-1 - rc}")
            steps[k], jobs[k] = ns * 1e-9, self.jobs[:, _pool.WORDS - 2] * 1e-9
        if np.count_nonzero(self._words):
            self._raise_for_words()
        return steps, jobs

    def profile_busy(self, repeats: int = 3) -> dict[str, float]:
        """Per op kind (and ``"inputs"``), the threads' work over the time they were given: the sum of the jobs'
        own seconds over (jobs x step seconds), medians over ``repeats`` computes. 1.0: every thread worked the
        whole step; below: time spent handing over, or waiting for the slowest thread (an uneven split)."""
        steps, jobs = (np.median(a, axis=0) for a in self._profile_runs(repeats))
        ops = {n.name: n.op for n in self.graph.nodes}
        work: dict[str, float] = {}
        given: dict[str, float] = {}
        first = 0
        for owner, n, sec in zip(self.step_owners(), self.n_per_step.tolist(), steps.tolist()):
            kind = ops.get(owner, owner)
            work[kind] = work.get(kind, 0.0) + float(jobs[first:first + n].sum())
            given[kind] = given.get(kind, 0.0) + n * sec
            first += n
        return {k: work[k] / given[k] for k in work if given[k] > 0}

    def step_owners(self) -> list[str]:
        """The node name each step belongs to (``"inputs"`` for the input copies), in step order."""
        owners = ["inputs"] * self.n_input_steps
        for i, node in enumerate(self.graph.nodes):
            lo, hi = self.node_steps[i]
            owners += [node.name] * (hi - lo)
        return owners

    def profile(self, repeats: int = 3) -> dict[str, float]:
        """Median seconds per node (by name; ``"inputs"`` for the input copies) over ``repeats`` computes, from
        :meth:`profile_steps` (each compute one C call with a clock read after every step): where a run's time
        goes. Nodes without steps (views) are left out."""
        per_step = np.median(self.profile_steps(repeats), axis=0)
        out: dict[str, float] = {}
        for name, sec in zip(self.step_owners(), per_step.tolist()):
            out[name] = out.get(name, 0.0) + sec
        return out

    def profile_ops(self, repeats: int = 3) -> dict[str, float]:
        """:meth:`profile` summed per op kind (``MUL_MAT``, ``CPY``, ...; ``"inputs"``)."""
        ops = {n.name: n.op for n in self.graph.nodes}
        out: dict[str, float] = {}
        for name, sec in self.profile(repeats).items():
            kind = ops.get(name, name)
            out[kind] = out.get(kind, 0.0) + sec
        return out

    def step_overhead(self, calls: int = 200) -> float:
        """Seconds one empty step costs at this arena's thread count (``n_threads`` jobs copying 0 bytes): the
        hand-off and the wait every step of a run pays besides its work; median over ``calls`` steps run as one
        C call each."""
        src = np.zeros(64, np.uint8)
        a = _pool.address(src)
        jobs = _pool.jobs_array([_pool.job("memcpy", 0, a + 32, a, 0) for _ in range(self.n_threads)])
        ns = np.zeros(1, dtype=np.int64)
        runner = _pool.steps_runner(jobs, np.array([self.n_threads], np.int32), ns)
        secs = []
        for _ in range(max(1, calls)):
            runner()
            secs.append(int(ns[0]) * 1e-9)
        return float(np.median(secs))

    def run_checked(self, poison: int = POISON) -> None:
        """One compute node by node with the allocator check (see the module docstring): poison the buffer and
        every freed tensor, and raise :class:`~mlaref.codegen.arena.plan.PlanError` when a node changes the bytes
        of a tensor that is still alive."""
        if not 0 <= poison <= 255:
            raise ValueError(f"poison must be a byte value, got {poison!r}")
        self.compute[...] = poison
        self._run_range(0, self.n_input_steps)
        live: dict[int, int] = {}  # id -> CRC of the bytes written
        for t in self.graph.leafs:
            if id(t) in self.staging:
                live[id(t)] = self._crc(t)
        for i, node in enumerate(self.graph.nodes):
            self._run_range(*self.node_steps[i])
            for k, crc in live.items():
                if self._crc(self.plan.tensors[k]) != crc:
                    t = self.plan.tensors[k]
                    raise _plan.PlanError(f"node {node.name!r} ({node.op}) changed the bytes of {t.name!r}, which "
                                          f"is still alive (offsets {self.plan.offset[k]} and "
                                          f"{self.plan.where(node)[1] if node.view_src is None else '(a view)'})")
            if node.view_src is None and id(node) in self.plan.offset:
                live[id(node)] = self._crc(node)
            for t in self.plan.frees.get(i, ()):
                live.pop(id(t), None)
                lo = self.plan.offset[id(t)]
                self.compute[lo: lo + t.nbytes] = poison
        if np.count_nonzero(self._words):
            self._raise_for_words()

    def _crc(self, t) -> int:
        lo = self.plan.offset[id(t)]
        return zlib.crc32(memoryview(self.compute[lo: lo + t.nbytes]))

    # -- results ----------------------------------------------------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        """The Tensor over the bytes of the tensor called ``name`` (the first in graph order): a view into the
        arena, valid until the allocator reuses its bytes (the output and the tensors alive at the end stay)."""
        return self._tensor(self.graph.find(name))

    def output(self) -> Tensor:
        return self._tensor(self.g.output)
