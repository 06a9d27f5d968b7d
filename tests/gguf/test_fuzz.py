"""Mutation fuzzing of open_gguf: thousands of corrupted tiny files, only GGUFError subclasses, bounded time/memory.

Mutations of a valid ~20 KB deepseek2 file (with string, float and int arrays as a tokenizer has): random bit
flips (mostly in the header), truncations, every 8-byte count / length / dimension / offset set to inflated
values (2^64-1, 2^63, 2^32, the file size, ...), 4-byte type fields set to odd values, random byte splices, and
combinations. Field positions come from gguf-py's reader on the clean file. A file that opens must also be
usable: every tensor is decoded.
"""

from __future__ import annotations

import collections
import resource
import time
import tracemalloc

import numpy as np

from mlaref.reference.gguf import GGUFError, open_gguf

N_CASES = 3000
CASE_TIME_LIMIT_S = 10.0  # a hang guard per file, not a speed target (speed is never asserted in tests)
N_TRACED = 300  # the first cases run under tracemalloc (6x slower): their peak allocation is bounded
MEMORY_BUDGET = 64 * 2**20
RSS_BUDGET = 256 * 2**20  # growth of the process's peak resident set over the whole campaign


def test_fuzz_open_gguf(fuzz_seed, tools, tmp_path):
    path, offs = fuzz_seed
    data = open(path, "rb").read()
    assert len(tools.u64_fields(offs)) > 100 and len(tools.u32_fields(offs)) > 60
    rng = np.random.default_rng(20250313)
    outcomes = collections.Counter()
    kinds = collections.Counter()
    foreign = []  # (kind, exception) for anything that is not a GGUFError
    reader_wrapped = []  # GGUFErrors that came from wrapping a GGUFReader failure: the scan missed something
    unchanged = 0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = 0
    slowest = 0.0
    tracemalloc.start()
    t0 = time.perf_counter()
    gen = tools.mutations(data, offs, rng)
    for i in range(N_CASES):
        kind, blob = next(gen)
        kinds[kind] += 1
        unchanged += blob == data
        p = tmp_path / f"c{i}.gguf"
        p.write_bytes(blob)
        t_case = time.perf_counter()
        try:
            m = open_gguf(p)
            for t in m.tensors.values():
                t.to_numpy()
            outcomes["opened"] += 1
            del m, t
        except GGUFError as exc:
            outcomes[type(exc).__name__] += 1
            if "GGUFReader failed" in str(exc):
                reader_wrapped.append((kind, str(exc)))
        except Exception as exc:  # noqa: BLE001  (the point of the test: nothing else may escape)
            foreign.append((kind, f"{type(exc).__name__}: {exc}"))
        slowest = max(slowest, time.perf_counter() - t_case)
        p.unlink()
        if i == N_TRACED - 1:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    report = (f"{N_CASES} cases in {elapsed:.1f} s (slowest {slowest:.2f} s), traced peak {peak / 2**20:.1f} MiB, max RSS growth "
              f"{rss / 2**20:.1f} MiB; mutations {dict(kinds)}; outcomes {dict(outcomes)}; unchanged {unchanged}")
    print(report)
    assert not foreign, f"{len(foreign)} non-GGUFError exceptions, e.g. {foreign[:5]}\n{report}"
    assert not reader_wrapped, f"the header scan let through {reader_wrapped[:5]}\n{report}"
    assert slowest < CASE_TIME_LIMIT_S, report
    assert 0 < peak < MEMORY_BUDGET and rss < RSS_BUDGET, report
    # the campaign must reach the checks it is meant to reach
    for cls in ["BadMagic", "UnsupportedVersion", "Truncated", "BadHeader", "TensorOutOfBounds", "ShapeOverflow",
                "UnknownTensorType", "ShapeMismatch", "MisalignedTensor"]:
        assert outcomes[cls] > 0, f"no {cls} in the campaign\n{report}"
    assert sum(outcomes.values()) - outcomes["opened"] >= 2000, report
