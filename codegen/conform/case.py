"""A conformance case: the replayable value (op, parameters, generated inputs, expectation) and its JSON file form.

A *case* is a small JSON-serialisable value (:class:`Case`): an op, its parameters, and its inputs described by
generator + seed (:mod:`.inputs`, never raw data), so ``mlaref conform --case FILE`` replays it anywhere. A case
says ``expect: exact`` where the spec models the library's own order, ``expect: nmse`` elsewhere, with ggml
test-backend-ops' NMSE bound (1e-7; 5e-4 for mul_mat and flash_attn_ext). Where upstream ggml's semantics differ
from ik_llama.cpp@676f0e71b (upstream facts §4), its ``note`` says so. ``known`` names a documented gap
(``upstream-lacks``) or finding (docs/conformance-findings.md).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from mlaref.codegen.conform.inputs import GENERATORS
from mlaref.codegen.conform.ops import OPS

SCHEMA = "mlaref.conform.case/1"
NMSE_DEFAULT = 1e-7
NMSE_BOUND = {"mul_mat": 5e-4, "flash_attn_ext": 5e-4}  # ggml tests/test-backend-ops.cpp max_nmse_err()


@dataclasses.dataclass
class Case:
    """One replayable conformance case.

    ``inputs`` maps an input name to its generator spec (``{"gen": ..., "seed": ..., ...}``, see
    :func:`.inputs.make_input`); ``expect`` is ``"exact"`` or ``"nmse"``; ``bound`` overrides the op's NMSE bound;
    ``note`` is the upstream-versus-ik_llama.cpp remark shown with the verdict; ``known`` (optional) is
    ``{"kind": "upstream-lacks" | "finding", "text": ...}`` for a documented gap or finding.
    """

    id: str
    op: str
    params: dict
    inputs: dict
    expect: str = "exact"
    bound: float | None = None
    note: str = ""
    known: dict | None = None

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"case {self.id!r}: unknown op {self.op!r}; known: {', '.join(sorted(OPS))}")
        if self.expect not in ("exact", "nmse"):
            raise ValueError(f"case {self.id!r}: expect must be 'exact' or 'nmse', got {self.expect!r}")
        if self.known is not None and self.known.get("kind") not in ("upstream-lacks", "finding"):
            raise ValueError(f"case {self.id!r}: known.kind must be 'upstream-lacks' or 'finding'")
        for name, spec in self.inputs.items():
            if not isinstance(spec, dict) or spec.get("gen") not in GENERATORS or "seed" not in spec:
                raise ValueError(f"case {self.id!r}: input {name!r} needs a known 'gen' "
                                 f"({', '.join(GENERATORS)}) and a 'seed'")

    @property
    def nmse_bound(self) -> float:
        return self.bound if self.bound is not None else NMSE_BOUND.get(self.op, NMSE_DEFAULT)

    def types(self) -> list[str]:
        """Every type name the case involves (for ``--types``)."""
        out = [v for k, v in self.params.items() if k.endswith("type") and isinstance(v, str)]
        out += [s["type"] for s in self.inputs.values() if isinstance(s.get("type"), str)]
        return sorted(set(out))

    def to_json(self) -> dict:
        d = {"schema": SCHEMA, "id": self.id, "op": self.op, "params": self.params, "inputs": self.inputs,
             "expect": self.expect}
        for k in ("bound", "note", "known"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Case:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"not a conformance case (schema must be {SCHEMA!r}): {str(d)[:80]}")
        extra = set(d) - {"schema", "id", "op", "params", "inputs", "expect", "bound", "note", "known"}
        if extra:
            raise ValueError(f"case {d.get('id')!r}: unknown fields {sorted(extra)}")
        return cls(d["id"], d["op"], d["params"], d["inputs"], d.get("expect", "exact"), d.get("bound"),
                   d.get("note", ""), d.get("known"))


def _dumps(obj) -> str:
    """Indented JSON with short lists of numbers kept on one line (shapes, positions)."""
    text = json.dumps(obj, indent=1, sort_keys=True)

    def one_line(m):
        return "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]"

    return re.sub(r"\[\s+([-0-9.e+,\s]+?)\s+\]", one_line, text)


def cases_text(cases) -> str:
    """The text of a case file: one case (a JSON object) or several (``{"schema": ..., "cases": [...]}``)."""
    cases = list(cases)
    doc = cases[0].to_json() if len(cases) == 1 else {"schema": SCHEMA, "cases": [c.to_json() for c in cases]}
    return _dumps(doc) + "\n"


def save_cases(path, cases) -> None:
    """Write :func:`cases_text` of ``cases`` to ``path``."""
    Path(path).write_text(cases_text(cases))


def load_cases(path) -> list[Case]:
    """Read a case file written by :func:`save_cases`."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if isinstance(doc, dict) and "cases" in doc:
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"{path}: schema must be {SCHEMA!r}")
        return [Case.from_json(c) for c in doc["cases"]]
    return [Case.from_json(doc)]
