"""generate: generated/ is current, --check fails with a diff and the fix command, output is reproducible."""

import hashlib
import json
import shutil
import subprocess
import sys

from mlaref.codegen import generate, render


def test_generated_tree_is_current(capsys):
    assert generate.check(), capsys.readouterr().out[-3000:]


def test_check_command_line_passes():
    r = subprocess.run([sys.executable, "-m", "mlaref.codegen.generate", "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_check_fails_with_diff_and_fix_when_a_template_changes(tmp_path, capsys):
    tdir = tmp_path / "templates"
    shutil.copytree(render.TEMPLATE_DIR, tdir)
    p = tdir / "dequantize_row.c.j2"
    p.write_text(p.read_text().replace("for (int64_t r = 0; r < n_rows; ++r)", "for (int64_t r = 0; r != n_rows; ++r)"))
    assert not generate.check(template_dir=str(tdir))
    out = capsys.readouterr().out
    assert "-    for (int64_t r = 0; r < n_rows; ++r) {" in out
    assert "+    for (int64_t r = 0; r != n_rows; ++r) {" in out
    assert "--- generated/dequantize_row/mlaref_dequantize_row_q8_0__scalar_ref.c" in out
    assert "manifest.json" in out  # the sha256 entries change with the files
    assert "python -m mlaref.codegen.generate" in out


def test_write_twice_is_identical_and_manifest_hashes_match(tmp_path):
    out = tmp_path / "gen"
    written, deleted = generate.write(out)
    assert written and not deleted
    first = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    written2, deleted2 = generate.write(out)
    assert written2 == [] and deleted2 == []
    second = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert first == second
    real = generate.GENERATED_DIR
    for rel, data in first.items():
        assert (real / rel).read_bytes() == data, rel
    man = json.loads(first["manifest.json"])
    names = list(man["kernels"])
    assert names == sorted(names)
    for name, k in man["kernels"].items():
        assert hashlib.sha256(first[k["file"]]).hexdigest() == k["sha256"], name


def test_stale_files_are_deleted_and_reported(tmp_path, capsys):
    out = tmp_path / "gen"
    generate.write(out)
    stale = out / "dequantize_row" / "mlaref_dequantize_row_q9_0__scalar_ref.c"
    stale.write_text("/* old */\n")
    assert not generate.check(out)
    assert "not produced by the catalog" in capsys.readouterr().out
    _, deleted = generate.write(out)
    assert deleted == ["dequantize_row/mlaref_dequantize_row_q9_0__scalar_ref.c"] and not stale.exists()
    assert generate.check(out)
