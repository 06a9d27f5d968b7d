"""Single ggml ops of any peer, run through the harness loaded in this process (:mod:`.harness`).

The functions have the names and signatures of :mod:`mlaref.codegen.peers.ggml_ops` (which runs ggml-python's
build through its bindings), so a caller picks a module and calls the same code: each builds a small graph of
the peer's own API calls over the inputs (views with the inputs' ``ne`` / ``nb`` / offset), computes it with
``ggml_graph_compute_with_ctx`` and returns contiguous mlaref Tensors. :func:`build` describes the loaded
library (:class:`~mlaref.reference.builds.GgmlBuild` from its compiled ``ggml_cpu_has_*`` and the tuning in its
build record).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import harness
from mlaref.reference.builds import FEATURES, GgmlBuild
from mlaref.reference.tensor import Tensor

__all__ = [
    "add",
    "build",
    "cast",
    "concat",
    "cpy",
    "dequantize_row_symbol",
    "flash_attn_ext",
    "from_float",
    "from_float_ref",
    "get_rows",
    "has_trait",
    "has_type",
    "mul",
    "mul_mat",
    "mul_mat_supported",
    "peer_name",
    "quantize_chunk",
    "quantize_row_symbol",
    "record",
    "repeat",
    "rms_norm",
    "rope_ext",
    "scale",
    "soft_max_ext",
    "to_float",
    "unary",
    "vec_dot",
    "vec_dot_type",
]

# ggml_cpu_has_<name> -> mlaref.reference.builds feature names
_HAS = {"sse3": ("sse3",), "ssse3": ("ssse3",), "avx": ("avx",), "avx2": ("avx2",), "fma": ("fma",),
        "f16c": ("f16c",), "bmi2": ("bmi2",), "avx512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
        "avx512_vnni": ("avx512_vnni",), "avx512_bf16": ("avx512_bf16",), "neon": ("neon",),
        "dotprod": ("dotprod",), "fp16_va": ("fp16_va",), "llamafile": ("llamafile",)}


def _h() -> harness.Harness:
    return harness.loaded()


def peer_name() -> str:
    return _h().info["peer"]


def record() -> dict:
    """The build record (``mlaref-build.json``) beside the loaded peer's libraries, or {}."""
    p = Path(_h().path).parents[2] / "lib" / peer_build.RECORD
    return json.loads(p.read_text()) if p.exists() else {}


def build() -> GgmlBuild:
    """The loaded library as a :class:`GgmlBuild`: the features its ``ggml_cpu_has_*`` report (compile time), the
    tuning of its record. ik_llama.cpp reports no ``bmi2``; its CMake turns BMI2 on with AVX2 (like upstream)."""
    feats = set()
    has = _h().info["features"]
    for name, stands_for in _HAS.items():
        if has.get(name):
            feats.update(stands_for)
    if "avx" in feats:
        feats.add("sse4_2")
    if "avx2" in feats and "bmi2" not in has:
        feats.add("bmi2")
    feats &= set(FEATURES)
    rec = record()
    tune = rec.get("tune", "generic")
    level = rec.get("level", "native")
    return GgmlBuild(frozenset(feats), tune, level if tune == "generic" else f"{level}/{tune}")


def has_type(name: str) -> bool:
    return name in _h().types


def has_trait(name: str, field: str) -> bool:
    """Whether the type traits of ``name`` have ``field`` (to_float, from_float, from_float_ref, vec_dot)."""
    return _h().has(name, field)


def vec_dot_type(name: str) -> str:
    return _h().vec_dot_type(name)


def from_float(name: str, x: np.ndarray) -> np.ndarray:
    return _h().from_float(name, x)


def from_float_ref(name: str, x: np.ndarray) -> np.ndarray:
    return _h().from_float(name, x, ref=True)


def to_float(name: str, data: np.ndarray, n: int) -> np.ndarray:
    return _h().to_float(name, data, n)


def vec_dot(name: str, x: np.ndarray, y: np.ndarray, n: int) -> np.float32:
    return np.float32(_h().vec_dot(name, x, y, n))


def quantize_chunk(name: str, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    return _h().quantize_chunk(name, x, imatrix)


def quantize_row_symbol(func: str, name: str, x: np.ndarray) -> np.ndarray:
    return _h().quantize_row_symbol(func, name, x)


def dequantize_row_symbol(func: str, data: np.ndarray, n: int) -> np.ndarray:
    return _h().dequantize_row_symbol(func, data, n)


def _one(op: str, *tensors, n_threads=1, ip=(), fp=(), extra=None):
    g = _h().graph()
    ids = [None if t is None else g.input(t) for t in tensors]
    if extra is not None:
        ids.append(extra(g))
    node = g.op(op, *ids, ip=ip, fp=fp)
    return g.run([node], n_threads=n_threads)[0]


def cpy(a: Tensor, dst, *, n_threads: int = 1) -> Tensor:
    """``ggml_cpy(a, dst)``; ``dst`` a type name makes a new contiguous tensor of ``a``'s shape."""
    if isinstance(dst, str):
        return _one("cpy", a, n_threads=n_threads, extra=lambda g: g.new(dst, a.ne))
    return _one("cpy", a, dst, n_threads=n_threads)


def cast(a: Tensor, type: str, *, n_threads: int = 1) -> Tensor:
    """``ggml_cast(a, type)`` (= ``ggml_cpy`` into a new tensor of ``type``)."""
    return cpy(a, type, n_threads=n_threads)


def concat(a: Tensor, b: Tensor, dim: int, *, n_threads: int = 1) -> Tensor:
    return _one("concat", a, b, n_threads=n_threads, ip=(dim,))


def repeat(a: Tensor, ne, *, n_threads: int = 1) -> Tensor:
    """``ggml_repeat(a, b)`` with ``b`` a new tensor of shape ``ne`` (only its shape is read)."""
    return _one("repeat", a, n_threads=n_threads, extra=lambda g: g.new(a.type, tuple(ne)))


def get_rows(a: Tensor, rows: Tensor, *, n_threads: int = 1) -> Tensor:
    return _one("get_rows", a, rows, n_threads=n_threads)


def add(a: Tensor, b: Tensor, *, n_threads: int = 1) -> Tensor:
    return _one("add", a, b, n_threads=n_threads)


def mul(a: Tensor, b: Tensor, *, n_threads: int = 1) -> Tensor:
    return _one("mul", a, b, n_threads=n_threads)


def scale(a: Tensor, s: float, *, n_threads: int = 1) -> Tensor:
    return _one("scale", a, n_threads=n_threads, fp=(s,))


def rms_norm(a: Tensor, eps: float, *, n_threads: int = 1) -> Tensor:
    return _one("rms_norm", a, n_threads=n_threads, fp=(eps,))


def rope_ext(a: Tensor, pos: Tensor, n_dims: int, mode: int, n_ctx_orig: int, freq_base: float, freq_scale: float,
             ext_factor: float, attn_factor: float, beta_fast: float, beta_slow: float, *,
             n_threads: int = 1) -> Tensor:
    """``ggml_rope_ext(a, pos, NULL, ...)`` (no frequency factors)."""
    return _one("rope_ext", a, pos, n_threads=n_threads, ip=(n_dims, mode, n_ctx_orig),
                fp=(freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow))


def soft_max_ext(a: Tensor, mask: Tensor | None, scale: float, max_bias: float, *, n_threads: int = 1) -> Tensor:
    return _one("soft_max_ext", a, mask, n_threads=n_threads, fp=(scale, max_bias))


def unary(a: Tensor, op: str, *, n_threads: int = 1) -> Tensor:
    """``ggml_silu`` / ``ggml_gelu`` of ``a`` (``op`` = "SILU" or "GELU")."""
    names = {"SILU": "silu", "GELU": "gelu"}
    if op not in names:
        raise ValueError(f"unary: the harness runs {', '.join(names)}, not {op!r}")
    return _one(names[op], a, n_threads=n_threads)


def mul_mat(a: Tensor, b: Tensor, *, n_threads: int = 1) -> Tensor:
    """``ggml_mul_mat(a, b)``: f32 ``[a.ne1, b.ne1, b.ne2, b.ne3]``."""
    return _one("mul_mat", a, b, n_threads=n_threads)


def mul_mat_supported(a: Tensor, b: Tensor) -> bool:
    """The CPU back-end's ``supports_op`` for ``ggml_mul_mat(a, b)`` (nothing is computed)."""
    g = _h().graph()
    node = g.op("mul_mat", g.input(a), g.input(b))
    return g.supports(node)


def flash_attn_ext(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, max_bias: float = 0.0,
                   softcap: float = 0.0, *, n_threads: int = 1) -> Tensor:
    """``ggml_flash_attn_ext(q, k, v, mask, scale, max_bias, softcap)``: f32 ``[Dv, n_head, n_q, ne3]``."""
    return _one("flash_attn_ext", q, k, v, mask, n_threads=n_threads, fp=(scale, max_bias, softcap))
