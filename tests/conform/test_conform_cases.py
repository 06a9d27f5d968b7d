"""Case files: a case survives JSON, replays to the same verdict, the committed files are well-formed, bad files
and bad cases are refused with clear errors, and the filters select what they say."""

import argparse
import json

import numpy as np
import pytest

from mlaref.codegen import conform
from mlaref.codegen.conform.case import Case, cases_text, load_cases, save_cases
from mlaref.codegen.conform.caseset import CASES_DIR, default_cases, finding_cases, quick_cases, select
from mlaref.codegen.conform.inputs import make_input
from mlaref.codegen.conform.runner import configure, run
from mlaref.codegen.conform.worker import run_cases
from mlaref.reference import quantize


def _args(*argv):
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(list(argv))


def test_case_round_trips_through_json(tmp_path):
    for case in default_cases():
        again = Case.from_json(json.loads(json.dumps(case.to_json())))
        assert again == case
    path = tmp_path / "all.json"
    save_cases(path, default_cases())
    assert load_cases(path) == default_cases()
    one = tmp_path / "one.json"
    save_cases(one, default_cases()[:1])
    assert json.loads(one.read_text())["id"] == default_cases()[0].id  # a single case is a bare object


def test_inputs_are_generators_with_seeds_not_data():
    for case in default_cases():
        for name, spec in case.inputs.items():
            assert isinstance(spec["seed"], int), (case.id, name)
            assert all(not isinstance(v, list) or len(v) <= 4 for v in spec.values()), (case.id, name)


def test_generators_are_deterministic():
    spec = {"gen": "normal", "seed": 5, "shape": [3, 64], "type": "q8_0"}
    a, b = make_input(spec), make_input(spec)
    assert np.array_equal(a.raw(), b.raw())
    assert not np.array_equal(a.raw(), make_input(dict(spec, seed=6)).raw())
    m = make_input({"gen": "mask", "seed": 1, "shape": [4, 32], "inf_frac": 0.5})
    vals = m.to_numpy()[0, 0]
    assert m.type == "f16" and (vals[:, 0] == 0).all() and np.isinf(vals).any()
    rows = make_input({"gen": "ints", "seed": 2, "low": 0, "high": 10, "shape": [7], "first": [9, 0]})
    assert rows.to_numpy().reshape(-1)[:2].tolist() == [9, 0]


def test_committed_case_files_are_current_and_well_formed():
    files = sorted(CASES_DIR.glob("*.json"))
    assert {f.name for f in files} >= {"default.json", "finding-F1-concat-q8_0.json"}
    for f in files:
        cases = load_cases(f)
        assert cases_text(cases) == f.read_text(), f"{f} is not in save_cases form"
        assert len({c.id for c in cases}) == len(cases), f
    ids = [c.id for c in load_cases(CASES_DIR / "default.json")]
    assert ids == [c.id for c in default_cases()], (
        "codegen/conform/cases/default.json is stale: mlaref conform --write-cases codegen/conform/cases/default.json")
    (f1,) = load_cases(CASES_DIR / "finding-F1-concat-q8_0.json")
    (f2,) = load_cases(CASES_DIR / "finding-F2-cpy-q8_0-ik.json")
    assert [f1, f2] == finding_cases()


def test_replaying_a_case_file_gives_the_same_verdicts(ggml, tmp_path):
    picked = [c for c in default_cases()
              if c.id in ("quantize/q8_0/x86", "vec_dot/iq4_nl.q8_0", "mul_mat/q8_0xf16", "soft_max/f32/mask_f16")]
    first = run_cases(picked)["verdicts"]
    path = tmp_path / "cases.json"
    out = tmp_path / "verdicts.json"
    assert run(_args("--write-cases", str(path), "--ops", "quantize,vec_dot,mul_mat,soft_max")) == 0
    subset = [c for c in load_cases(path) if c.id in {p.id for p in picked}]
    save_cases(path, subset)
    assert run(_args("--case", str(path), "--json", str(out))) == 0
    again = json.loads(out.read_text())["verdicts"]
    strip = ("seconds",)
    assert [{k: v for k, v in d.items() if k not in strip} for d in again] == \
           [{k: v for k, v in d.items() if k not in strip} for d in first]
    assert [v["status"] for v in again] == ["bit-exact"] * 4


def test_the_finding_reproducer_replays_as_a_mismatch_or_crash(ggml):
    (v,) = run_cases(load_cases(CASES_DIR / "finding-F1-concat-q8_0.json"))["verdicts"]
    assert v["status"] in ("mismatch", "aborted") and v["explained"]
    if v["status"] == "mismatch":
        # a's one block is right; the second block, b's, is not what ggml wrote
        assert v["first"]["row"] == 0 and v["first"]["block"] == 1


def test_filters_select_by_op_and_type(capsys):
    cases = default_cases()
    only = select(cases, ops=["concat"], types=["q8_0"])
    assert [c.id for c in only] == ["concat/q8_0/dim1", "concat/q8_0/dim2", "concat/q8_0/dim0",
                                    "pr253/concat/q8_0/kv_rope/n1", "pr253/concat/q8_0/kv_rope/n37"]
    assert {c.op for c in select(cases, ops=["rope", "soft_max"])} == {"rope", "soft_max"}
    assert all("q4_K" in c.types() for c in select(cases, types=["q4_K"]))
    assert run(_args("--list", "--ops", "repeat")) == 0
    assert capsys.readouterr().out.splitlines() == ["repeat/f32  (repeat, expect exact)",
                                                     "repeat/f16  (repeat, expect exact)",
                                                     "repeat/q8_0  (repeat, expect exact)",
                                                     "pr253/repeat/f16/k_rope_over_heads  (repeat, expect exact)",
                                                     "pr253/repeat/q8_0/k_rope_over_heads  (repeat, expect exact)"]
    assert run(_args("--ops", "nope")) == 2
    assert {c.op for c in quick_cases()} == {c.op for c in cases if c.op != "selftest_abort"}


def test_bad_case_files_and_cases_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_cases(bad)
    bad.write_text(json.dumps({"id": "x", "op": "rope"}))
    with pytest.raises(ValueError, match="schema must be 'mlaref.conform.case/1'"):
        load_cases(bad)
    good = default_cases()[0].to_json()
    with pytest.raises(ValueError, match="unknown op 'frobnicate'"):
        Case.from_json(dict(good, op="frobnicate"))
    with pytest.raises(ValueError, match="unknown fields \\['extra'\\]"):
        Case.from_json(dict(good, extra=1))
    with pytest.raises(ValueError, match="expect must be 'exact' or 'nmse'"):
        Case.from_json(dict(good, expect="close"))
    with pytest.raises(ValueError, match="input 'x' needs a known 'gen'"):
        Case.from_json(dict(good, inputs={"x": {"gen": "normal"}}))
    with pytest.raises(ValueError, match="known.kind must be"):
        Case.from_json(dict(good, known={"kind": "maybe", "text": "?"}))


def test_the_package_re_exports_the_public_names():
    """``mlaref.codegen.conform`` lists its public names in ``__all__``, each the object its module defines."""
    assert len(set(conform.__all__)) == len(conform.__all__)
    assert all(hasattr(conform, name) for name in conform.__all__)
    assert (conform.Case, conform.default_cases, conform.make_input, conform.run, conform.run_cases) == \
           (Case, default_cases, make_input, run, run_cases)


def test_the_tie_cases_tell_the_two_q8_roundings_apart():
    """On the tie inputs (scale exactly 1) the spec's ref rounds half away from zero and x86 half to even, checked
    against NumPy's own rounding, so the two bit-exact verdicts above are informative."""
    case = next(c for c in default_cases() if c.id == "quantize/q8_0/x86/ties")
    x = make_input(case.inputs["x"])
    qs = {v: quantize(x, "q8_0", variant=v).reshape(-1, 34)[:, 2:].view(np.int8).reshape(x.shape)
          for v in ("ref", "x86")}
    away = (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int8)
    assert np.array_equal(qs["ref"], away)
    assert np.array_equal(qs["x86"], np.rint(x).astype(np.int8))
    assert (qs["ref"] != qs["x86"]).sum() > 100


def test_view_inputs_share_their_sources_buffer_and_causal_masks_close_whole_blocks():
    from mlaref.codegen.conform.inputs import make_inputs

    made = make_inputs({"v": {"gen": "view", "of": "k", "cols": [0, 512], "seed": 1},
                        "k": {"gen": "normal", "type": "q8_0", "shape": [1, 1, 40, 576], "seed": 2},
                        "m": {"gen": "mask", "type": "f16", "shape": [16, 256], "causal": 3, "seed": 3}})
    k, v, m = made["k"], made["v"], made["m"]
    assert v.data is k.data and v.ne == (512, 40, 1, 1) and v.nb[1:] == k.nb[1:] and v.offset == k.offset
    assert np.array_equal(v.to_numpy(), k.to_numpy()[..., :512])
    vals = m.to_numpy().reshape(16, 256)
    for i in range(3):  # query i sees columns 0 .. 256 - 3 + i
        assert np.isfinite(vals[i, : 254 + i]).all() and np.isneginf(vals[i, 254 + i:]).all()
    with pytest.raises(ValueError, match="whole 32-blocks"):
        make_inputs({"k": {"gen": "normal", "type": "q8_0", "shape": [2, 64], "seed": 1},
                     "v": {"gen": "view", "of": "k", "cols": [0, 48], "seed": 1}})
