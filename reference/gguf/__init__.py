"""GGUF in and out: read real DeepSeek-V2 GGUF files through ``gguf`` and write small synthetic ones.

One job per module:

* :mod:`.scan`: the bounded sanity scan of the header (nothing allocated beyond what the file size bounds);
* :mod:`.reader`: :func:`open_gguf`, the scan then ``gguf.GGUFReader``: a :class:`Model` of zero-copy tensors;
* :mod:`.loader`: llama.cpp's deepseek2 loader: :func:`read_hparams` and :func:`expected_tensors`;
* :mod:`.typemap`: ggml type ids <-> mlaref type names;
* :mod:`.presets`: the writer's presets (shapes from :data:`mlaref.reference.hparams.PRESETS`, weight types);
* :mod:`.writer`: :func:`write_synthetic`;
* :mod:`.errors`: :class:`GGUFError` and one subclass per rule a file can break.

The memory plan of an opened file (:func:`mlaref.reference.graphs.alloc.kv_cache_plan`) belongs to the allocator
model; ``mlaref inspect`` is :mod:`mlaref.codegen.cli.inspect`.
"""

from __future__ import annotations

from mlaref.reference.gguf.errors import (
    BadHeader,
    BadMagic,
    BadValue,
    GGUFError,
    KeyTypeMismatch,
    MisalignedTensor,
    MissingKey,
    MissingTensor,
    OverlappingTensors,
    ShapeMismatch,
    ShapeOverflow,
    TensorOutOfBounds,
    Truncated,
    UnknownTensorType,
    UnsupportedVersion,
)
from mlaref.reference.gguf.loader import ARCH, expected_tensors, read_hparams
from mlaref.reference.gguf.presets import PRESETS, synthetic_hparams, synthetic_types
from mlaref.reference.gguf.reader import Model, TensorInfo, open_gguf
from mlaref.reference.gguf.typemap import gguf_type, mlaref_type_name
from mlaref.reference.gguf.writer import write_synthetic

__all__ = [
    "GGUFError", "BadMagic", "UnsupportedVersion", "Truncated", "BadHeader", "KeyTypeMismatch", "MissingKey",
    "BadValue", "TensorOutOfBounds", "OverlappingTensors", "MisalignedTensor", "ShapeOverflow",
    "UnknownTensorType", "ShapeMismatch", "MissingTensor",
    "ARCH", "TensorInfo", "Model", "open_gguf", "read_hparams", "expected_tensors", "mlaref_type_name", "gguf_type",
    "PRESETS", "synthetic_hparams", "synthetic_types", "write_synthetic",
]
