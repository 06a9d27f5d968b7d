"""The old import path of the GGUF reader and writer, kept for users: :mod:`mlaref.reference.gguf`, re-exported.

The module became the package :mod:`mlaref.reference.gguf` (scan, reader, loader, typemap, presets, writer,
errors); :func:`kv_cache_plan` is the allocator model's (:mod:`mlaref.reference.graphs.alloc`) and
``mlaref inspect`` is :mod:`mlaref.codegen.cli.inspect`. The names below are the same objects as there.
"""

from __future__ import annotations

from mlaref.reference.gguf import (
    ARCH,
    PRESETS,
    BadHeader,
    BadMagic,
    BadValue,
    GGUFError,
    KeyTypeMismatch,
    MisalignedTensor,
    MissingKey,
    MissingTensor,
    Model,
    OverlappingTensors,
    ShapeMismatch,
    ShapeOverflow,
    TensorInfo,
    TensorOutOfBounds,
    Truncated,
    UnknownTensorType,
    UnsupportedVersion,
    expected_tensors,
    mlaref_type_name,
    open_gguf,
    read_hparams,
    synthetic_hparams,
    synthetic_types,
    write_synthetic,
)
from mlaref.reference.graphs.alloc import kv_cache_plan

__all__ = [
    "GGUFError", "BadMagic", "UnsupportedVersion", "Truncated", "BadHeader", "KeyTypeMismatch", "MissingKey",
    "BadValue", "TensorOutOfBounds", "OverlappingTensors", "MisalignedTensor", "ShapeOverflow",
    "UnknownTensorType", "ShapeMismatch", "MissingTensor",
    "ARCH", "TensorInfo", "Model", "open_gguf", "read_hparams", "expected_tensors", "mlaref_type_name",
    "PRESETS", "synthetic_hparams", "synthetic_types", "write_synthetic", "kv_cache_plan",
]
