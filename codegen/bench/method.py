"""How every benchmark times: warm-up, repeats, medians, contenders interleaved in shuffled rounds.

Method, shared by every benchmark (the perf mode of ggml's ``test-backend-ops`` is the model): run the call
once or more to warm up (imports, caches, page faults), then ``repeats`` timed runs with
``time.perf_counter``; report the median and the min and max of the repeats. Throughput is bytes of float32
data per second, in MB/s with MB = 10^6 bytes, so a quantize and a dequantize of the same tensor are
comparable. The contenders run in the same process on the same data, and their timed runs alternate
(``measure_interleaved``) so that a busy spell of the machine does not land on one of them only. The order
within each round is shuffled (``round_orders``): a run finds the caches as the run before it left them, and
a fixed order would always hand one contender the leftovers of the same other one.
"""


from __future__ import annotations

import json
import platform
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

MB = 1_000_000  # bytes; throughput is reported in MB/s with this MB


# ----------------------------------------------------------------------------------------------------------
# The reusable timing helper
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of ``repeats`` timed calls made after ``warmup`` untimed ones."""

    seconds: tuple[float, ...]
    warmup: int

    @property
    def repeats(self) -> int:
        return len(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median: how far apart the fastest and the slowest run are."""
        return (self.max - self.min) / self.median

    @property
    def iqr(self) -> float:
        """(third quartile - first quartile) / median: the spread of the middle half of the runs."""
        q1, q3 = np.percentile(self.seconds, [25, 75])
        return float((q3 - q1) / self.median)

    @property
    def method(self) -> str:
        return f"median of {self.repeats} timed runs (time.perf_counter) after {self.warmup} warm-up run(s)"

    def throughput(self, nbytes: int) -> dict:
        """MB/s for ``nbytes`` processed per call: median, and min/max (from the slowest/fastest run)."""
        return {
            "median": nbytes / self.median / MB,
            "min": nbytes / self.max / MB,
            "max": nbytes / self.min / MB,
            "unit": "MB/s",
            "method": self.method + f"; {nbytes} bytes of float32 per run; MB = 10^6 bytes",
        }

    def to_json(self) -> dict:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "all": list(self.seconds),
            "unit": "s",
            "method": self.method,
        }


def measure(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (each timed alone)."""
    if repeats < 1:
        raise ValueError(f"measure: repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"measure: warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return Timing(tuple(seconds), warmup)


def round_orders(names, repeats: int, seed: int = 0) -> list[list]:
    """The order of the contenders ``names`` in each of ``repeats`` rounds of an interleaved benchmark.

    Each round is a permutation, shuffled with a fixed seed (so a run is reproducible), and a round never
    starts with the contender that ended the round before: no contender runs twice in a row. A run finds the
    caches as the previous run left them (measured here: putting ggml's dequantize right after the NumPy
    reference instead of after the kernel moved the kernel/ggml ratio by 6-11 %), so with a fixed order one
    contender would always inherit the same other one's leftovers.
    """
    names = list(names)
    rng = random.Random(seed)
    orders: list[list] = []
    for _ in range(repeats):
        order = names[:]
        rng.shuffle(order)
        if orders and len(order) > 1 and order[0] == orders[-1][-1]:
            order = order[1:] + order[:1]
        orders.append(order)
    return orders


def measure_interleaved(
    fns: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, Timing]:
    """Time several contenders fairly: warm each up, then ``repeats`` rounds in which each runs once.

    On a shared or throttling machine, alternating spreads slow periods over every contender instead of
    letting one contender's block of runs absorb them; the order within a round comes from ``round_orders``.
    """
    if repeats < 1:
        raise ValueError(f"measure_interleaved: repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"measure_interleaved: warmup must be >= 0, got {warmup}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for order in round_orders(fns, repeats):
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            seconds[name].append(time.perf_counter() - t0)
    return {name: Timing(tuple(v), warmup) for name, v in seconds.items()}


def environment() -> dict:
    """Versions and machine, recorded with every benchmark result."""
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_model(),
    }
    try:
        from importlib.metadata import version  # noqa: PLC0415

        env["gguf"] = version("gguf")
        env["mlaref"] = version("mlaref")
    except Exception:  # metadata absent in an uninstalled tree
        pass
    return env


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def runnable(fns: dict) -> tuple[dict, dict]:
    """Call each contender once: ``(those that ran, {name: why not})``; a contender that cannot run here is n/a
    with the reason (its exception, shortened), never the end of the benchmark."""
    live, reasons = {}, {}
    for name, fn in fns.items():
        try:
            fn()
            live[name] = fn
        except Exception as exc:  # noqa: BLE001  (any failure of a contender is its verdict)
            reasons[name] = f"{type(exc).__name__}: {exc}"[:300]
    return live, reasons


def print_and_save(table: str, result: dict, json_path: str | None) -> None:
    """A benchmark command's output: the table on stdout, and the result as JSON when ``--json`` names a file."""
    print(table)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        print(f"wrote {json_path}")
