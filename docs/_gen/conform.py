"""The Conformance page's verdict table: a snapshot of ``mlaref conform --json docs/data/conform.json``.

The snapshot is the machine-readable output of a real run against the libggml that ``ggml-python`` builds; this
module only renders it (per op: counts by verdict, then every verdict that is not ``bit-exact`` with its
explanation). Refresh it with ``mlaref conform --json docs/data/conform.json``.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parents[1] / "data" / "conform.json"
STATUSES = ("bit-exact", "within NMSE bound", "mismatch", "unsupported", "aborted")


def _status(v: dict) -> str:
    s = v["status"]
    return next((k for k in STATUSES if s.startswith(k)), s)


def verdict_tables() -> str:
    if not SNAPSHOT.is_file():
        return '!!! note "No conformance snapshot"\n    `docs/data/conform.json` is missing; run `mlaref conform --json docs/data/conform.json`.\n'
    data = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    lib = data.get("ggml", {})
    verdicts = data["verdicts"]
    by_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for v in verdicts:
        by_op[v["op"]][_status(v)] += 1
    total = collections.Counter(_status(v) for v in verdicts)
    lines = [
        f"Run against libggml {lib.get('version', '?')} (header {lib.get('header_version', '?')}), the library "
        f"`ggml-python` builds: {len(verdicts)} cases, "
        + ", ".join(f"{total[s]} {s}" for s in STATUSES if total[s])
        + f"; {sum(1 for v in verdicts if not v.get('explained'))} unexplained.",
        "",
        "| op | " + " | ".join(STATUSES) + " |",
        "|---|" + "---:|" * len(STATUSES),
    ]
    for op, counts in by_op.items():
        lines.append(f"| {op} | " + " | ".join(str(counts[s]) if counts[s] else "" for s in STATUSES) + " |")
    lines += ["", "Every verdict other than bit-exact, with the reason the run gave:", "",
              "| case | verdict | why |", "|---|---|---|"]
    for v in verdicts:
        if _status(v) == "bit-exact":
            continue
        why = (v.get("note") or v.get("text") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{v['id']}` | {v['status'].replace('|', '/')} | {why} |")
    return "\n".join(lines) + "\n"
