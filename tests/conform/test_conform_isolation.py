"""Worker isolation: a case that kills its worker (abort(), a signal, a hang) is reported and the run goes on."""

import argparse
import shutil
from pathlib import Path

import pytest

from mlaref.codegen.conform.case import Case, save_cases
from mlaref.codegen.conform.caseset import default_cases
from mlaref.codegen.conform.runner import configure, run
from mlaref.codegen.conform.worker import run_cases


def _rope_case():
    return next(c for c in default_cases() if c.id == "rope/f32/yarn")


def _crash(sig):
    return Case(f"selftest/{sig}", "selftest_abort", {"signal": sig}, {})


@pytest.mark.parametrize("sig", ["SIGABRT", "SIGSEGV"])
def test_a_crashing_case_is_aborted_and_the_next_case_still_runs(ggml, sig):
    res = run_cases([_rope_case(), _crash(sig), _rope_case()], timeout=60)
    status = [v["status"] for v in res["verdicts"]]
    assert status == ["bit-exact", "aborted", "bit-exact"]
    crash = res["verdicts"][1]
    assert crash["text"].startswith(f"aborted ({sig}") and not crash["explained"]


def test_a_hanging_case_times_out(ggml):
    res = run_cases([_crash("hang"), _rope_case()], timeout=3)
    hang, after = res["verdicts"]
    assert hang["status"] == "aborted" and "timeout after 3 s" in hang["text"]
    assert 2.5 < hang["seconds"] < 30
    assert after["status"] == "bit-exact"


def test_a_known_gap_that_aborts_is_unsupported_with_the_signal(ggml):
    case = Case("selftest/gap", "selftest_abort", {"signal": "SIGABRT"}, {},
                        known={"kind": "upstream-lacks", "text": "a documented gap"})
    (v,) = run_cases([case], timeout=60)["verdicts"]
    assert v["status"] == "unsupported" and v["explained"]
    assert v["text"].startswith("unsupported (a documented gap; confirmed: the worker died, SIGABRT")


def test_cli_exit_status_flags_unexplained_verdicts(ggml, tmp_path, capsys):
    """`mlaref conform --case FILE` exits 1 when a verdict is unexplained (here: a crash), 0 otherwise."""
    crash = tmp_path / "crash.json"
    save_cases(crash, [_crash("SIGABRT")])
    ok = tmp_path / "ok.json"
    save_cases(ok, [_rope_case()])
    p = argparse.ArgumentParser()
    configure(p)
    assert run(p.parse_args(["--case", str(crash)])) == 1
    assert "UNEXPLAINED" in capsys.readouterr().out
    assert run(p.parse_args(["--case", str(ok)])) == 0


def test_lib_option_loads_another_copy_of_the_library(ggml, tmp_path):
    """--lib: a build in another directory (here a copy of ggml-python's own) is the one the workers load."""
    src = Path(ggml.lib().__file__).parent / "lib"
    shutil.copytree(src, tmp_path / "build")
    res = run_cases([_rope_case()], lib_path=str(tmp_path / "build" / "libggml.so"))
    assert res["verdicts"][0]["status"] == "bit-exact"
    assert "mlaref-ggml-" in res["ggml"]["file"] and res["ggml"]["version"] == res["ggml"]["header_version"]
    with pytest.raises(FileNotFoundError, match="no libggml.so in"):
        run_cases([_rope_case()], lib_path=str(tmp_path))
