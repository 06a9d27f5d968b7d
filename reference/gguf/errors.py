"""The errors of the GGUF reader: one :class:`GGUFError` subclass per rule a file can break.

Every message names the file, the place (key, tensor, byte offset) and the rule broken; the rules are those of
ggml's and llama.cpp's loaders (see :mod:`mlaref.reference.gguf.scan` and :mod:`mlaref.reference.gguf.loader`).
"""

from __future__ import annotations

__all__ = [
    "GGUFError", "BadMagic", "UnsupportedVersion", "Truncated", "BadHeader", "KeyTypeMismatch", "MissingKey",
    "BadValue", "TensorOutOfBounds", "OverlappingTensors", "MisalignedTensor", "ShapeOverflow",
    "UnknownTensorType", "ShapeMismatch", "MissingTensor",
]


class GGUFError(ValueError):
    """A GGUF file mlaref refuses; the message names the file, the place and the rule broken."""


class BadMagic(GGUFError):
    """The first four bytes are not ``GGUF``."""


class UnsupportedVersion(GGUFError):
    """A version other than 2 or 3, or a big-endian file."""


class Truncated(GGUFError):
    """The file ends inside the header, or a count/length needs more bytes than the file has left."""


class BadHeader(GGUFError):
    """Malformed metadata: unknown value type, nested array, invalid UTF-8, duplicate or over-long name,
    more than 4 dims, bad alignment value."""


class KeyTypeMismatch(GGUFError):
    """A known key holds a value of the wrong GGUF type (llama.cpp: "key ... has wrong type")."""


class MissingKey(GGUFError):
    """A key llama.cpp requires is absent."""


class BadValue(GGUFError):
    """A hyper-parameter outside the range llama.cpp accepts (e.g. ``n_expert_used > n_expert``)."""


class TensorOutOfBounds(GGUFError):
    """A tensor's bytes extend past the end of the file."""


class OverlappingTensors(GGUFError):
    """Two tensors' byte ranges overlap."""


class MisalignedTensor(GGUFError):
    """A tensor offset is not a multiple of ``general.alignment``."""


class ShapeOverflow(GGUFError):
    """A dimension is negative as int64, or the element count reaches INT64_MAX."""


class UnknownTensorType(GGUFError):
    """A ggml type id that neither ggml (as gguf-py knows it) nor mlaref defines."""


class ShapeMismatch(GGUFError):
    """A tensor's shape disagrees with its type's block size or with the hyper-parameters."""


class MissingTensor(GGUFError):
    """A tensor llama.cpp requires for this architecture is absent."""
