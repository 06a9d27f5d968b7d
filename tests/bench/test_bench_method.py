"""The benchmarks' shared method: rounds in which every contender runs once, in a shuffled order that never runs
one contender twice in a row, and `measure_interleaved` timing exactly those runs."""

from __future__ import annotations

import itertools

import pytest

from mlaref.codegen.bench import method as bench


def test_round_orders_are_permutations_without_repeats_in_a_row():
    names = ["kernel", "reference", "ggml"]
    orders = bench.round_orders(names, 40)
    assert len(orders) == 40
    assert all(sorted(o) == sorted(names) for o in orders)
    flat = list(itertools.chain.from_iterable(orders))
    assert all(a != b for a, b in zip(flat, flat[1:]))
    # not one fixed order: every contender runs right after each of the others at some point
    after = {(a, b) for a, b in zip(flat, flat[1:])}
    assert after == {(a, b) for a in names for b in names if a != b}
    assert bench.round_orders(names, 40) == orders  # seeded: a run is reproducible


def test_two_contenders_alternate_and_one_runs_alone():
    flat = list(itertools.chain.from_iterable(bench.round_orders(["a", "b"], 7)))
    assert flat == (["a", "b"] * 7 if flat[0] == "a" else ["b", "a"] * 7)
    assert bench.round_orders(["x"], 3) == [["x"], ["x"], ["x"]]


def test_measure_interleaved_runs_the_rounds_in_order():
    log: list[str] = []
    fns = {n: (lambda n=n: log.append(n)) for n in ("p", "q", "r", "s")}
    timings = bench.measure_interleaved(fns, repeats=9, warmup=2)
    assert log[:8] == ["p", "p", "q", "q", "r", "r", "s", "s"]  # warm-up, each in turn
    assert log[8:] == list(itertools.chain.from_iterable(bench.round_orders(fns, 9)))
    assert {n: len(t.seconds) for n, t in timings.items()} == {n: 9 for n in fns}


@pytest.mark.parametrize("kw, what", [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup")])
def test_measure_interleaved_rejects_bad_counts(kw, what):
    with pytest.raises(ValueError, match=what):
        bench.measure_interleaved({"a": lambda: None}, **kw)
