"""report.json's conventions: the schema file and id, a figure as ``{value, unit, method}``, the JSON encoder.

Every figure of the report carries its unit and how it was obtained (:func:`quantity`); timings carry their
median, min and max (:meth:`mlaref.codegen.bench.method.Timing.to_json`). ``report.schema.json`` (next to this
file) is the JSON Schema every report.json follows; ``tests/report`` validates the report against it.
"""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = ["SCHEMA_PATH", "SCHEMA_ID", "quantity", "json_default"]

SCHEMA_PATH = pathlib.Path(__file__).resolve().parent / "report.schema.json"
SCHEMA_ID = "mlaref-report/1"


def quantity(value, unit: str, method: str) -> dict:
    """A figure with its unit and how it was obtained."""
    return {"value": value, "unit": unit, "method": method}


def json_default(o):
    """``json.dump``'s ``default``: NumPy scalars as Python numbers, sets and tuples as lists."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
