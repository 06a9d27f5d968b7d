"""mul_mat: ``dst = a · b`` over ggml tensors, with src1 converted to the weight's vec_dot type first.

Shapes (``ggml_mul_mat``, upstream facts §4a): a = src0 ``[K, M, ne02, ne03]``, b = src1 ``[K, N, ne12, ne13]`` with
``ne12 % ne02 == 0`` and ``ne13 % ne03 == 0``; dst is always **f32** ``[M, N, ne12, ne13]``, contiguous:
    dst[i13, i12, i11, i01] = vec_dot(a row (i01, i12 // r2, i13 // r3), converted b row (i11, i12, i13))

with ``r2 = ne12 / ne02``, ``r3 = ne13 / ne03`` (integer division: consecutive src1 matrices share one src0
matrix). a's elements must be contiguous in each row (``nb00 == type_size``), b's likewise; any other strides
and view offsets are honoured.

Two versions, as ONNX versions an op whose semantics change (style.md 1):

* :class:`MulMat_pre253` (ggml before ik_llama.cpp PR #253, and upstream ggml): src1 must be f32 or already the
  vec_dot type. f32 rows are converted with the vec_dot type's ``from_float`` (``variant``: ``"x86"`` is
  upstream ggml's x86 CPU ``from_float``, ``"ref"`` the reference quantizer).
* :class:`MulMat_253` (``ggml.c@676f0e71b``, ``iqk_quantize_any``): any src1 type. A src1 row that is neither
  f32 nor the vec_dot type is widened with ``to_float`` (exact for f16/bf16, the dequantized values for block
  types) and then converted with ``from_float``. The per-thread scratch row changes nothing numerically.

The vec_dot type per weight type (``VEC_DOT_TYPE``, read from each format's ``vec_dot_type`` in the registry) is
ggml's column without IQK (upstream facts §4a): f32 -> f32, f16 -> f16 (so an f16 weight rounds an f32 src1 to
f16), bf16 -> bf16, q4_0/q5_0/q8_0/iq4_nl -> q8_0, q4_1/q5_1 -> q8_1, q4_K/q6_K -> q8_K (upstream's x86
``from_float`` of q8_K is its reference quantizer: variant ``x86``). A ``vec_dot_type`` argument selects another
accepted y layout (``q8_0_x4`` / ``q8_1_x4``).

Every dot product is :func:`mlaref.reference.ops.vec_dot.vec_dot` under ``plan``, so the result is bit-exact
with any implementation of that plan; threads in ggml split only rows (upstream facts §7), which changes nothing.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from mlaref.reference.ops._common import check_tensor
from mlaref.reference.ops.vec_dot import supported_pairs, vec_dot
from mlaref.reference.plan import get_plan
from mlaref.reference.tensor import Tensor
from mlaref.reference.types import registry
from mlaref.reference import get_type, quantize

__all__ = ["MulMat_pre253", "MulMat_253", "mul_mat", "VEC_DOT_TYPE"]

# weight type -> its vec_dot type, for every registered format that has a vec_dot with that type (read-only)
VEC_DOT_TYPE = MappingProxyType({
    name: fmt.vec_dot_type for name, fmt in sorted(registry().items())
    if fmt.vec_dot_type is not None and f"{name}.{fmt.vec_dot_type}" in supported_pairs()
})


def _from_float(values: np.ndarray, type: str, variant: str) -> np.ndarray:
    """float32 rows (R, K) -> uint8 rows of ``type`` (the ``from_float`` of that type)."""
    if type == "f32":
        return np.ascontiguousarray(values, dtype=np.float32).view(np.uint8)

    fmt = get_type(type)  # raises a clear ValueError if the format is not registered
    if variant not in fmt.variants:
        raise ValueError(f"mul_mat: {type} has no from_float variant {variant!r}; it has {', '.join(fmt.variants)}")
    return quantize(np.ascontiguousarray(values, dtype=np.float32), type, variant=variant)

def _rows(t: Tensor, i2: int, i3: int) -> np.ndarray:
    """The rows of matrix (i2, i3) of ``t`` as uint8 (ne1, row_bytes), following the strides."""
    return np.stack([t.row(i1, i2, i3) for i1 in range(t.ne[1])]) if t.ne[1] else \
        np.zeros((0, t.row_size()), np.uint8)

class _MulMat:
    """Shared checks and loop; subclasses say which src1 types they take."""

    version = ""

    def __init__(self, plan="ggml_generic", variant: str = "x86", vec_dot_type: str | None = None):
        self.plan = get_plan(plan)
        if not isinstance(variant, str):
            raise TypeError(f"{self.version}: variant must be a str, got {type(variant).__name__}")
        self.variant = variant
        self.vec_dot_type = vec_dot_type

    def _vdt(self, a: Tensor) -> str:
        if a.type not in VEC_DOT_TYPE:
            raise ValueError(f"{self.version}: src0 type {a.type} is not supported; "
                             f"supported: {', '.join(VEC_DOT_TYPE)}")
        vdt = self.vec_dot_type or VEC_DOT_TYPE[a.type]
        if f"{a.type}.{vdt}" not in supported_pairs():
            raise ValueError(f"{self.version}: vec_dot_type {vdt!r} does not go with src0 type {a.type}")
        return vdt

    def _check(self, a: Tensor, b: Tensor) -> None:
        check_tensor(self.version, "a (src0)", a)
        check_tensor(self.version, "b (src1)", b)
        if a.ne[0] != b.ne[0]:
            raise ValueError(f"{self.version}: a.ne[0] ({a.ne[0]}) must equal b.ne[0] ({b.ne[0]}) (ggml_can_mul_mat)")
        if b.ne[2] % a.ne[2] or b.ne[3] % a.ne[3]:
            raise ValueError(f"{self.version}: b.ne[2:4] {b.ne[2:]} must be multiples of a.ne[2:4] {a.ne[2:]} "
                             "(ggml_can_mul_mat broadcasts src0)")
        if a.nb[0] != a.type_size:
            raise ValueError(f"{self.version}: a must not be transposed (nb[0] {a.nb[0]} != type size {a.type_size})")
        if b.nb[0] != b.type_size:
            raise ValueError(f"{self.version}: the elements of b's rows must be contiguous "
                             f"(nb[0] {b.nb[0]} != type size {b.type_size})")

    def _convert(self, b_rows: np.ndarray, b_type: str, vdt: str, K: int) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        self._check(a, b)
        vdt = self._vdt(a)
        K, M = a.ne[0], a.ne[1]
        N, ne12, ne13 = b.ne[1], b.ne[2], b.ne[3]
        r2, r3 = ne12 // a.ne[2], ne13 // a.ne[3]
        dst = Tensor.zeros("f32", (M, N, ne12, ne13))
        out = dst.storage()
        cache: dict = {}
        for i13 in range(ne13):
            for i12 in range(ne12):
                key = (i12 // r2, i13 // r3)
                if key not in cache:
                    cache = {key: _rows(a, *key)}  # consecutive src1 matrices share one src0 matrix
                y = self._convert(_rows(b, i12, i13), b.type, vdt, K)
                out[i13, i12] = vec_dot(cache[key], a.type, y, vdt, K, self.plan).T
        return dst

class MulMat_pre253(_MulMat):
    """mul_mat before PR #253: src1 is f32 (converted with ``from_float``) or already the vec_dot type."""

    version = "MulMat_pre253"

    def _convert(self, b_rows, b_type, vdt, K):
        if b_type == vdt:
            return b_rows
        if b_type != "f32":
            raise ValueError(f"MulMat_pre253: src1 must be f32 or the vec_dot type {vdt}, got {b_type} "
                             "(non-f32 src1 needs PR #253: use MulMat_253)")
        return _from_float(np.ascontiguousarray(b_rows).view(np.float32).reshape(b_rows.shape[0], K), vdt, self.variant)

class MulMat_253(_MulMat):
    """mul_mat at ik_llama.cpp@676f0e71b: any src1 type, each row to_float then the vec_dot type's from_float."""

    version = "MulMat_253"

    def _convert(self, b_rows, b_type, vdt, K):
        if b_type == vdt:
            return b_rows
        if b_type == "f32":
            values = np.ascontiguousarray(b_rows).view(np.float32).reshape(b_rows.shape[0], K)
        else:
            values = Tensor.from_bytes(np.ascontiguousarray(b_rows), b_type, (K, b_rows.shape[0])).to_numpy()
            values = values.reshape(b_rows.shape[0], K)
        return _from_float(values, vdt, self.variant)

def mul_mat(a: Tensor, b: Tensor, *, plan="ggml_generic", variant: str = "x86",
            vec_dot_type: str | None = None) -> Tensor:
    """``ggml_mul_mat(a, b)`` as of PR #253 (:class:`MulMat_253`): dst f32 ``[a.ne1, b.ne1, b.ne2, b.ne3]``."""
    return MulMat_253(plan=plan, variant=variant, vec_dot_type=vec_dot_type)(a, b)
