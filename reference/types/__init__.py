"""ggml tensor types: one block format per file, registered by subclassing ``BlockFormat``.

``get_type(name)`` returns the registered format object; ``registry()`` all of them.
"""

from mlaref.reference.types._base import VARIANTS, BlockFormat, registry
from mlaref.reference.types import q8_0  # noqa: F401  (each import registers its format)

__all__ = ["VARIANTS", "BlockFormat", "get_type", "registry"]


def get_type(name) -> BlockFormat:
    """The format called ``name`` (``"q8_0"``, ``"f16"``, ...); a format object is returned as is."""
    if isinstance(name, BlockFormat):
        return name
    formats = registry()
    if not isinstance(name, str) or name not in formats:
        raise ValueError(f"unknown tensor type {name!r}; known: {', '.join(sorted(formats))}")
    return formats[name]
