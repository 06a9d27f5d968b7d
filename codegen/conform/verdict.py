"""The verdict of a conformance case: the spec's output against the library's, and the record of the case.

================================  =================================================================================
verdict                           meaning
================================  =================================================================================
``bit-exact``                     equal bytes (f32 outputs compared as their 32-bit patterns)
``within NMSE bound (v <= b)``    not equal, but NMSE(lib, spec) = sum((lib - spec)^2) / sum(spec^2) <= b, where
                                  the spec does not model the library's float order; b is ggml test-backend-ops'
                                  bound: 1e-7, 5e-4 for mul_mat and flash_attn_ext
``mismatch (...)``                the first differing element (index, spec bits vs library bits, ulps), the count of
                                  differing elements and the NMSE
``unsupported (...)``             one side does not define the case (the reason says which and why)
``aborted (...)``                 the library killed its worker (signal, ggml's last stderr line) or timed out
================================  =================================================================================

A mismatch or abort is *explained* only when the case's ``known`` entry covers it; a worker death of an
``upstream-lacks`` case becomes ``unsupported``, with the signal as evidence.
"""

from __future__ import annotations

import numpy as np

from mlaref.codegen.conform.case import Case
from mlaref.codegen.conform.outputs import Output
from mlaref.reference import get_type
from mlaref.reference.compare import nmse, ulps

STATUSES = ("bit-exact", "within NMSE bound", "mismatch", "unsupported", "aborted")


_BITS = {"f32": np.uint32, "i32": np.uint32, "f16": np.uint16, "bf16": np.uint16}


def compare(spec: Output, lib: Output, expect: str, bound: float) -> dict:
    """The verdict fields of one comparison (status, text, nmse, first difference)."""
    if spec.kind != lib.kind or spec.data.size != lib.data.size:
        return {"status": "mismatch", "text": f"mismatch (spec gives {spec.kind} {tuple(spec.shape)}, the library "
                                              f"{lib.kind} {tuple(lib.shape)})", "nmse": None}
    if np.array_equal(spec.data, lib.data):
        return {"status": "bit-exact", "text": "bit-exact", "nmse": 0.0}
    err = nmse(lib.values, spec.values) if spec.values.size == lib.values.size else float("inf")
    if expect == "nmse" and err <= bound:
        return {"status": "within NMSE bound", "text": f"within NMSE bound ({err:.3g} <= {bound:g})", "nmse": err}
    if spec.kind in _BITS:
        dt = _BITS[spec.kind]
        sb, lb = spec.data.view(dt), lib.data.view(dt)
        diff = np.nonzero(sb != lb)[0]
        i = int(diff[0])
        idx = np.unravel_index(i, spec.shape)
        width = 8 * np.dtype(dt).itemsize
        first = {"index": [int(v) for v in idx], "spec_bits": f"0x{int(sb[i]):0{width // 4}x}",
                 "lib_bits": f"0x{int(lb[i]):0{width // 4}x}", "ulps": ulps(int(sb[i]), int(lb[i]), width)}
        where = (f"element {first['index']} (NumPy order): spec {first['spec_bits']} vs ggml {first['lib_bits']}, "
                 f"{first['ulps']} ulp")
        count = f"{diff.size} of {sb.size} elements differ"
    else:
        diff = np.nonzero(spec.data != lib.data)[0]
        i = int(diff[0])
        ts = get_type(spec.kind).type_size
        row_bytes = spec.shape[-1]
        r, off = divmod(i, row_bytes)
        blk, byte = divmod(off, ts)
        s, lval = int(spec.data[i]), int(lib.data[i])
        first = {"row": r, "block": blk, "byte": byte, "spec_byte": f"0x{s:02x}", "lib_byte": f"0x{lval:02x}",
                 "bits": bin(s ^ lval).count("1")}
        where = (f"row {r} block {blk} byte {byte}: spec 0x{s:02x} vs ggml 0x{lval:02x} "
                 f"({first['bits']} bits differ)")
        count = f"{diff.size} of {spec.data.size} bytes differ"
    nm = "" if not np.isfinite(err) else f"; NMSE {err:.3g}"
    if expect == "nmse":
        nm += f" > bound {bound:g}"
    return {"status": "mismatch", "text": f"mismatch ({where}; {count}{nm})", "nmse": err, "first": first}


def verdict_for(case: Case, res: dict) -> dict:
    """The full verdict record of ``case`` from the worker's fields (a death becomes aborted / unsupported)."""
    v = {"id": case.id, "op": case.op, "types": case.types(), "expect": case.expect, "bound": case.nmse_bound}
    if "died" in res:
        known = case.known or {}
        if known.get("kind") == "upstream-lacks":
            v.update(status="unsupported", text=f"unsupported ({known['text']}; confirmed: the worker died, "
                                                f"{res['died']})")
        else:
            v.update(status="aborted", text=f"aborted ({res['died']})")
        v["nmse"] = None
    else:
        v.update({k: res[k] for k in ("status", "text", "nmse") if k in res})
        if "first" in res:
            v["first"] = res["first"]
    v["seconds"] = res.get("seconds")
    if case.note:
        v["note"] = case.note
    if case.known and v["status"] in ("mismatch", "aborted"):
        v["text"] += f" [{case.known['kind']}: {case.known['text']}]"
    v["explained"] = v["status"] in ("bit-exact", "within NMSE bound", "unsupported") or bool(case.known)
    return v
