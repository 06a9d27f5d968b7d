"""ggml tensor types: one block format per file, registered by subclassing ``BlockFormat``.

Every module of this package is imported here, and importing a module registers the formats it defines,
so adding a format is adding a file. ``get_type(name)`` returns the registered format object.
"""

import importlib
import pkgutil

from mlaref.reference.types._base import VARIANTS, BlockFormat, registry

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["VARIANTS", "BlockFormat", "get_type", "registry"]


def get_type(name) -> BlockFormat:
    """The format called ``name`` (``"q8_0"``, ``"f16"``, ...); a format object is returned as is."""
    if isinstance(name, BlockFormat):
        return name
    formats = registry()
    if not isinstance(name, str) or name not in formats:
        raise ValueError(f"unknown tensor type {name!r}; known: {', '.join(sorted(formats))}")
    return formats[name]
