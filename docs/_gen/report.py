"""The Performance and Conformance pages' generated parts: the last ``mlaref report`` run, if there is one.

The report is looked for, in order, at ``$MLAREF_REPORT`` (a ``report.json`` path), ``mlaref-report/report.json``
(the default output of ``mlaref report``, relative to the repository root) and ``docs/data/report.json`` (a
snapshot kept with the docs). The report's own Markdown renderer (``mlaref.codegen.report.render_markdown``)
turns it into text; each page takes the ``##`` sections it is about. Its PNG plots, next to ``report.json``,
are copied into the site under ``img/report/``. Without a report the pages say so.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent

# page section -> the report.md "## " headings it shows (prefix match)
SECTIONS = {
    "performance": ("Kernel throughput", "The reference against gguf-py", "The kernels against ik_llama.cpp",
                    "The seed's speed claim"),
    "conformance": ("CPU", "Build", "Kernel checks", "Seed tables", "Skipped"),
}


def find() -> Path | None:
    env = os.environ.get("MLAREF_REPORT")
    candidates = [Path(env)] if env else []
    candidates += [ROOT / "mlaref-report" / "report.json", DOCS / "data" / "report.json"]
    for c in candidates:
        if c.is_file():
            return c
    return None


def load() -> tuple[Path | None, dict | None, str | None]:
    """(path, report, error): the report dict, or the reason it could not be read."""
    path = find()
    if path is None:
        return None, None, None
    try:
        return path, json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as exc:
        return path, None, f"{type(exc).__name__}: {exc}"


def images() -> dict[str, bytes]:
    """The report's PNG plots by file name (only those that exist next to report.json)."""
    path, report, _ = load()
    if report is None:
        return {}
    out = {}
    for p in (report.get("plots") or {}).get("plots", []):
        name = p.get("file") if isinstance(p, dict) else None
        if name and (path.parent / Path(name).name).is_file():
            out[Path(name).name] = (path.parent / Path(name).name).read_bytes()
    return out


def _split(md: str) -> dict[str, str]:
    parts = re.split(r"^## ", md, flags=re.M)
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] if "\n" in p else "" for p in parts[1:]}


def section(which: str, prefix: str) -> str:
    """Markdown for page ``which`` ("performance" or "conformance"); ``prefix`` leads from the page to the site root."""
    path, report, error = load()
    if path is None:
        return ("!!! warning \"No report run yet\"\n"
                "    No `report.json` was found when this site was built (looked at `$MLAREF_REPORT`, "
                "`mlaref-report/report.json` and `docs/data/report.json`), so this page has no measured numbers. "
                "Run `mlaref report` and rebuild the site to fill it in.")
    if report is None:
        return f"!!! failure \"The report could not be read\"\n    `{path.name}`: {error}"
    try:
        from mlaref.codegen.report import render_markdown

        md = render_markdown(report)
    except Exception as exc:  # a report from another version of mlaref: say so, do not break the site
        return (f"!!! failure \"The report could not be rendered\"\n    `{path}` (schema "
                f"{report.get('schema', '?')}) does not fit this version's renderer: {type(exc).__name__}: {exc}")
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    env = report.get("environment", {})
    head = [f"*Generated from the last report run: `{where}`, created {report.get('created', '?')} by "
            f"`{report.get('command', 'mlaref report')}` (mlaref {report.get('mlaref_version', '?')}, Python "
            f"{env.get('python', '?')}, NumPy {env.get('numpy', '?')}).*", ""]
    checks = report.get("checks", {})
    if which == "conformance" and checks:
        head += [f"**{checks.get('total', 0) - checks.get('failed', 0)} of {checks.get('total', 0)} checks passed** "
                 f"(exit code {report.get('exit_code', '?')}).", ""]
    body = _split(md)
    have = images()

    def image(m):
        alt, name = m.groups()
        if name in have:
            return f"![{alt}]({prefix}img/report/{name})"
        return f"*(plot `{name}` is not next to the report)*"

    out = []
    for title, text in body.items():
        if any(title.startswith(s) for s in SECTIONS[which]):
            text = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", image, text)
            out += [f"### {title}", "", text.strip(), ""]
    return "\n".join(head + (out or ["*(the report has none of this page's sections)*"]))


def bench_snapshot(name: str) -> str:
    """A benchmark's JSON kept with the docs (``docs/data/bench/NAME.json``, written by ``--json``) as the table its
    command prints, with the machine it ran on: ``mlaref bench peers`` or ``mlaref bench mla --backend arena``."""
    path = DOCS / "data" / "bench" / f"{name}.json"
    result = json.loads(path.read_text())
    env = result.get("environment", {})
    if result.get("benchmark") == "mlaref kernels vs peers":
        from mlaref.codegen.bench.peers import format_table  # noqa: PLC0415
    else:
        from mlaref.codegen.bench.mla import format_table  # noqa: PLC0415
    return (f"*From `docs/data/bench/{name}.json`: {env.get('processor', '?')}, {env.get('machine', '?')}, "
            f"Python {env.get('python', '?')}.*\n\n```\n{format_table(result)}\n```")
