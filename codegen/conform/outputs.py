"""What every conformance op module shares: the Output record, Unsupported, and the spec-call guard."""

from __future__ import annotations

import dataclasses

import numpy as np

from mlaref.reference import dequantize, fp

__all__ = ["Unsupported", "Output", "out_f32", "out_tensor", "out_rows", "spec_call"]


class Unsupported(Exception):
    """One side does not define the case; the message says which side and why."""


@dataclasses.dataclass
class Output:
    """An op's result as stored values: ``kind`` is ``f32`` / ``f16`` / ``bf16`` (element bits) or a block type
    (bytes, compared byte by byte); ``values`` float32 values for the NMSE (dequantized for block types)."""

    kind: str
    data: np.ndarray  # uint8 bytes, C order
    shape: tuple  # NumPy shape of the elements (or of the rows of bytes for block types)
    values: np.ndarray


def out_f32(arr: np.ndarray) -> Output:
    """A float32 NumPy array -> Output."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return Output("f32", arr.view(np.uint8).reshape(-1), arr.shape, arr)


def out_tensor(t) -> Output:
    """A contiguous mlaref Tensor -> Output."""
    raw = t.raw()
    if t.type in ("f32", "f16", "bf16", "i32"):
        return Output(t.type, raw.reshape(-1), (t.ne[3], t.ne[2], t.ne[1], t.ne[0]),
                      t.to_numpy().astype(np.float32))
    return Output(t.type, raw.reshape(-1), raw.shape, t.to_numpy())


def out_rows(kind: str, rows: np.ndarray, n: int) -> Output:
    """uint8 rows of a block or element type -> Output (values by the spec's dequantize)."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    if kind == "f32":
        v = rows.view(np.float32).reshape(rows.shape[0], n)
        return Output("f32", rows.reshape(-1), v.shape, v.copy())
    if kind in ("f16", "bf16"):
        bits = rows.view(np.uint16).reshape(rows.shape[0], n)
        v = fp.f16_to_f32(bits) if kind == "f16" else fp.bf16_to_f32(bits)
        return Output(kind, rows.reshape(-1), v.shape, v)
    return Output(kind, rows.reshape(-1), rows.shape, dequantize(rows, kind))


def spec_call(fn, *args, **kwargs):
    """Call the spec; its TypeError/ValueError (the spec does not define this case) becomes Unsupported."""
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise Unsupported(f"the spec does not define it: {exc}") from None
