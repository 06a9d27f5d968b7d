"""The kernel-name grammar: ``format(spec)`` builds a name, ``parse(name)`` takes one apart.

::

    name   = "mlaref_" op "_" type_x [ "_" type_y ] "__" isa "_" plan
    op     = "dequantize_row" | "quantize_row" | "quantize_chunk" | "convert_rows" | "copy_rows" | "concat_rows"
             | "vec_dot" | "mul_mat" | "flash_attn_ext" | "flash_attn_ext_partial" | "fa_merge" | "cast_rows"
    type   = "f32" | "f16" | "bf16" | "q4_0" | ... | "q8_K" | "bytes"       (TYPES below)
    isa    = "scalar" | "avx2" | "avx512" | "avx512vnni" | "neon" | "neondot" | "sm90"  (codegen/isa.py)
    plan   = word { "_" word } ;  word = [a-z0-9]+

``__`` separates *what* is computed (op and types) from *how* (ISA and plan), as in KleidiAI's names. The plan is
the reduction plan's fingerprint for reductions (``l8a2``, ``ggml_x86_avx2``), the quantize variant for
quantizers (``ref``, ``x86``, ``iqk``; ``model`` for the model quantizers of ``quantize_chunk``), and ``ref`` for ops whose result does not depend on an order
(dequantize, byte copies). ``bytes`` is the type of the type-agnostic row copies. The symbol of a kernel equals its
file stem, one kernel per file. Names are unambiguous: types are matched against the fixed list, longest first.
"""

from __future__ import annotations

import dataclasses
import re

from mlaref.codegen import isa as _isa

__all__ = ["OPS", "TYPES", "KernelName", "format", "parse", "grammar"]

OPS = ("dequantize_row", "quantize_row", "quantize_chunk", "convert_rows", "copy_rows", "concat_rows", "vec_dot",
       "mul_mat", "flash_attn_ext", "flash_attn_ext_partial", "fa_merge", "cast_rows")
TYPES = (
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "iq4_nl",
    "q8_0_x4", "q8_1_x4", "q8_K", "q4_K", "q6_K", "bytes",
)
_WORD = r"[a-z0-9]+"
_PLAN = rf"{_WORD}(?:_{_WORD})*"


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_NAME_RE = re.compile(
    rf"^mlaref_(?P<op>{_alt(OPS)})_(?P<tx>{_alt(TYPES)})(?:_(?P<ty>{_alt(TYPES)}))?"
    rf"__(?P<isa>{_alt(_isa.all_tokens())})_(?P<plan>{_PLAN})$"
)


@dataclasses.dataclass(frozen=True)
class KernelName:
    """The parts of a kernel name."""

    op: str
    type_x: str
    type_y: str | None
    isa: str
    plan: str


def format(op: str, type_x: str, type_y: str | None, isa: str, plan: str) -> str:  # noqa: A001 - the grammar's verb
    """The kernel name of these parts; ValueError naming the part that breaks the grammar."""
    if op not in OPS:
        raise ValueError(f"kernel name: op {op!r} is not one of {', '.join(OPS)}")
    for label, t in (("type_x", type_x), ("type_y", type_y)):
        if t is not None and t not in TYPES:
            raise ValueError(f"kernel name: {label} {t!r} is not one of {', '.join(TYPES)}")
    _isa.get(isa)
    if not re.fullmatch(_PLAN, plan):
        raise ValueError(f"kernel name: plan {plan!r} must be lower-case words joined by single '_'")
    name = f"mlaref_{op}_{type_x}" + (f"_{type_y}" if type_y else "") + f"__{isa}_{plan}"
    back = parse(name)
    if back != KernelName(op, type_x, type_y, isa, plan):  # pragma: no cover - guards the grammar itself
        raise AssertionError(f"kernel name {name!r} does not parse back to its parts")
    return name


def parse(name: str) -> KernelName:
    """The parts of ``name``; ValueError when ``name`` is not in the grammar."""
    m = _NAME_RE.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a kernel name: expected mlaref_<op>_<type_x>[_<type_y>]__<isa>_<plan>")
    return KernelName(m["op"], m["tx"], m["ty"], m["isa"], m["plan"])


def grammar() -> str:
    """The grammar as text for the naming docs page, built from the tables above."""
    return "\n".join([
        'name   = "mlaref_" op "_" type_x [ "_" type_y ] "__" isa "_" plan',
        "op     = " + " | ".join(f'"{o}"' for o in OPS),
        "type   = " + " | ".join(f'"{t}"' for t in TYPES),
        "isa    = " + " | ".join(f'"{t}"' for t in _isa.all_tokens()),
        "plan   = word { \"_\" word } ;  word = [a-z0-9]+",
    ])
