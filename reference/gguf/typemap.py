"""Type names between gguf-py and mlaref: a ggml type id to mlaref's name and back, checked on block geometry."""

from __future__ import annotations

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from mlaref.reference import registry
from mlaref.reference.tensor import ELEMENT_TYPES, type_geometry

__all__ = ["mlaref_type_name", "gguf_type"]

_ELEMENT_IDS = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
                "bf16": GGMLQuantizationType.BF16, "i32": GGMLQuantizationType.I32}


def mlaref_type_name(gtype: GGMLQuantizationType) -> str | None:
    """The mlaref type name of a ggml type, or None when mlaref does not implement it.

    Element types come from :data:`mlaref.reference.tensor.ELEMENT_TYPES`; block types from the format
    registry, matched on both the ggml type id and the name (``Q4_K`` is ``q4_K``). A type whose geometry in
    gguf-py's ``GGML_QUANT_SIZES`` differs from mlaref's is not mapped: gguf 0.19.0 lists Q8_1 as 40 bytes per
    block while ggml's ``block_q8_1`` (two f16 + 32 int8) is 36, so GGUFReader would slice such tensors wrongly.
    """
    for name, gid in _ELEMENT_IDS.items():
        if gid == gtype and name in ELEMENT_TYPES:
            return name
    for name, fmt in registry().items():
        if getattr(fmt, "ggml_type", None) == int(gtype) and name.lower() == gtype.name.lower():
            if (fmt.block_size, fmt.type_size) != GGML_QUANT_SIZES[gtype]:
                return None  # gguf-py's size table disagrees (Q8_1: 40 B there, 36 B in ggml): cannot map it
            return name
    return None


def gguf_type(name: str) -> GGMLQuantizationType:
    """The gguf-py enum member of an mlaref type name (``q4_K`` -> ``Q4_K``), checked against its geometry."""
    for t in GGMLQuantizationType:
        if t.name.lower() == name.lower():
            if type_geometry(name) != GGML_QUANT_SIZES[t]:
                raise ValueError(
                    f"type {name!r}: gguf-py's GGML_QUANT_SIZES gives {GGML_QUANT_SIZES[t]} (block, bytes), mlaref "
                    f"{type_geometry(name)}; GGUF files of it would be misread"
                )
            return t
    raise ValueError(f"type {name!r} has no GGUF type id in gguf-py")

