"""The generated kernels as Python functions: the reference's ops plus ``isa=`` and ``n_threads=``.

Row kernels (quantize, dequantize, convert, vec_dot, concat, repeat, cpy) are in :mod:`.rows`, with the launch
helpers every kernel call shares (``resolve``, ``split``, ``address``, ``streams``); ``mul_mat``,
``flash_attn_ext`` and the chunked variant's ``flash_attn_ext_partial`` / ``fa_merge`` are in :mod:`.mm`; the C
thread pool behind ``n_threads > 1`` is :mod:`.pool`, and :mod:`.impls` binds kernels to the graph executor. This
package re-exports the public API of :mod:`.rows` and :mod:`.mm`, which is what users import
(``from mlaref.codegen import kernels``).
"""

from mlaref.codegen.kernels.mm import (
    FA_PLAN,
    MM_PLAN,
    fa_merge,
    fa_plan,
    flash_attn_ext,
    flash_attn_ext_partial,
    mul_mat,
)
from mlaref.codegen.kernels.rows import (
    GEOMETRY,
    DispatchError,
    address,
    concat,
    convert,
    cpy,
    dequantize,
    geometry,
    quantize,
    repeat,
    resolve,
    split,
    streams,
    vec_dot,
)

__all__ = [
    "quantize", "dequantize", "convert", "vec_dot", "concat", "repeat", "cpy", "mul_mat", "flash_attn_ext",
    "flash_attn_ext_partial", "fa_merge",
    "resolve", "geometry", "split", "address", "streams", "DispatchError", "GEOMETRY", "FA_PLAN", "MM_PLAN",
    "fa_plan",
]
