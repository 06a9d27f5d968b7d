"""The documentation builds with ``mkdocs build --strict`` (no warnings), and its generated parts are there."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs and mkdocs-material are not installed (pip install -e '.[docs]')",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    assert not re.search(r"^WARNING", r.stderr, re.M), r.stderr
    yield out
    shutil.rmtree(out, ignore_errors=True)


def test_every_registered_format_has_a_generated_page(site):
    from mlaref import reference

    for name, fmt in reference.registry().items():
        page = site / "formats" / name / "index.html"
        assert page.is_file(), f"no page for {name}"
        html = page.read_text(encoding="utf-8")
        assert f"<td>{fmt.type_size}</td>" in html  # bytes per block, from the format class
        assert "Worked example" in html
    # The docstring's reStructuredText layout table became an HTML table.
    q8 = (site / "formats" / "q8_0" / "index.html").read_text(encoding="utf-8")
    assert "<th>offset</th>" in q8 and "<code>qs[32]</code>" in q8


def test_every_op_module_has_a_generated_page(site):
    import pkgutil

    import mlaref.reference.ops as ops

    names = [m.name for m in pkgutil.iter_modules(ops.__path__) if not m.name.startswith("_")]
    assert names
    overview = (site / "ops" / "index.html").read_text(encoding="utf-8")
    for name in names:
        assert (site / "ops" / name / "index.html").is_file(), f"no page for op {name}"
        assert f'href="{name}/"' in overview, f"op {name} missing from the overview"


def test_q8_0_worked_example_shows_the_bytes_the_reference_writes(site):
    # The page shows the f16 scale of the example block: recompute it here from the published rule
    # d = max|x| / 127 of quantize_row_q8_0_ref, with NumPy's float16 (not the reference).
    import numpy as np

    j = np.arange(32, dtype=np.float64)
    x = (np.sin(0.37 * j + 0.5) * (1.0 + j / 32) * np.where(j % 7 == 3, 4.0, 1.0)).astype(np.float32)
    d = np.float16(np.max(np.abs(x)) / np.float32(127)).view(np.uint16)
    html = (site / "formats" / "q8_0" / "index.html").read_text(encoding="utf-8")
    assert f"0000  {int(d) & 0xFF:02x} {int(d) >> 8:02x}" in html


def test_seed_tables_and_cli_reference_are_rendered(site):
    start = (site / "index.html").read_text(encoding="utf-8")
    for cell in ("668.46 ± 1.74", "308.21 ± 5.91", "3476.02", "5556.02", "60.75"):
        assert cell in start, cell
    memory = (site / "memory" / "index.html").read_text(encoding="utf-8")
    assert ">context</th>" in memory and "3888.00" in memory  # the table the allocator model computed
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "mlaref bench types" in cli and "--size-mb" in cli
