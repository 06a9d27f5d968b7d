"""The Conformance page's verdict tables: the snapshots ``mlaref conform ... --json-dir docs/data/conform`` wrote,
one JSON per build of a peer: upstream ggml 0.15.3 (the installed native ggml-python library and its sdist built at
each level the recording machine runs), upstream ggml 0.25.3 (llama-cpp-python) and ik_llama.cpp
(ik-llama-cpp-python), side by side.

This module only renders them: a table of the builds (what each was compiled with, the plan and vector exp the
spec took from that, and where the plan was verified), counts by verdict per op with one column per build, and
every verdict that is not ``bit-exact`` with the builds that gave it and the reason the run gave.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

SNAPSHOTS = Path(__file__).resolve().parents[1] / "data" / "conform"
STATUSES = ("bit-exact", "within NMSE bound", "mismatch", "unsupported", "aborted")
# The order of columns: the levels lowest first, then native builds.
_LEVEL_ORDER = ("generic", "avx", "avx2", "avx512", "avx512vnni", "avx512bf16")


_PEER_ORDER = ("ggml-python", "llama-cpp-python", "ik-llama-cpp-python")
_PEER_TEXT = {"ggml-python": "ggml-python 0.0.45: upstream ggml 0.15.3",
              "llama-cpp-python": "llama-cpp-python 0.3.36: upstream ggml 0.25.3",
              "ik-llama-cpp-python": "ik-llama-cpp-python 0.1.5: ik_llama.cpp (2026 snapshot)"}


def _peer(data: dict) -> str:
    return data["ggml"].get("peer", "ggml-python")


def _status(v: dict) -> str:
    s = v["status"]
    return next((k for k in STATUSES if s.startswith(k)), s)


def load() -> list[tuple[str, dict]]:
    """(build name, snapshot) for every snapshot, levels first (lowest first), then native builds."""
    runs = []
    for path in sorted(SNAPSHOTS.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        runs.append((path.stem, data))

    def key(item):
        name, data = item
        peer = _PEER_ORDER.index(_peer(data)) if _peer(data) in _PEER_ORDER else len(_PEER_ORDER)
        return (peer, _LEVEL_ORDER.index(name), name) if name in _LEVEL_ORDER else (peer, len(_LEVEL_ORDER), name)

    return sorted(runs, key=key)


def verdict_tables() -> str:
    runs = load()
    if not runs:
        return ('!!! note "No conformance snapshot"\n    `docs/data/conform/` is empty; run '
                '`mlaref conform --all-levels --json-dir docs/data/conform`.\n')
    lines = ["| build | peer | compiled with | vec_dot plan | v_expf | cases | bit-exact | unexplained | plan verified on |",
             "|---|---|---|---|---|---:|---:|---:|---|"]
    for name, data in runs:
        b = data["ggml"].get("build", {})
        vs = data["verdicts"]
        exact = sum(_status(v) == "bit-exact" for v in vs)
        bad = sum(1 for v in vs if not v.get("explained"))
        feats = " ".join(b.get("features", [])) or "x86-64 baseline (SSE2)"
        lines.append(f"| `{name}` | {_PEER_TEXT.get(_peer(data), _peer(data))} | {feats} | `{b.get('vec_dot_plan')}` "
                     f"| `{b.get('simd')}` | {len(vs)} | {exact} "
                     f"| {bad} | {b.get('verified') or 'inferred, not run'} |")
    lines.append("")
    for name, data in runs:
        vs = data["verdicts"]
        total = collections.Counter(_status(v) for v in vs)
        lines.append(f"* `{name}`: {_PEER_TEXT.get(_peer(data), _peer(data))}, {len(vs)} cases, "
                     + ", ".join(f"{total[s]} {s}" for s in STATUSES if total[s])
                     + f"; {sum(1 for v in vs if not v.get('explained'))} unexplained.")
    lines += ["", "Verdicts per op (bit-exact / cases; then the other verdicts):", "",
              "| op | " + " | ".join(f"`{n}`" for n, _ in runs) + " |", "|---|" + "---|" * len(runs)]
    ops = list(dict.fromkeys(v["op"] for _, d in runs for v in d["verdicts"]))
    for op in ops:
        cells = []
        for _, data in runs:
            c = collections.Counter(_status(v) for v in data["verdicts"] if v["op"] == op)
            n = sum(c.values())
            rest = ", ".join(f"{c[s]} {s}" for s in STATUSES[1:] if c[s])
            cells.append(f"{c['bit-exact']}/{n}" + (f" ({rest})" if rest else ""))
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines += ["", "Every verdict other than bit-exact, with the builds that gave it and the reason:", "",
              "| case | verdict | builds | why |", "|---|---|---|---|"]
    seen: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    why: dict[tuple[str, str], str] = {}
    for name, data in runs:
        for v in data["verdicts"]:
            if _status(v) == "bit-exact":
                continue
            key = (v["id"], _status(v))
            seen[key].append(name)
            why.setdefault(key, (v.get("note") or v.get("text") or "").replace("|", "\\|").replace("\n", " "))
    for (cid, status), names in seen.items():
        lines.append(f"| `{cid}` | {status} | {', '.join(f'`{n}`' for n in names)} | {why[(cid, status)]} |")
    return "\n".join(lines) + "\n"
