"""The documentation builds with ``mkdocs build --strict`` (no warnings), and its generated parts are there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(built_site):
    return built_site  # tests/docs/conftest.py: built once per session


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


def _text(html: str) -> str:
    """The visible text of a page, roughly: tags dropped, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_memory_slopes_agree_with_the_seed_table(site):
    # Bytes of compute buffer per context token, from the seed's printed MiB values (docs/data/seed_pr253.yml)
    # over 16384..131072 tokens: the .01 print rounding (and the seed's odd .02) is then < 0.1 B per token.
    import yaml

    rows = {int(r[0]): r for r in yaml.safe_load((ROOT / "docs/data/seed_pr253.yml").read_text())["memory"]["rows"]}
    span = 131072 - 16384
    per_token = {col: round((float(rows[131072][col]) - float(rows[16384][col])) * 2**20 / span) for col in (2, 3)}
    assert per_token == {2: 27648, 3: 44288}  # PR, main: the seed's own arithmetic
    start = _text((site / "index.html").read_text(encoding="utf-8"))
    assert f"falls from {per_token[3]} to {per_token[2]} bytes" in start
    memory = _text((site / "memory" / "index.html").read_text(encoding="utf-8"))
    assert f"grows by {per_token[3]} bytes per token for f32 and {per_token[2]} for direct" in memory


def test_memory_peak_tables_show_the_peak_tensors(site):
    # Upstream facts §6.5: at 16384 the PR's peak is the allocation of v-1 (buffer 452.01 MiB, the seed's cell), main's
    # the allocation of k-1 (712.01); f32 K is 12288 B per token (192 f32 x 16 heads), the f16 K 6144.
    memory = _text((site / "memory" / "index.html").read_text(encoding="utf-8"))
    assert "allocation of v-1 set max_size" in memory and "452.01 MiB" in memory
    assert "allocation of k-1 set max_size" in memory and "712.01 MiB" in memory
    assert re.search(r"k_f32-1 concat f32 \[192, 16384, 16\] 12288 ", memory)
    assert re.search(r"k-1 cpy f16 \[192, 16384, 16\] 6144 ", memory)
    for fig in ("memory_vs_context.png", "memory_timeline.png"):
        assert (site / "img" / fig).stat().st_size > 10_000, fig


def test_graph_pages_show_the_builders_nodes(site):
    # Upstream facts §3.3: in the PR's branch K is a CONCAT in the cache type, [192, n_kv, 16]; before it K is a CPY
    # (cast) of the f32 concat k_f32.
    graphs = _text((site / "graphs" / "index.html").read_text(encoding="utf-8"))
    assert "k-1 CONCAT f16 [192, 8192, 16] 50,331,648" in graphs  # 192*8192*16*2 bytes
    assert "k-1 CPY f16 [192, 8192, 16] 50,331,648" in graphs
    assert "k_f32-1 CONCAT f32 [192, 8192, 16] 100,663,296" in graphs
    assert "kqv_part_c1-1 FLASH_ATTN_EXT_PARTIAL" in graphs
    for v in ("f32", "direct", "chunked"):
        assert (site / "img" / f"graph_{v}.png").stat().st_size > 10_000, v


def test_kernels_page_has_grammar_dispatch_and_a_checked_lane_map(site):
    kernels = _text((site / "kernels" / "index.html").read_text(encoding="utf-8"))
    assert 'name = "mlaref_" op "_" type_x' in kernels.replace("&quot;", '"')
    assert "decision tree on x86-64" in kernels
    assert re.search(r"gave the same bytes as .* for all (\d+) of them", kernels)
    assert (site / "img" / "lane_map_l8a2.png").stat().st_size > 10_000


def test_report_pages_say_whether_a_report_was_found(site):
    have = (ROOT / "mlaref-report" / "report.json").is_file() or (ROOT / "docs/data/report.json").is_file()
    for page in ("performance", "conformance"):
        text = _text((site / page / "index.html").read_text(encoding="utf-8"))
        if have:
            assert "Generated from the last report run" in text, page
        else:
            assert "No report run yet" in text and "no measured numbers" in text, page


def test_report_section_names_a_report_it_cannot_read(tmp_path, monkeypatch):
    # A report.json that is not JSON: the page must say so (and the build must not break).
    import importlib.util as iu

    spec = iu.spec_from_file_location("mlaref_docs_gen_report", ROOT / "docs" / "_gen" / "report.py")
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bad = tmp_path / "report.json"
    bad.write_text("{not json", encoding="utf-8")
    monkeypatch.setenv("MLAREF_REPORT", str(bad))
    text = mod.section("performance", "")
    assert "could not be read" in text and "JSONDecodeError" in text


def test_conformance_page_renders_the_conform_snapshots(site):
    """Every build's snapshot in docs/data/conform/ is on the page with its counts, counted here independently;
    the lower levels (generic, avx, avx2) are there with 0 unexplained; the F1 finding (upstream concat of q8_0
    rows) appears with its reason."""
    import json

    html = _text((site / "conformance" / "index.html").read_text())
    snaps = sorted((ROOT / "docs" / "data" / "conform").glob("*.json"))
    assert {p.stem for p in snaps} >= {"generic", "avx", "avx2"}
    peers = set()
    for path in snaps:
        data = json.loads(path.read_text())
        peers.add(data["ggml"].get("peer", "ggml-python"))
        exact = sum(v["status"] == "bit-exact" for v in data["verdicts"])
        unexplained = sum(not v["explained"] for v in data["verdicts"])
        assert exact > 100, path.stem
        assert re.search(rf"{re.escape(path.stem)}\s*: (ggml-python 0\.0\.45|llama-cpp-python 0\.3\.36|"
                         rf"ik-llama-cpp-python 0\.1\.5)", html), path.stem
        assert f"{len(data['verdicts'])} cases, {exact} bit-exact" in html, path.stem
        if path.stem in ("generic", "avx", "avx2"):
            assert unexplained == 0, path.stem
            assert data["ggml"]["build"]["vec_dot_plan"] in html
    assert "concat/q8_0" in html and "aborted" in html
    assert peers == {"ggml-python", "llama-cpp-python", "ik-llama-cpp-python"}  # the three peers side by side


# -- the upstream facts: the repository cites its own pages (docs/facts/), never a file outside it ---------------
# the fact sheet outside the repository, joined at run time so that neither this file nor its .pyc names it
_OLD_SHEET = "".join(("F", "ACTS"))
_SECTION = r"§(?:\d+[a-g]?(?:\.\d+)?|A(?:\.\d+)?)"
_CITATION = re.compile(rf"[Uu]pstream facts\s+({_SECTION}(?:(?:, | and | to | / ){_SECTION})*)")
# the numbering the citations use: one anchor per section, and per item of §0 and of Appendix A
_SECTIONS = (["0", "1", "1.1", "1.2", "1.3", "2", "3", "3.1", "3.2", "3.3", "4", "5", "6", "7", "8", "A"]
             + [f"0.{i}" for i in range(1, 11)] + [f"4{c}" for c in "abcdefg"] + [f"6.{i}" for i in range(1, 7)]
             + [f"A.{i}" for i in range(1, 10)])


def _anchor(section: str) -> str:
    return "facts-" + section.lstrip("§").lower().replace(".", "-")


def _fact_pages() -> dict[str, set[str]]:
    """docs/facts/<page>.md -> the ``{#facts-...}`` anchors it defines."""
    return {p.name: set(re.findall(r"\{#(facts-[a-z0-9-]+)\}", p.read_text(encoding="utf-8")))
            for p in sorted((ROOT / "docs" / "facts").glob("*.md"))}


def _repository_texts():
    """(path, text) of every file in the repository that git tracks or would track (not .git, not ignored
    build outputs); JSON's ``\\u00a7`` escapes read as ``§``."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the work tree
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        yield name, text.replace("\\u00a7", "§") if name.endswith(".json") else text


def test_facts_pages_define_every_section_once():
    pages = _fact_pages()
    assert "index.md" in pages
    defined = [a for anchors in pages.values() for a in anchors]
    assert len(defined) == len(set(defined)), "an anchor is defined twice"
    missing = sorted({_anchor(s) for s in _SECTIONS} - set(defined))
    assert not missing, f"docs/facts/ lacks the anchors {missing}"


def test_nothing_cites_the_outside_fact_sheet_and_every_citation_resolves():
    pages = _fact_pages()
    anchors = {a for page in pages.values() for a in page}
    old = re.compile(rf"\b{_OLD_SHEET}(?:\.md\b|\s+(?:section\s+)?\d)")
    link = re.compile(r"\]\(([^()#\s]*)#(facts-[a-z0-9-]+)\)")  # a Markdown link to a facts anchor
    outside, unresolved, n = [], [], 0
    for name, text in _repository_texts():
        for k, line in enumerate(text.splitlines(), 1):
            if old.search(line):
                outside.append(f"{name}:{k}: {line.strip()[:100]}")
            for m in _CITATION.finditer(line):
                for s in re.findall(_SECTION, m.group(1)):
                    n += 1
                    if _anchor(s) not in anchors:
                        unresolved.append(f"{name}:{k}: {s}")
            if name.endswith(".md"):
                for target, anchor in link.findall(line):
                    page = ((ROOT / name).parent / target).resolve() if target else (ROOT / name).resolve()
                    if page.parent != (ROOT / "docs" / "facts").resolve() or anchor not in pages.get(page.name, ()):
                        unresolved.append(f"{name}:{k}: {target}#{anchor}")
    assert not outside, "cites the fact sheet outside the repository:\n" + "\n".join(outside)
    assert not unresolved, "cites an upstream-facts section no page defines:\n" + "\n".join(unresolved)
    assert n > 300  # the code, tests, templates and docs do cite the facts


def test_performance_page_shows_the_kept_benchmark_runs(site):
    """Each benchmark JSON in docs/data/bench/ is on the Performance page: every row's ratio against each peer,
    read here from the JSON, appears in the page's text."""
    import json

    html = _text((site / "performance" / "index.html").read_text())
    paths = sorted((ROOT / "docs" / "data" / "bench").glob("*.json"))
    assert {p.stem for p in paths} >= {"peers-znver3", "mla-arena-znver3-1t", "mla-arena-znver3-2t"}
    for path in paths:
        data = json.loads(path.read_text())
        assert f"docs/data/bench/{path.stem}.json" in html
        for row in data["rows"]:
            if data["benchmark"] == "mlaref kernels vs peers":
                for p in data["peers"]:
                    if p + "_unsupported" in row:  # a case the peer's back-end refuses: named, not timed
                        why = row[p + "_unsupported"].split("supports_op ", 1)[1]  # after the page's apostrophe
                        assert f"supports_op {why}" in html, (path.stem, row["case"], p)
                        continue
                    assert f"{row[p + '_ratio']:.2f}" in html, (path.stem, row["case"], p)
            else:
                for v in ("f32", "direct", "chunked"):
                    assert f"{row['ratio_ik_' + v]['value']:.3f}" in html, (path.stem, row["n_kv"], v)
