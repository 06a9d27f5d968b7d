"""Ops, one per file: NumPy reference implementations of ggml's CPU ops that take and return Tensors.

Each op module defines a public function of the module's name (``concat.concat``, ``rope.rope``, ...), re-exported
here so that ``mlaref.reference.ops.<name>`` is the op. Versioned classes (``Concat_pre253`` / ``Concat_253``,
``Repeat_pre253`` / ``Repeat_253``) stay in their modules.
"""

import importlib
import pkgutil

from mlaref.reference.ops.add import add
from mlaref.reference.ops.concat import concat
from mlaref.reference.ops.cpy import cast, cpy, dup
from mlaref.reference.ops.fused_rms_norm import fused_rms_norm
from mlaref.reference.ops.get_rows import get_rows
from mlaref.reference.ops.mul import mul
from mlaref.reference.ops.repeat import repeat
from mlaref.reference.ops.rms_norm import rms_norm
from mlaref.reference.ops.rope import rope
from mlaref.reference.ops.scale import scale
from mlaref.reference.ops.soft_max import soft_max

__all__ = [
    "add", "cast", "concat", "cpy", "dup", "fused_rms_norm", "get_rows", "mul", "repeat", "rms_norm", "rope",
    "scale", "soft_max",
]

# The other op modules (vec_dot, mul_mat, flash_attn_ext, ...) export a function of their module's name too.
# Importing a submodule binds the module object to the package attribute of that name, so every op name is
# (re)bound to its function here, after all imports.
for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name.startswith("_"):
        continue
    _mod = importlib.import_module(f"{__name__}.{_m.name}")
    if callable(getattr(_mod, _m.name, None)):
        globals()[_m.name] = getattr(_mod, _m.name)
        if _m.name not in __all__:
            __all__.append(_m.name)
