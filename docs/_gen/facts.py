"""Citations of the upstream facts (docs/facts/*.md): every unlinked "upstream facts §X" becomes a link.

The anchors are the ``{#facts-...}`` attributes of the facts pages; a citation of a section that no page defines
stops the strict build.
"""

from __future__ import annotations

import re
from pathlib import Path

FACTS = Path(__file__).resolve().parents[1] / "facts"
_CACHE: dict = {}
_SECTION = r"§(?:\d+[a-g]?(?:\.\d+)?|A(?:\.\d+)?)"
# "upstream facts §4a", "... §6.1 to §6.3", "... §4a, §4d", "... §1.3 / §4g"; not when already a link text
_CITATION = re.compile(rf"(?<!\[)([Uu]pstream facts\s+)({_SECTION}(?:(?:, | and | to | / ){_SECTION})*)")


def fact_anchors() -> dict[str, str]:
    """Every ``{#facts-...}`` anchor of the facts pages -> the page (``facts/<name>.md``) that defines it."""
    if "fact_anchors" not in _CACHE:
        found = {}
        for md in sorted(FACTS.glob("*.md")):
            for anchor in re.findall(r"\{#(facts-[a-z0-9-]+)\}", md.read_text(encoding="utf-8")):
                found[anchor] = f"facts/{md.name}"
        _CACHE["fact_anchors"] = found
    return _CACHE["fact_anchors"]


def fact_anchor(section: str) -> str:
    """``§4a`` -> ``facts-4a``, ``§0.10`` -> ``facts-0-10``, ``§A.4`` -> ``facts-a-4``."""
    return "facts-" + section.lstrip("§").lower().replace(".", "-")


def link_fact_citations(markdown: str, page) -> str:
    """Turn each section of every unlinked upstream-facts citation into a link (code spans and fences kept)."""
    anchors, prefix = fact_anchors(), "../" * page.file.src_uri.count("/")

    def link(m):
        def one(s):
            anchor = fact_anchor(s.group(0))
            if anchor not in anchors:
                raise ValueError(f"{page.file.src_uri}: '{m.group(0)}' cites {s.group(0)}, which no page under "
                                 f"docs/facts/ defines (no {{#{anchor}}})")
            return f"[{s.group(0)}]({prefix}{anchors[anchor]}#{anchor})"

        return m.group(1) + re.sub(_SECTION, one, m.group(2))

    parts = markdown.split("```")
    for k in range(0, len(parts), 2):  # outside fenced blocks
        spans = re.split(r"(`[^`\n]*`)", parts[k])
        parts[k] = "".join(t if t.startswith("`") else _CITATION.sub(link, t) for t in spans)
    return "```".join(parts)
