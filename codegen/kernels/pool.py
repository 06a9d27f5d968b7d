"""Kernels on C threads: the pool of ``codegen/kernels/pool.c``, behind ``n_threads > 1`` of :mod:`mlaref.codegen.kernels`
and :mod:`mlaref.codegen.kernels.mm`.

A threaded call used to hand its parts to Python threads; on a 2-core machine the hand-off (a future, a lock,
waking a thread that must take the GIL) cost 50-200 us, more than a 64-row kernel call itself. Here the parts
go to C worker threads in one cffi call: the GIL is released for the call, the caller runs the first part,
idle workers spin briefly before they sleep, and nothing returns before every part is done.

A *job* is one row of an int64 array of ``WORDS`` columns, ``[kind, function address, arguments...]``, where
``kind`` (``KIND``) names the function's prototype and pointers are addresses. :func:`run` checks the array and
calls ``mla_pool_run``; the Python callers (kernels/rows.py, kernels/mm.py, bench/kernels.py) build the jobs from
arguments they have already validated. The module is compiled on first use into the kernel cache, keyed by its
source, flags and compiler (as the kernel modules are, :mod:`mlaref.codegen.build`).
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
from mlaref.codegen import build

__all__ = ["WORDS", "KIND", "MAX_JOBS", "run", "run_steps", "steps_runner", "job", "jobs_array", "f32_word", "address",
           "workers"]

SOURCE = pathlib.Path(__file__).resolve().parent / "pool.c"
WORDS = 40
MAX_JOBS = 256
KIND = {name: k for k, name in enumerate(
    ("quantize", "dequantize", "convert", "vec_dot", "copy", "concat", "memcpy", "from_float", "to_float",
     "ggml_vec_dot", "mul_mat", "flash_attn", "quantize_chunk", "ggml_quantize_chunk", "cast", "fa_merge"), start=1)}
# arguments each kind takes (pool.c's prototypes)
_ARGS = {"quantize": 6, "dequantize": 6, "convert": 7, "vec_dot": 9, "copy": 14, "concat": 18, "memcpy": 3,
         "from_float": 3, "to_float": 3, "ggml_vec_dot": 9, "mul_mat": 20, "flash_attn": 35, "quantize_chunk": 7,
         "ggml_quantize_chunk": 7, "cast": 12, "fa_merge": 7}
_CDEF = ("int mla_pool_run(int64_t *jobs, int n_jobs);\nint mla_pool_workers(void);\n"
         "int mla_pool_run_steps(int64_t *jobs, const int32_t *n_per_step, int n_steps);\n"
         "int mla_pool_run_steps_timed(int64_t *jobs, const int32_t *n_per_step, int n_steps, int64_t *ns);\n")


@functools.cache
def _module():
    return build.load_runtime("pool", SOURCE, _CDEF, libraries=["pthread"])


def address(a: np.ndarray) -> int:
    """The address of a NumPy array's first byte (its data pointer), for job arguments."""
    return a.__array_interface__["data"][0]


def job(kind: str, fn: int, *args: int) -> list[int]:
    """One job row: ``kind`` (a key of ``KIND``), the function's address and its arguments (ints, addresses, a
    float as :func:`f32_word`); the last word receives an int-returning function's result."""
    if len(args) != _ARGS[kind]:
        raise ValueError(f"pool job {kind!r}: takes {_ARGS[kind]} arguments, got {len(args)}")
    return [KIND[kind], fn, *args] + [0] * (WORDS - 2 - len(args))


def f32_word(x) -> int:
    """The job word of a float argument: its float32 bits."""
    return int(np.float32(x).view(np.uint32))


def jobs_array(rows: list[list[int]]) -> np.ndarray:
    """The job rows as the C-contiguous int64 array ``run`` takes (build it once to time calls alone)."""
    a = np.array(rows, dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != WORDS or not 1 <= a.shape[0] <= MAX_JOBS:
        raise ValueError(f"pool jobs: expected 1..{MAX_JOBS} rows of {WORDS} int64 words, got shape {a.shape}")
    return a


def run(jobs) -> np.ndarray:
    """Run the jobs, the first on this thread and the others on pool workers; return when all are done, with the
    result word of each job (the int an int-returning function gave, else 0)."""
    if not isinstance(jobs, np.ndarray):
        jobs = jobs_array(jobs)
    if (jobs.dtype != np.int64 or jobs.ndim != 2 or jobs.shape[1] != WORDS or not jobs.flags.c_contiguous
            or not jobs.flags.writeable or not 1 <= jobs.shape[0] <= MAX_JOBS):
        raise ValueError(f"pool jobs: expected a writeable C-contiguous int64 array of 1..{MAX_JOBS} rows of {WORDS} "
                         "words")
    mod = _module()
    if mod.lib.mla_pool_run(mod.ffi.from_buffer("int64_t[]", jobs), jobs.shape[0]) != 0:  # checks every kind
        raise ValueError(f"pool jobs: unknown kind in {sorted(set(jobs[:, 0].tolist()))}; kinds are {KIND}")
    return jobs[:, WORDS - 1]


def _check_steps(jobs, n_per_step) -> None:
    if (not isinstance(jobs, np.ndarray) or jobs.dtype != np.int64 or jobs.ndim != 2 or jobs.shape[1] != WORDS
            or not jobs.flags.c_contiguous or not jobs.flags.writeable):
        raise ValueError(f"pool steps: jobs must be a writeable C-contiguous int64 array of rows of {WORDS} words")
    if (not isinstance(n_per_step, np.ndarray) or n_per_step.dtype != np.int32 or n_per_step.ndim != 1
            or not n_per_step.flags.c_contiguous or n_per_step.size < 1):
        raise ValueError("pool steps: n_per_step must be a non-empty C-contiguous int32 vector")
    if int(n_per_step.min()) < 1 or int(n_per_step.max()) > MAX_JOBS or int(n_per_step.sum()) != jobs.shape[0]:
        raise ValueError(f"pool steps: every step takes 1..{MAX_JOBS} jobs and the steps take all {jobs.shape[0]} "
                         f"rows, got {n_per_step.tolist()}")


def steps_runner(jobs: np.ndarray, n_per_step: np.ndarray, ns: np.ndarray | None = None):
    """A function of no arguments running the steps (see :func:`run_steps`) with the arguments checked and cast
    once: calling it is one cffi call, nothing allocated. The arrays must stay alive and unmoved meanwhile (the
    returned function holds them). With ``ns`` (a writeable int64 vector, one word per step) the steps run through
    ``mla_pool_run_steps_timed``, which leaves each step's nanoseconds there (measured in C by the calling
    thread); without it the untimed ``mla_pool_run_steps``."""
    _check_steps(jobs, n_per_step)
    mod = _module()
    pj = mod.ffi.from_buffer("int64_t[]", jobs)
    ps = mod.ffi.from_buffer("int32_t[]", n_per_step)
    n = int(n_per_step.size)
    if ns is None:
        fn = mod.lib.mla_pool_run_steps

        def run_all() -> int:
            return fn(pj, ps, n)

        run_all.arrays = (jobs, n_per_step, pj, ps)  # keep the buffers and their cdata alive with the function
        return run_all
    if (not isinstance(ns, np.ndarray) or ns.dtype != np.int64 or ns.shape != (n,) or not ns.flags.c_contiguous
            or not ns.flags.writeable):
        raise ValueError(f"pool steps: ns must be a writeable C-contiguous int64 vector of {n} words (one per step)")
    fn_timed, pn = mod.lib.mla_pool_run_steps_timed, mod.ffi.from_buffer("int64_t[]", ns)

    def run_timed() -> int:
        return fn_timed(pj, ps, n, pn)

    run_timed.arrays = (jobs, n_per_step, ns, pj, ps, pn)
    return run_timed


def run_steps(jobs: np.ndarray, n_per_step: np.ndarray) -> np.ndarray:
    """Run ``n_per_step.size`` pool calls in order in one C call: step s takes the next ``n_per_step[s]`` job rows
    (the first on this thread, the others on workers) and starts when step s - 1 is done. Returns the result
    words of all jobs."""
    rc = steps_runner(jobs, n_per_step)()
    if rc != 0:
        raise ValueError(f"pool steps: step {-1 - rc} has an unknown kind; kinds are {KIND}")
    return jobs[:, WORDS - 1]


def workers() -> int:
    """Worker threads the pool has started in this process (it starts them on demand and keeps them)."""
    return _module().lib.mla_pool_workers()
